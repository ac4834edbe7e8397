"""Train: fit every recaller and ranker, watch each stage, cancel safely."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Label

from .. import format as fmt
from ..widgets.job_panel import Cancelled, JobPanel
from .base import EngineScreen


def _models(engine):
    return engine.store.active_artifacts()


class TrainScreen(EngineScreen):
    mode = "train"
    BINDINGS = [Binding("t", "train", "Train"), Binding("c", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal(id="train-page"):
            with Vertical(id="train-left"):
                with Horizontal(classes="buttons"):
                    yield Button("Train", id="train-start", variant="primary", compact=True)
                    yield Button("Cancel", id="train-cancel", variant="error", compact=True,
                                 disabled=True)
                yield JobPanel("Press t to train on everything in the database. The active "
                               "models keep answering until the new ones are complete.",
                               id="train-job")
            with Vertical(id="train-right"):
                yield Label("Active models", classes="section")
                yield DataTable(id="train-models", cursor_type="none", show_cursor=False)
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Train"
        self.query_one("#train-models", DataTable).add_columns("model", "v", "trained (UTC)")
        self.show_models()

    def show_models(self) -> None:
        self.fetch(_models, then=self._fill_models, group="models")

    def _fill_models(self, models: list[dict]) -> None:
        table = self.query_one("#train-models", DataTable)
        table.clear()
        for m in models:
            table.add_row(m["name"], str(m["version"]), fmt.short(m["created_at"]))

    @on(Button.Pressed, "#train-start")
    def action_train(self) -> None:
        if self.query_one(JobPanel).start("train", "Training"):
            self.query_one("#train-start", Button).disabled = True
            self.query_one("#train-cancel", Button).disabled = False
        else:
            self.notify("Training is already running.", severity="warning")

    @on(Button.Pressed, "#train-cancel")
    def action_cancel(self) -> None:
        if not self.query_one(JobPanel).cancel():
            self.notify("Nothing to cancel.", severity="information")

    def _idle(self) -> None:
        self.query_one("#train-start", Button).disabled = False
        self.query_one("#train-cancel", Button).disabled = True

    def on_job_panel_finished(self, event: JobPanel.Finished) -> None:
        self._idle()
        self.app.models_changed()
        report = event.result
        trials = "".join(f"\n{name} {'joins' if v['joined'] else 'stays out of'} the pipeline "
                         f"(validation NDCG@10 {v['ndcg@10_with']:.4f} with it, "
                         f"{v['ndcg@10_without']:.4f} without)." for name, v in report.trials.items())
        self.notify(f"Trained on {report.events:,} events of {report.users:,} users in "
                    f"{report.total_seconds:.1f}s (run {report.run_id}). New models are active."
                    + trials, title="Training complete")
        self.show_models()

    def on_job_panel_stopped(self, event: JobPanel.Stopped) -> None:
        self._idle()
        if isinstance(event.error, Cancelled):
            self.notify("Training cancelled; the active models are unchanged.", title="Cancelled",
                        severity="warning")
        else:
            self.failed(event.error)
        self.show_models()
