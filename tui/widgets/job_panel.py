"""JobPanel: runs a long Engine job (train, evaluate) in a worker with per-stage progress
and a safe cancel.

The job gets an Engine of its own in the worker thread. Progress arrives through the
engine's callback; cancelling sets a flag that the next callback turns into a `Cancelled`
exception, which the engine lets through after marking its run as failed. Training only
activates its models at the very end, so a cancelled run leaves the active ones alone."""

from __future__ import annotations

import threading
import time
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, ProgressBar, Static
from textual.worker import Worker, WorkerState

from ..screens.base import error_text


class Cancelled(Exception):
    """Raised from the progress callback when the user cancels a job."""


class JobPanel(Vertical):
    class Progress(Message):
        """One progress report, posted from the worker thread (newer replaces older)."""

        def __init__(self, stage: str, done: int, total: int | None, message: str) -> None:
            super().__init__()
            self.stage, self.done, self.total, self.message = stage, done, total, message

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, JobPanel.Progress) and message.stage == self.stage

    class Finished(Message):
        def __init__(self, method: str, result: Any) -> None:
            super().__init__()
            self.method, self.result = method, result

    class Stopped(Message):
        """The job ended without a result: cancelled (error is Cancelled) or failed."""

        def __init__(self, method: str, error: BaseException) -> None:
            super().__init__()
            self.method, self.error = method, error

    def __init__(self, idle: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.idle = idle
        self.method = ""
        self._cancel = threading.Event()
        self._worker: Worker | None = None
        self._stages: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Static(self.idle, id="job-status")
        yield ProgressBar(id="job-bar", show_eta=False)
        yield DataTable(id="job-stages", cursor_type="none", show_cursor=False)

    def on_mount(self) -> None:
        table = self.query_one("#job-stages", DataTable)
        table.add_column("stage", key="stage")
        table.add_column("progress", key="progress")
        table.add_column("", key="message")
        self.query_one("#job-bar").display = False
        table.display = False

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    def start(self, method: str, label: str, **kwargs: Any) -> bool:
        """Run engine.<method>(progress=..., **kwargs) in a worker; False if one is running."""
        if self.running:
            return False
        self.method = method
        self._cancel = threading.Event()
        self._stages = set()
        self.query_one("#job-stages", DataTable).clear()
        self.query_one("#job-stages").display = True
        self.query_one("#job-bar").display = True
        self.query_one("#job-status", Static).update(f"{label}…")
        self.query_one("#job-bar", ProgressBar).update(total=None, progress=0)
        host, cancel, post = self.app.host, self._cancel, self.post_message
        last = {"at": 0.0, "stage": None}

        def progress(stage: str, done: int, total: int | None, message: str = "") -> None:
            if cancel.is_set():
                raise Cancelled(f"{method} cancelled by the user")
            now = time.monotonic()
            if stage != last["stage"] or now - last["at"] > 0.1 or (total and done >= total):
                last["at"], last["stage"] = now, stage
                post(JobPanel.Progress(stage, done, total, message))

        def job() -> Any:
            engine = host.job_engine()
            try:
                return getattr(engine, method)(progress=progress, **kwargs)
            finally:
                engine.close()

        self._worker = self.run_worker(job, thread=True, exclusive=True, group="job",
                                       exit_on_error=False, name=f"job.{method}")
        return True

    def cancel(self) -> bool:
        if not self.running:
            return False
        self._cancel.set()
        self.query_one("#job-status", Static).update("Cancelling at the next step…")
        return True

    def on_job_panel_progress(self, event: "JobPanel.Progress") -> None:
        event.stop()
        table = self.query_one("#job-stages", DataTable)
        amount = f"{event.done:,}/{event.total:,}" if event.total else f"{event.done:,}"
        if event.stage not in self._stages:
            self._stages.add(event.stage)
            table.add_row(event.stage, amount, event.message, key=event.stage)
            table.move_cursor(row=table.row_count - 1)
        else:
            table.update_cell(event.stage, "progress", amount)
            table.update_cell(event.stage, "message", event.message)
        self.query_one("#job-bar", ProgressBar).update(total=event.total, progress=event.done)
        if not self._cancel.is_set():
            self.query_one("#job-status", Static).update(f"{event.stage}: {event.message}".rstrip(": "))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self._worker:
            return
        event.stop()
        status = self.query_one("#job-status", Static)
        if event.state == WorkerState.SUCCESS:
            status.update("Done.")
            self.post_message(JobPanel.Finished(self.method, event.worker.result))
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            if isinstance(error, Cancelled):
                status.update("Cancelled.")
            else:
                status.update(f"Failed: {error_text(error)[0]}")
            self.post_message(JobPanel.Stopped(self.method, error))
