"""ShelfwiseApp: the terminal UI, one screen per task, every number from the Engine."""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from engine import Engine, EngineThread

from .screens.evaluation import EvaluationScreen
from .screens.experiments import ExperimentsScreen
from .screens.items import ItemsScreen
from .screens.overview import OverviewScreen
from .screens.plugins import PluginsScreen
from .screens.rules import RulesScreen
from .screens.search import SearchScreen
from .screens.train import TrainScreen
from .screens.users import UsersScreen


class ShelfwiseApp(App):
    """`ShelfwiseApp(engine)`: explore the shop in `engine`'s database.

    The app does not use `engine` from its own threads (SQLite connections belong to the
    thread that opened them); it opens the same database with the same plugins and settings
    on a dedicated engine thread (`engine.EngineThread`, as the HTTP server does)."""

    TITLE = "Shelfwise"
    CSS_PATH = "app.tcss"
    MODES = {
        "overview": OverviewScreen,
        "users": UsersScreen,
        "items": ItemsScreen,
        "search": SearchScreen,
        "evaluation": EvaluationScreen,
        "train": TrainScreen,
        "plugins": PluginsScreen,
        "rules": RulesScreen,
        "experiments": ExperimentsScreen,
    }
    DEFAULT_MODE = "users"
    BINDINGS = [
        Binding("f1", "switch_mode('overview')", "Overview", show=False),
        Binding("f2", "switch_mode('users')", "Users", show=False),
        Binding("f3", "switch_mode('items')", "Items", show=False),
        Binding("f4", "switch_mode('search')", "Search", show=False),
        Binding("f5", "switch_mode('evaluation')", "Eval", show=False),
        Binding("f6", "switch_mode('train')", "Train", show=False),
        Binding("f7", "switch_mode('plugins')", "Plugins", show=False),
        Binding("f8", "switch_mode('rules')", "Rules", show=False),
        Binding("f9", "switch_mode('experiments')", "Experiments", show=False),
        Binding("ctrl+t", "toggle_theme", "Light/dark", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, engine: Engine | None = None, *, db_path: str | Path | None = None,
                 mode: str | None = None) -> None:
        super().__init__()
        if engine is not None:
            self.host = EngineThread.like(engine)
            self.db_path = Path(engine.db_path)
        elif db_path is not None:
            self.host = EngineThread.on(db_path)
            self.db_path = Path(db_path)
        else:
            raise ValueError("ShelfwiseApp needs an Engine or a db_path.")
        self.sub_title = str(self.db_path)
        self.start_mode = mode or self.DEFAULT_MODE

    def on_mount(self) -> None:
        self.title = f"Shelfwise · {self.db_path.name}"
        self.switch_mode(self.start_mode)

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    async def show_user(self, user_id: str) -> None:
        """Open a user on the Users screen (from another screen)."""
        await self.switch_mode("users")
        self.screen.open_user(user_id)

    async def show_item(self, item_id: str) -> None:
        """Open an item on the Items screen (from another screen)."""
        await self.switch_mode("items")
        self.screen.open_item(item_id)

    def models_changed(self) -> None:
        """A job activated new models: later engine calls load them."""
        self.host.reload()

    def on_unmount(self) -> None:
        self.host.close()
