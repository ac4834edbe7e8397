"""`shelfwise tui`: added to the CLI through the `register_commands` hook, like a plugin's
command, so the engine's CLI knows nothing of the terminal UI (and runs without Textual)."""

from __future__ import annotations

from pathlib import Path

import click

from engine import hookimpl

SCREENS = ["overview", "users", "items", "search", "evaluation", "train", "plugins", "rules",
           "experiments"]


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command()
    @click.option("--screen", type=click.Choice(SCREENS), default="users", show_default=True,
                  help="The screen to open on.")
    @click.pass_obj
    def tui(obj, screen):
        """Open the terminal UI on the database: users, items, search, evaluation, training,
        plugins, merchandising rules, A/B experiments.

        \b
        Keys: F1-F9 switch screens (F9: experiments), / finds, Ctrl+P opens the command palette, Ctrl+Q quits.
        """
        from .app import ShelfwiseApp

        if not Path(obj.db).exists():
            raise click.ClickException(f"There is no database at {obj.db}. Create one with "
                                       f"\"shelfwise --db {obj.db} demo\" or \"shelfwise import ...\".")
        ShelfwiseApp(obj.engine(), mode=screen).run()
