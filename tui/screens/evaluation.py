"""Evaluation: metrics per recaller and for the pipeline, a chart, two runs compared."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from engine import inspect

from .. import format as fmt
from ..widgets.job_panel import Cancelled, JobPanel
from .base import EngineScreen

SHOWN = ("ndcg", "recall", "hit", "mrr", "coverage")


class EvaluationScreen(EngineScreen):
    mode = "evaluation"
    BINDINGS = [
        Binding("a", "mark('a')", "Compare: A"),
        Binding("b", "mark('b')", "B"),
        Binding("e", "evaluate", "Evaluate now"),
        Binding("c", "cancel", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[dict] = []
        self.marked: dict[str, int | None] = {"a": None, "b": None}

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
                yield JobPanel("e: run a new evaluation", id="eval-job")
            with Vertical(id="main"):
                yield Static("", id="run-header")
                with TabbedContent(id="eval-tabs"):
                    with TabPane("Metrics", id="tab-metrics"):
                        yield DataTable(id="metrics", cursor_type="row", zebra_stripes=True)
                    with TabPane("Chart", id="tab-chart"):
                        yield PlotextPlot(id="chart")
                    with TabPane("Compare", id="tab-compare"):
                        yield Static("Mark two runs with a and b.", id="compare-header")
                        yield DataTable(id="compare", cursor_type="row", zebra_stripes=True)
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Evaluation"
        self.query_one("#runs", DataTable).add_columns("run", "", "UTC", "k", "ndcg")
        self.query_one("#metrics", DataTable).add_columns("model", *SHOWN)
        self.query_one("#compare", DataTable).add_columns("model", "metric", "A", "B", "B − A")
        self.load_runs()

    def load_runs(self) -> None:
        self.fetch(inspect.evaluation_runs, then=self.show_runs, group="runs")

    def show_runs(self, runs: list[dict]) -> None:
        self.runs = runs
        finished = [r["id"] for r in runs if r["status"] == "ok"]
        if self.marked["b"] is None and finished:
            self.marked["b"] = finished[0]
        if self.marked["a"] is None and len(finished) > 1:
            self.marked["a"] = finished[1]
        self.fill_runs()
        if not runs:
            self.query_one("#run-header", Static).update("No evaluation runs yet: press e.")
            return
        self.show_run(runs[0]["id"])
        self.compare()

    def fill_runs(self) -> None:
        table = self.query_one("#runs", DataTable)
        row = table.cursor_row
        table.clear()
        for r in self.runs:
            mark = "".join(k.upper() for k, v in self.marked.items() if v == r["id"])
            table.add_row(str(r["id"]), mark, fmt.short(r["started_at"]), str(r["k"] or ""),
                          fmt.number(r["ndcg"]) if r["status"] == "ok" else r["status"], key=str(r["id"]))
        if self.runs:
            table.move_cursor(row=min(row, len(self.runs) - 1))

    @on(DataTable.RowHighlighted, "#runs")
    def run_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value:
            self.show_run(int(event.row_key.value))

    def show_run(self, run_id: int) -> None:
        run = next((r for r in self.runs if r["id"] == run_id), None)
        if run is None:
            return
        if run["status"] != "ok":
            note = f": {run['note']}" if run["note"] else ""
            self.query_one("#run-header", Static).update(f"Run {run_id} {run['status']}{note}")
            self.query_one("#metrics", DataTable).clear()
            return
        self.fetch(inspect.run_metrics, run_id, then=self.fill_metrics, group="metrics")

    def fill_metrics(self, data: dict) -> None:
        run = next((r for r in self.runs if r["id"] == data["id"]), {})
        self.query_one("#run-header", Static).update(
            f"[b]Run {data['id']}[/b] · k={data['k']} · {data['users']:,} held-out users · "
            f"ranker {run.get('ranker') or 'none'}\nrecallers: {', '.join(run.get('recallers', []))}")
        table = self.query_one("#metrics", DataTable)
        table.clear()
        for row in data["rows"]:
            table.add_row(row["name"], *(fmt.number(row[m]) for m in SHOWN))
        plot = self.query_one("#chart", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"NDCG@{data['k']} per model, run {data['id']}")
        names = [r["name"].split(" (")[0] for r in data["rows"]]
        plt.bar(names, [r["ndcg"] or 0.0 for r in data["rows"]], orientation="horizontal", width=0.3)
        plot.refresh()

    def action_mark(self, which: str) -> None:
        table = self.query_one("#runs", DataTable)
        if not self.runs:
            self.notify("No evaluation runs yet: press e to run one.", severity="warning")
            return
        run = self.runs[table.cursor_row]
        if run["status"] != "ok":
            self.notify(f"Run {run['id']} did not finish; pick a finished run.", severity="warning")
            return
        self.marked[which] = run["id"]
        self.fill_runs()
        self.compare()
        self.query_one("#eval-tabs", TabbedContent).active = "tab-compare"

    def compare(self) -> None:
        a, b = self.marked["a"], self.marked["b"]
        if a is None or b is None:
            return
        self.fetch(inspect.compare_runs, a, b, then=self.fill_compare, group="compare")

    def fill_compare(self, data: dict) -> None:
        self.query_one("#compare-header", Static).update(
            f"A = run {data['a']}, B = run {data['b']}" + (f"\n{data['note']}" if data["note"] else ""))
        table = self.query_one("#compare", DataTable)
        table.clear()
        for row in data["rows"]:
            if row["metric"] not in SHOWN:
                continue
            delta = row["delta"]
            shown = fmt.signed(delta)
            if delta is not None and abs(delta) >= 5e-5:
                shown = f"[green]{shown}[/]" if delta > 0 else f"[red]{shown}[/]"
            table.add_row(row["name"], row["metric"], fmt.number(row["a"]), fmt.number(row["b"]), shown)

    def action_evaluate(self) -> None:
        if not self.query_one(JobPanel).start("evaluate", "Evaluating", k=10):
            self.notify("An evaluation is already running.", severity="warning")

    def action_cancel(self) -> None:
        if not self.query_one(JobPanel).cancel():
            self.notify("Nothing to cancel.")

    def on_job_panel_finished(self, event: JobPanel.Finished) -> None:
        self.notify(f"Evaluation run {event.result.run_id} finished.", title="Evaluation")
        self.marked = {"a": self.marked["b"], "b": event.result.run_id}
        self.load_runs()

    def on_job_panel_stopped(self, event: JobPanel.Stopped) -> None:
        if isinstance(event.error, Cancelled):
            self.notify("Evaluation cancelled.", severity="warning")
        else:
            self.failed(event.error)
        self.load_runs()
