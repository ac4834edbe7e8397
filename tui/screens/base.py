"""EngineScreen: a screen whose data comes from the engine thread through workers."""

from __future__ import annotations

from typing import Any, Callable

from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import get_current_worker

from engine import EngineError

from ..widgets.nav_bar import NavBar


def error_text(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, EngineError):
        return str(exc), exc.title
    return f"{type(exc).__name__}: {exc}", "Unexpected error"


class EngineScreen(Screen):
    """Subclasses call `fetch(fn, *args, then=callback)`: fn(engine, *args) runs off the UI
    thread; `then(result)` runs on it. Errors become notifications. One fetch per `group`
    at a time: a newer one cancels the older (typing fast never piles work up)."""

    mode = ""

    def header(self) -> NavBar:
        return NavBar(self.mode, self.app.db_path.name)

    def footer(self) -> Footer:
        return Footer(compact=True)

    def fetch(self, fn: Callable[..., Any], *args: Any, then: Callable[[Any], None],
              group: str = "fetch", on_error: Callable[[BaseException], None] | None = None,
              **kwargs: Any) -> None:
        host = self.app.host

        def job() -> None:
            worker = get_current_worker()
            try:
                result = host.call(fn, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
                result, done = exc, lambda exc=exc: self.failed(exc, on_error)
            else:
                done = lambda: then(result)  # noqa: E731
            if worker.is_cancelled or not self.app.is_running:
                return
            try:
                self.app.call_from_thread(done)
            except RuntimeError:  # the app closed while the engine was answering
                pass

        self.run_worker(job, thread=True, exclusive=True, group=group, exit_on_error=False,
                        name=f"{type(self).__name__}.{group}")

    def failed(self, exc: BaseException, on_error: Callable[[BaseException], None] | None = None) -> None:
        message, title = error_text(exc)
        self.notify(message, title=title, severity="error", timeout=8)
        if on_error is not None:
            on_error(exc)
