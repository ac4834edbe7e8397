"""Rules: the shop owner's merchandising rules — list them with their status, add a pin,
boost, bury or filter, remove one. Lists follow at once (no retrain)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from .base import EngineScreen, error_text

KINDS = [("pin an item", "pin"), ("boost", "boost"), ("bury", "bury"), ("filter out", "filter")]
HELP = ("Where: item_id title category brand price in_stock tags attrs.NAME; = != < <= > >= "
        "in [..] contains; and or not ( ). E.g. brand = \"Acme\" and price > 50")
# which fields each kind of rule takes
FIELDS = {"pin": {"item", "position", "category"}, "boost": {"where", "weight"},
          "bury": {"where", "weight"}, "filter": {"where"}}
INPUTS = ("item", "where", "position", "weight", "placement", "category", "until")


def _rules(engine):
    return engine.rules()


def _add(engine, fields: dict[str, Any]):
    return engine.add_rule(**fields), engine.rules()


def _remove(engine, rule_id: int):
    return engine.remove_rule(rule_id), engine.rules()


class RulesScreen(EngineScreen):
    """Every rule with what it does and whether it applies now (active, expired, or not
    shown and why); a form to add one; Delete removes the highlighted rule."""
    mode = "rules"

    BINDINGS = [
        Binding("n", "new", "New rule"),
        Binding("delete,d", "remove", "Remove rule", key_display="Del"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rules: list = []

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Label("New rule", classes="section")
                with Horizontal(classes="field"):
                    yield Label("Kind   ")
                    yield Select(KINDS, value="pin", id="rule-kind", allow_blank=False, compact=True)
                for name, label, hint in (
                        ("item", "Item", "item id, e.g. p00042"),
                        ("position", "Pos", "1 = first"),
                        ("where", "Where", 'brand = "Acme"'),
                        ("weight", "Weight", "places to move"),
                        ("category", "Cat", "only lists of"),
                        ("placement", "Place", "all placements"),
                        ("until", "Until", "YYYY-MM-DD")):
                    with Horizontal(classes="field"):
                        yield Label(f"{label:<7}")
                        yield Input(placeholder=hint, id=f"rule-{name}", compact=True)
                with Horizontal(classes="buttons"):
                    yield Button("Add", id="rule-add", variant="primary", compact=True)
            with Vertical(id="main"):
                yield Static("", id="rules-header")
                yield DataTable(id="rules", cursor_type="row", zebra_stripes=True)
                yield Static("", id="rule-detail")
                yield Static("", id="rule-error")
                yield Static(HELP, id="rule-help")
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Rules"
        table = self.query_one("#rules", DataTable)
        table.add_column("id", width=3)
        table.add_column("kind", width=6)
        table.add_column("status", width=9)
        table.add_columns("what", "placement", "until")
        self.kind_changed()
        self.action_reload()

    def action_reload(self) -> None:
        self.fetch(_rules, then=self.show_rules, group="rules")

    def show_rules(self, rules: list) -> None:
        self.rules = rules
        table = self.query_one("#rules", DataTable)
        table.clear()
        for r in rules:
            if r.kind == "pin":
                what = f"{r.item_id} at {r.position}" + (f" in {r.category}" if r.category else "")
            else:
                what = r.where + (f" by {r.weight:g}" if r.weight is not None else "")
            style = {"active": "green", "expired": "dim", "not shown": "yellow"}.get(r.status, "")
            table.add_row(str(r.id), r.kind, Text(r.status, style=style), Text(what),
                          r.placement or "all", r.until_date or "", key=str(r.id))
        active = sum(r.status == "active" for r in rules)
        self.query_one("#rules-header", Static).update(
            f"[b]{len(rules)} rule{'s' if len(rules) != 1 else ''}[/b], {active} active; "
            f"lists follow at once" if rules else
            "No rules yet: the lists are the model's. Add one on the left (Enter adds).")
        self.describe(table.cursor_row)

    @on(DataTable.RowHighlighted, "#rules")
    def rule_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.describe(event.cursor_row)

    def describe(self, row: int) -> None:
        """The highlighted rule in words, with why it is not shown or no longer applies."""
        detail = self.query_one("#rule-detail", Static)
        if not 0 <= row < len(self.rules):
            detail.update("")
            return
        r = self.rules[row]
        where = f" on {r.placement} lists" if r.placement else " on every list"
        until = f", until {r.until_date}" if r.until_date else ""
        note = f"\n[yellow]{escape(r.status)}: {escape(r.note)}[/]" if r.note else ""
        detail.update(f"[b]Rule {r.id}[/b]: {escape(r.describe())}{where}{until}{note}")

    # -- the form ------------------------------------------------------------------------

    @on(Select.Changed, "#rule-kind")
    def kind_changed(self) -> None:
        """Only the fields the kind takes are open."""
        takes = FIELDS[self.kind()] | {"placement", "until"}
        for name in INPUTS:
            self.query_one(f"#rule-{name}", Input).disabled = name not in takes

    def kind(self) -> str:
        value = self.query_one("#rule-kind", Select).value
        return value if isinstance(value, str) else "pin"

    def action_new(self) -> None:
        self.query_one("#rule-kind", Select).focus()

    def form(self) -> dict[str, Any] | None:
        """The rule the form describes, or None (and a warning) when a number is not one."""
        kind = self.kind()
        text = {name: self.query_one(f"#rule-{name}", Input).value.strip() for name in INPUTS}
        fields: dict[str, Any] = {"kind": kind, "placement": text["placement"],
                                  "until": text["until"] or None}
        try:
            if kind == "pin":
                fields.update(item_id=text["item"] or None, category=text["category"] or None,
                              position=int(text["position"]) if text["position"] else None)
            else:
                fields["where"] = text["where"] or None
                if kind != "filter":
                    fields["weight"] = float(text["weight"]) if text["weight"] else None
        except ValueError:
            what = "Position must be a whole number" if kind == "pin" else "Weight must be a number"
            self.notify(f"{what}.", severity="warning")
            return None
        return fields

    @on(Input.Submitted)
    @on(Button.Pressed, "#rule-add")
    def add(self) -> None:
        fields = self.form()
        if fields is not None:
            self.fetch(_add, fields, then=self.added, on_error=self.refused, group="change")

    def added(self, result) -> None:
        rule, rules = result
        self.query_one("#rule-error", Static).update("")
        for name in INPUTS:
            self.query_one(f"#rule-{name}", Input).value = ""
        note = f" — {rule.status}: {rule.note}" if rule.note else ""
        self.notify(f"Rule {rule.id} added: {rule.describe()}{note}. Lists follow from the next request.",
                    severity="warning" if rule.note else "information")
        self.show_rules(rules)
        table = self.query_one("#rules", DataTable)
        table.move_cursor(row=table.row_count - 1)

    def refused(self, exc: BaseException) -> None:
        message, _ = error_text(exc)
        self.query_one("#rule-error", Static).update(f"[b red]{escape(message)}[/]")

    # -- removing --------------------------------------------------------------------------

    def action_remove(self) -> None:
        table = self.query_one("#rules", DataTable)
        if self.focused is not table or not 0 <= table.cursor_row < len(self.rules):
            self.notify("Highlight a rule in the list (Tab to it), then press Delete.", severity="warning")
            return
        rule = self.rules[table.cursor_row]
        self.fetch(_remove, rule.id, then=self.removed, group="change")

    def removed(self, result) -> None:
        rule, rules = result
        self.notify(f"Rule {rule.id} removed ({rule.describe()}).")
        self.show_rules(rules)
