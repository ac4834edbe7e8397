"""Search: the catalogue through the recallers that answer text queries."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from .. import format as fmt
from .base import EngineScreen


def _search(engine, text: str, n: int):
    return engine.search(text, n)


class SearchScreen(EngineScreen):
    mode = "search"
    BINDINGS = [Binding("slash", "find", "Query")]

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Input(placeholder="search the catalogue: words, a SKU, or what you need…",
                    id="search-query")
        yield Static("Type a query and press Enter.", id="search-status")
        yield DataTable(id="search-results", cursor_type="row", zebra_stripes=True)
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Search"
        table = self.query_one("#search-results", DataTable)
        table.add_column("#", width=3)
        table.add_column("title", width=30)
        table.add_columns("score", "found by", "category", "price", "reason", "item")
        self.query_one("#search-query", Input).focus()

    def action_find(self) -> None:
        self.query_one("#search-query", Input).focus()

    @on(Input.Submitted, "#search-query")
    def submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.notify("Type something to search for.", severity="warning")
            return
        self.query_one("#search-status", Static).update(f"Searching for “{event.value}”…")
        self.fetch(_search, event.value, 20, then=self.show, group="search",
                   on_error=lambda exc: self.query_one("#search-status", Static).update(str(exc)))

    def show(self, results: list) -> None:
        query = self.query_one("#search-query", Input).value
        self.query_one("#search-status", Static).update(
            f"{len(results)} results for “{query}”" if results else f"Nothing matches “{query}”.")
        table = self.query_one("#search-results", DataTable)
        table.clear()
        for r in results:
            table.add_row(str(r.rank), r.title or r.item_id, fmt.number(r.score),
                          ", ".join(r.sources) or r.source, r.category, fmt.price(r.price), r.reason,
                          r.item_id)
        if results:
            table.focus()
