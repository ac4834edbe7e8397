"""Users: find a shopper, read their history, see their recommendations and why."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import (
    DataTable, Input, Label, OptionList, Select, SelectionList, Static, TabbedContent, TabPane,
)
from textual.widgets.option_list import Option

from engine import inspect

from .. import format as fmt
from .base import EngineScreen

NO_RANKER = "__none__"


class UsersScreen(EngineScreen):
    """One shopper at a time: history, recommendations with their sources, and why-not."""
    mode = "users"

    BINDINGS = [
        Binding("slash", "find", "Find user"),
        Binding("plus,equals_sign", "more", "More/fewer", key_display="+/-"),
        Binding("minus", "fewer", "Fewer", show=False),
        Binding("r", "toggle_ranker", "Ranker on/off"),
        Binding("w", "why_not", "Why not?"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.user_id: str | None = None
        self.n = 10
        self.choices: dict[str, Any] | None = None
        self.recs: list = []

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Input(placeholder="find user: id, country…", id="user-query", compact=True)
                yield OptionList(id="user-list")
                yield Label("Recallers", classes="section")
                yield SelectionList[str](id="recallers", compact=True)
                with Horizontal(classes="field"):
                    yield Label("Ranker ")
                    yield Select([("none (merged order)", NO_RANKER)], id="ranker", allow_blank=False,
                                 compact=True)
                with Horizontal(classes="field"):
                    yield Label("N      ")
                    yield Input(str(self.n), id="n", type="integer", compact=True, max_length=3)
            with Vertical(id="main"):
                yield Static("Pick a user on the left (type to search by id or attribute).",
                             id="user-header")
                with TabbedContent(id="user-tabs"):
                    with TabPane("Recommendations", id="tab-recs"):
                        yield DataTable(id="recs", cursor_type="row", zebra_stripes=True)
                        yield Static("", id="rec-detail")
                    with TabPane("History", id="tab-history"):
                        yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
                    with TabPane("Why not?", id="tab-why"):
                        yield Input(placeholder="item id or title, e.g. p00042", id="why-item",
                                    compact=True)
                        yield Static("Type an item and press Enter to see where it fell out.",
                                     id="why-summary")
                        yield DataTable(id="why-table", cursor_type="row")
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Users"
        recs = self.query_one("#recs", DataTable)
        recs.add_column("#", width=3)
        recs.add_column("title", width=max(20, min(40, (self.app.size.width - 30) // 3)))
        recs.add_column("source", width=12)
        recs.add_column("score", width=6)
        recs.add_columns("reason", "item")
        self.query_one("#history", DataTable).add_columns("when (UTC)", "kind", "item", "title")
        self.query_one("#why-table", DataTable).add_columns("recaller", "quota", "rank", "in list", "reason")
        self.fetch(inspect.pipeline_choices, then=self.show_choices, group="choices")
        self.search_users("")

    # -- finding users ---------------------------------------------------------------------

    def search_users(self, text: str) -> None:
        self.fetch(inspect.find_users, text, then=self.show_users, group="find")

    @on(Input.Changed, "#user-query")
    def user_query_changed(self, event: Input.Changed) -> None:
        self.search_users(event.value)

    @on(Input.Submitted, "#user-query")
    def user_query_submitted(self, event: Input.Submitted) -> None:
        """Enter opens the best match (after the search it may still be waiting for)."""
        self.fetch(inspect.find_users, event.value, then=self.open_best, group="find")

    def open_best(self, users: list[dict]) -> None:
        self.show_users(users)
        if users:
            options = self.query_one("#user-list", OptionList)
            options.focus()
            options.highlighted = 0
            self.open_user(users[0]["user_id"])
        else:
            self.notify("No user matches; try part of an id or an attribute value.",
                        severity="warning")

    def show_users(self, users: list[dict]) -> None:
        options = self.query_one("#user-list", OptionList)
        options.clear_options()
        options.add_options([Option(fmt.line(f"{u['user_id']}  {fmt.attrs(u['attrs'])}"),
                                    id=u["user_id"]) for u in users])
        if not users:
            options.add_option(Option("no user matches", disabled=True))

    @on(OptionList.OptionSelected, "#user-list")
    def user_chosen(self, event: OptionList.OptionSelected) -> None:
        self.open_user(event.option.id)

    def open_user(self, user_id: str) -> None:
        self.user_id = user_id
        self.fetch(inspect.user_profile, user_id, then=self.show_profile, group="profile")
        self.refresh_recommendations()

    def show_profile(self, profile: dict) -> None:
        attrs = fmt.attrs(profile["attrs"])
        self.query_one("#user-header", Static).update(
            f"[b]{profile['user_id']}[/b]{'  ' + attrs if attrs else ''}\n"
            f"{profile['events']:,} events: {fmt.counts(profile['events_by_kind'])}")
        table = self.query_one("#history", DataTable)
        table.clear()
        for h in profile["history"]:
            title = h["title"] if h["in_catalogue"] else "(not in the catalogue)"
            table.add_row(fmt.when(h["ts"]), h["kind"], h["item_id"], title)

    # -- the pipeline controls -----------------------------------------------------------

    def show_choices(self, choices: dict) -> None:
        self.choices = choices
        recallers = self.query_one("#recallers", SelectionList)
        recallers.clear_options()
        recallers.add_options([(r["name"], r["name"], r["default"]) for r in choices["recallers"]])
        ranker = self.query_one("#ranker", Select)
        options = [(name, name) for name in choices["rankers"]] + [("none (merged order)", NO_RANKER)]
        ranker.set_options(options)
        ranker.value = choices["default_ranker"] or NO_RANKER
        self.refresh_recommendations()  # a user may have been opened from another screen

    def settings(self) -> dict[str, Any]:
        recallers = list(self.query_one("#recallers", SelectionList).selected)
        ranker = self.query_one("#ranker", Select).value
        defaults = {r["name"] for r in self.choices["recallers"] if r["default"]} if self.choices else set()
        if set(recallers) == defaults:
            recallers = []  # the configured pipeline, quotas included
        return {"recallers": recallers or None,
                "ranker": "" if ranker in (NO_RANKER, Select.BLANK) else ranker}

    @on(SelectionList.SelectedChanged, "#recallers")
    @on(Select.Changed, "#ranker")
    def controls_changed(self) -> None:
        self.refresh_recommendations()

    @on(Input.Changed, "#n")
    def n_changed(self, event: Input.Changed) -> None:
        try:
            n = int(event.value)
        except ValueError:
            return
        if 1 <= n <= 500 and n != self.n:
            self.n = n
            self.refresh_recommendations()

    def action_more(self) -> None:
        self.set_n(self.n + 1)

    def action_fewer(self) -> None:
        self.set_n(max(1, self.n - 1))

    def set_n(self, n: int) -> None:
        self.query_one("#n", Input).value = str(n)  # n_changed refreshes

    def action_toggle_ranker(self) -> None:
        ranker = self.query_one("#ranker", Select)
        if ranker.value == NO_RANKER:
            if self.choices and self.choices["default_ranker"]:
                ranker.value = self.choices["default_ranker"]
            else:
                self.notify("No trained ranker to switch on.", severity="warning")
        else:
            ranker.value = NO_RANKER

    def action_find(self) -> None:
        self.query_one("#user-query", Input).focus()

    def action_why_not(self) -> None:
        self.query_one("#user-tabs", TabbedContent).active = "tab-why"
        self.query_one("#why-item", Input).focus()

    # -- recommendations ------------------------------------------------------------------

    def refresh_recommendations(self) -> None:
        if self.user_id is None or self.choices is None:
            return
        s = self.settings()
        if not self.query_one("#recallers", SelectionList).selected and self.choices["recallers"]:
            self.show_recs([])
            self.query_one("#rec-detail", Static).update("Every recaller is off: switch one on.")
            return
        self.fetch(inspect.recommend, self.user_id, self.n, recallers=s["recallers"],
                   ranker=s["ranker"], then=self.show_recs, group="recs")

    def show_recs(self, recs: list) -> None:
        self.recs = recs
        table = self.query_one("#recs", DataTable)
        table.clear()
        for r in recs:
            table.add_row(str(r.rank), r.title or r.item_id, r.source, fmt.number(r.score), r.reason,
                          r.item_id, key=r.item_id)
        if recs:
            self.describe(0)
        else:
            self.query_one("#rec-detail", Static).update("No recommendations with these settings.")

    @on(DataTable.RowHighlighted, "#recs")
    def rec_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.describe(event.cursor_row)

    def describe(self, row: int) -> None:
        if not 0 <= row < len(self.recs):
            return
        r = self.recs[row]
        ranked = f"{r.ranker} score {r.score:.4f}" if r.ranker else f"merged score {r.score:.4f}"
        facts = " · ".join(x for x in (r.item_id, r.category, fmt.price(r.price)) if x)
        rules = f"\nrules: {', '.join(r.rules)}" if r.rules else ""
        self.query_one("#rec-detail", Static).update(
            f"[b]#{r.rank} {r.title or r.item_id}[/b] · {facts}\n"
            f"found by: {', '.join(r.sources) or r.source} · {ranked}\nwhy: {r.reason}{rules}")

    @on(DataTable.RowSelected, "#history")
    def history_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a step of the history opens that item on the Items screen."""
        item = self.query_one("#history", DataTable).get_row_at(event.cursor_row)[2]
        self.run_worker(self.app.show_item(str(item)), exclusive=True, group="goto")

    @on(DataTable.RowSelected, "#recs")
    def rec_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a recommendation explains it in the Why-not tab too."""
        item = self.recs[event.cursor_row].item_id
        self.query_one("#why-item", Input).value = item
        self.query_one("#user-tabs", TabbedContent).active = "tab-why"
        self.explain(item)

    # -- why not -----------------------------------------------------------------------

    @on(Input.Submitted, "#why-item")
    def why_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.user_id is None:
            self.notify("Pick a user first.", severity="warning")
            return
        self.explain(text)

    def explain(self, text: str) -> None:
        s = self.settings()
        self.fetch(_why_not, self.user_id, text, self.n, s["recallers"], s["ranker"],
                   then=self.show_why, group="why")

    def show_why(self, report: dict) -> None:
        title = f" “{report['title']}”" if report["title"] else ""
        self.query_one("#why-summary", Static).update(
            f"[b]{report['item_id']}{title}: {report['verdict']}[/b]\n{report['summary']}")
        table = self.query_one("#why-table", DataTable)
        table.clear()
        for e in report["recallers"]:
            table.add_row(e["recaller"], str(e["quota"]), "—" if e["rank"] is None else str(e["rank"]),
                          "yes" if e["within_quota"] else "no", e["reason"])


def _why_not(engine, user_id, text, n, recallers, ranker):
    return inspect.why_not(engine, user_id, inspect.resolve_item(engine, text), n,
                           recallers=recallers, ranker=ranker)
