"""Items: find a product as you type; its details, similar items, graph neighbours, buyers."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from engine import EngineError, inspect

from .. import format as fmt
from .base import EngineScreen


def _find(engine, text: str):
    return [(i.item_id, i.title) for i in engine.store.find_items(text.strip(), 50)]


def _item_page(engine, item_id: str, n: int = 10):
    page = {"profile": inspect.item_profile(engine, item_id),
            "graph": inspect.kg_neighbours(engine, item_id)}
    try:
        page["similar"] = engine.similar(item_id, n)
        page["similar_error"] = ""
    except EngineError as exc:  # e.g. no trained model: shown in its tab, the page still works
        page["similar"], page["similar_error"] = [], str(exc)
    return page


class ItemsScreen(EngineScreen):
    """One product at a time: catalogue fields, similar items (and which recaller found
    each), knowledge-graph neighbours with relation names, who interacted with it."""
    mode = "items"

    BINDINGS = [Binding("slash", "find", "Find item")]

    def __init__(self) -> None:
        super().__init__()
        self.item_id: str | None = None
        self.similar: list = []

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Input(placeholder="find item: name or id…", id="item-query", compact=True)
                yield OptionList(id="item-list")
            with Vertical(id="main"):
                yield Static("Pick an item on the left (type to search by name).", id="item-header")
                with TabbedContent(id="item-tabs"):
                    with TabPane("Similar", id="tab-similar"):
                        yield Static("", id="similar-note")
                        yield DataTable(id="similar", cursor_type="row", zebra_stripes=True)
                    with TabPane("Graph", id="tab-graph"):
                        yield DataTable(id="graph", cursor_type="row", zebra_stripes=True)
                    with TabPane("Who", id="tab-who"):
                        yield DataTable(id="who", cursor_type="row", zebra_stripes=True)
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Items"
        similar = self.query_one("#similar", DataTable)
        similar.add_column("#", width=3)
        similar.add_column("title", width=max(20, min(40, (self.app.size.width - 30) // 3)))
        similar.add_column("found by", width=14)
        similar.add_columns("score", "reason", "item")
        self.query_one("#graph", DataTable).add_columns("relation", "node", "shared by", "e.g.")
        self.query_one("#who", DataTable).add_columns("when (UTC)", "user", "kind", "value")
        self.fetch(_find, "", then=self.show_items, group="find")

    def action_find(self) -> None:
        self.query_one("#item-query", Input).focus()

    @on(Input.Changed, "#item-query")
    def query_changed(self, event: Input.Changed) -> None:
        self.fetch(_find, event.value, then=self.show_items, group="find")

    @on(Input.Submitted, "#item-query")
    def query_submitted(self, event: Input.Submitted) -> None:
        """Enter opens the best match (after the search it may still be waiting for)."""
        self.fetch(_find, event.value, then=self.open_best, group="find")

    def open_best(self, items: list[tuple[str, str]]) -> None:
        self.show_items(items)
        if items:
            options = self.query_one("#item-list", OptionList)
            options.focus()
            options.highlighted = 0
            self.open_item(items[0][0])
        else:
            self.notify("No item matches; try part of a name or an id.", severity="warning")

    def show_items(self, items: list[tuple[str, str]]) -> None:
        options = self.query_one("#item-list", OptionList)
        options.clear_options()
        options.add_options([Option(fmt.line(f"{i}  {t}"), id=i) for i, t in items])
        if not items:
            options.add_option(Option("no item matches", disabled=True))

    @on(OptionList.OptionSelected, "#item-list")
    def item_chosen(self, event: OptionList.OptionSelected) -> None:
        self.open_item(event.option.id)

    def open_item(self, item_id: str) -> None:
        self.item_id = item_id
        self.fetch(_item_page, item_id, then=self.show_page, group="page")

    def show_page(self, page: dict) -> None:
        p = page["profile"]
        if p["in_catalogue"]:
            stock = "in stock" if p["in_stock"] else "[b]out of stock[/b]"
            facts = " · ".join(x for x in (p["category"], p["brand"], fmt.price(p["price"]), stock) if x)
            text = f"[b]{p['title'] or p['item_id']}[/b] ({p['item_id']})\n{facts}\n"
            if p["description"]:
                text += p["description"][:150] + ("…" if len(p["description"]) > 150 else "") + "\n"
        else:
            text = f"[b]{p['item_id']}[/b]: not in the catalogue (only events mention it)\n"
        text += f"{p['users']:,} users · {fmt.counts(p['events_by_kind'])}"
        self.query_one("#item-header", Static).update(text)
        self.similar = page["similar"]
        table = self.query_one("#similar", DataTable)
        table.clear()
        for r in page["similar"]:
            table.add_row(str(r.rank), r.title or r.item_id, ", ".join(r.sources) or r.source,
                          fmt.number(r.score), r.reason, r.item_id)
        note = self.query_one("#similar-note", Static)
        note.update(f"No similar items: {page['similar_error']}" if page["similar_error"] else "")
        note.display = bool(page["similar_error"])
        graph = self.query_one("#graph", DataTable)
        graph.clear()
        for g in page["graph"]:
            node = f"{g['node_title']} ({g['node']})" if g["node_title"] else g["node"]
            graph.add_row(g["name"], node, str(g["shared"]),
                          "; ".join(e["title"] or e["item_id"] for e in g["examples"]))
        if not page["graph"]:
            graph.add_row("—", "no knowledge-graph links for this item", "", "")
        who = self.query_one("#who", DataTable)
        who.clear()
        for e in p["interactions"]:
            who.add_row(fmt.when(e["ts"]), e["user_id"], e["kind"],
                        "" if e["value"] is None else f"{e['value']:g}")

    @on(DataTable.RowSelected, "#who")
    def who_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on someone who interacted with the item opens them on the Users screen."""
        user = self.query_one("#who", DataTable).get_row_at(event.cursor_row)[1]
        self.run_worker(self.app.show_user(str(user)), exclusive=True, group="goto")

    @on(DataTable.RowSelected, "#similar")
    def similar_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a similar item opens it."""
        if event.cursor_row < len(self.similar):
            self.open_item(self.similar[event.cursor_row].item_id)
