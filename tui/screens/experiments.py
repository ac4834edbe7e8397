"""Experiments: the shop's A/B experiments and the highlighted one's report — per arm
shoppers, impressions, CTR, add-to-cart, conversion and revenue per shopper with 95%
intervals, and each arm against control with the probability that it is better.
Experiments are started and stopped with `shelfwise experiment start|stop`."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, Static

from .base import EngineScreen

METRICS = (("ctr", "CTR"), ("cart_rate", "add-to-cart"), ("conversion_rate", "conversion"),
           ("revenue_per_shopper", "revenue/shopper"))
HELP = ("Start one: shelfwise experiment start NAME --arm control= --arm variant=variant.toml "
        "--split 50/50 [--placement home]; stop: shelfwise experiment stop NAME --winner ARM")


def _experiments(engine):
    return engine.experiments()


def _report(engine, name: str):
    return engine.experiment_report(name)


class ExperimentsScreen(EngineScreen):
    """The experiments, newest first; the highlighted one's report beside them."""
    mode = "experiments"

    BINDINGS = [Binding("ctrl+r", "reload", "Reload")]

    def __init__(self) -> None:
        super().__init__()
        self.found: list = []

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Label("Experiments", classes="section")
                yield DataTable(id="experiments", cursor_type="row", zebra_stripes=True)
            with Vertical(id="main"):
                yield Static("", id="experiment-header")
                yield DataTable(id="experiment-report", cursor_type="none", zebra_stripes=True)
                yield Static("", id="experiment-notes")
                yield Static(HELP, id="experiment-help")
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Experiments"
        table = self.query_one("#experiments", DataTable)
        table.add_columns("name", "status")
        self.action_reload()

    def action_reload(self) -> None:
        self.fetch(_experiments, then=self.show_experiments, group="experiments")

    def show_experiments(self, found: list) -> None:
        self.found = found
        table = self.query_one("#experiments", DataTable)
        table.clear()
        for exp in found:
            status = Text("running", style="green") if exp.running else \
                Text("won: " + exp.winner if exp.winner else "stopped", style="dim")
            table.add_row(exp.name, status, key=exp.name)
        if not found:
            self.query_one("#experiment-header", Static).update(
                "No experiments yet: every shopper gets the shop's configuration.")
            return
        self.open(table.cursor_row)

    @on(DataTable.RowHighlighted, "#experiments")
    def experiment_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.open(event.cursor_row)

    def open(self, row: int) -> None:
        if 0 <= row < len(self.found):
            self.fetch(_report, self.found[row].name, then=self.show_report, group="report")

    def show_report(self, report) -> None:
        exp = report.experiment
        where = f"placement {exp.placement}" if exp.placement else "every placement"
        state = "running" if exp.running else "stopped" + (f", winner {exp.winner}" if exp.winner else "")
        arms = "\n".join(f"  {escape(a.arm)} ({a.share * 100:g}%): {a.shoppers:,} shoppers, "
                         f"{a.impressions:,} impressions — {escape(a.config)}" for a in report.arms)
        self.query_one("#experiment-header", Static).update(
            f"[b]{escape(exp.name)}[/b] ({state}) on {escape(where)}\n{arms}")
        table = self.query_one("#experiment-report", DataTable)
        table.clear(columns=True)
        control = report.arms[0].arm
        table.add_columns("metric", *(a.arm for a in report.arms))
        for a in report.arms[1:]:
            table.add_columns(f"{a.arm} - {control}", "P(better)")
        for key, label in METRICS:
            cells = [a.metrics[key].text(key) for a in report.arms]
            for a in report.arms[1:]:
                c = a.vs_control[key]
                style = "green" if c.prob_better >= 0.95 else "red" if c.prob_better <= 0.05 else ""
                cells += [c.difference.text(key, signed=True), Text(f"{c.prob_better:.1%}", style=style)]
            table.add_row(label, *cells)
        notes = "\n".join(f"[yellow]{escape(n)}[/]" for n in report.notes)
        self.query_one("#experiment-notes", Static).update(
            f"[dim]{escape(report.method)}[/]" + (f"\n{notes}" if notes else ""))
