"""Overview: what is in the shop's database, the active models, the last evaluation."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from engine import inspect

from .. import format as fmt
from .base import EngineScreen


class OverviewScreen(EngineScreen):
    mode = "overview"
    BINDINGS = [Binding("ctrl+r", "reload", "Reload")]

    def compose(self) -> ComposeResult:
        yield self.header()
        with Vertical(id="overview"):
            with Horizontal(id="overview-top"):
                yield Static("Loading…", id="counts")
                yield DataTable(id="models", cursor_type="none", show_cursor=False)
            yield Static("", id="last-eval")
            with Horizontal(id="overview-plots"):
                yield PlotextPlot(id="timeline")
                yield PlotextPlot(id="tail")
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Overview"
        models = self.query_one("#models", DataTable)
        models.add_column("active model", width=22)  # fixed: the header never lags the rows
        models.add_column("v", width=3)
        models.add_column("trained (UTC)", width=16)

    def on_screen_resume(self) -> None:
        """Fresh numbers every time the screen is shown (the first time included)."""
        self.action_reload()

    def action_reload(self) -> None:
        self.fetch(inspect.overview, 24, then=self.show, group="overview")

    def show(self, data: dict) -> None:
        c = data["counts"]
        kinds = "\n".join(f"  {kind:<10}{n:>10,}" for kind, n in c["events_by_kind"].items())
        graph = f"\n[b]graph[/b] {c['triples']:,} triples, {c['links']:,} links" if c["triples"] else ""
        self.query_one("#counts", Static).update(
            f"[b]items[/b] {c['items']:>14,}\n[b]users[/b] {c['users']:>14,}\n"
            f"[b]events[/b] {c['events']:>13,}\n{kinds}{graph}")
        models = self.query_one("#models", DataTable)
        models.clear()
        for m in data["models"]:
            models.add_row(m["name"], str(m["version"]), fmt.when(m["created_at"]))
        if not data["models"]:
            models.add_row("no trained models", "", "run Train (F6)")
        self.query_one("#last-eval", Static).update(
            self.evaluation_line(data) + "\n" + self.online_line(data["online"]))
        self.plot_timeline(data["timeline"])
        self.plot_tail(data["long_tail"])

    @staticmethod
    def evaluation_line(data: dict) -> str:
        ev, train = data["last_evaluation"], data["last_train"]
        parts = []
        if train:
            took = train["metrics"].get("total_seconds")
            parts.append(f"Last training: {fmt.when(train['started_at'])} UTC, {train['status']}"
                         + (f", {took:.0f}s" if took is not None else ""))
        if ev and ev["status"] == "ok":
            k = ev["metrics"]["k"]
            pipe = next((r for r in ev["metrics"]["results"] if r["kind"] == "pipeline"), None)
            if pipe:
                m = pipe["metrics"]
                parts.append(f"Last evaluation (run {ev['id']}, {ev['metrics']['users']:,} users): "
                             f"NDCG@{k} {m[f'ndcg@{k}']:.4f} · Recall@{k} {m[f'recall@{k}']:.4f} · "
                             f"Hit@{k} {m[f'hit@{k}']:.4f}")
        elif ev:
            parts.append(f"Last evaluation (run {ev['id']}): {ev['status']}")
        else:
            parts.append("No evaluation yet (Evaluation screen, F5).")
        return "\n".join(parts)

    @staticmethod
    def online_line(report: dict) -> str:
        """What the recommendations served over HTTP did in the last 7 days."""
        total = report["overall"]
        if not total["impressions"]:
            return "Online (7 days): no recommendations served over HTTP yet (shelfwise serve)."
        best = max(report["by_recaller"], key=lambda r: r["ctr"], default=None)
        return (f"Online (7 days): {total['impressions']:,} impressions · CTR {total['ctr']:.1%} · "
                f"cart {total['cart_rate']:.1%} · conversion {total['conversion_rate']:.1%} · "
                f"revenue {total['revenue']:,.2f}"
                + (f" · best CTR: {best['name']} {best['ctr']:.1%}" if best else ""))

    def plot_timeline(self, timeline: dict) -> None:
        widget = self.query_one("#timeline", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("Events over time")
        if timeline["kinds"]:
            n = len(next(iter(timeline["kinds"].values())))
            xs = list(range(n))
            for kind, counts in timeline["kinds"].items():
                plt.plot(xs, counts, label=kind)
            ticks = [0, n - 1]  # first and last day (a middle label wobbles by a cell)
            plt.xticks(ticks, [fmt.day(timeline["start"] + t * timeline["bucket_seconds"]) for t in ticks])
        widget.refresh()

    def plot_tail(self, tail: dict) -> None:
        widget = self.query_one("#tail", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"Long tail: top 10% get {tail['top10_share']:.0%}")
        if tail["counts"]:
            plt.plot(list(range(1, len(tail["counts"]) + 1)), tail["counts"], marker="braille")
            plt.xlabel("items, most popular first")
        widget.refresh()
