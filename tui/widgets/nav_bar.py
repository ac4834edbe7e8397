"""NavBar: one line naming every screen with its key (clickable), the current one lit."""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import Static

SCREENS = (("overview", "F1", "Overview"), ("users", "F2", "Users"), ("items", "F3", "Items"),
           ("search", "F4", "Search"), ("evaluation", "F5", "Eval"), ("train", "F6", "Train"),
           ("plugins", "F7", "Plugins"), ("rules", "F8", "Rules"))


class NavBar(Static):
    def __init__(self, current: str, where: str = "") -> None:
        parts = []
        for mode, key, label in SCREENS:
            text = f" {key} {label} "
            if mode == current:
                parts.append(f"[reverse b]{text}[/]")
            else:
                parts.append(f"[@click=app.switch_mode('{mode}')]{text}[/]")
        tail = f" [dim]{escape(where)}[/]" if where else ""
        super().__init__("◆" + "".join(parts) + tail, id="nav")
