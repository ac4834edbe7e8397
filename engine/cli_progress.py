"""Progress of long jobs as the CLI shows it: rich bars in a terminal, plain lines in a log.

Every long job reports through one callback, `progress(stage, done, total, message)`. In
a terminal that is rich's live bars. When the output is a file or a pipe (a cron job's
log, CI) live bars print nothing until the end, so a 20-minute job looked dead: there the
same callback prints a plain line when a stage starts and ends, at most one line per
`every` seconds in between, and a heartbeat line when a stage has said nothing for
`heartbeat` seconds (encoding one big batch, a long fit), so a log never goes silent for
longer than that.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

Callback = Callable[..., None]


def _fraction(done: int, total: int | None) -> str:
    if not total:
        return f"{done:,}"
    return f"{done:,}/{total:,} ({done / total:.0%})"


class LineProgress:
    """A progress callback that writes plain lines (see the module docstring)."""

    def __init__(self, stream: TextIO, every: float = 10.0, heartbeat: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream, self.every, self.heartbeat, self.clock = stream, every, heartbeat, clock
        self.started = clock()
        self._last_line = self.started
        self._state: dict[str, tuple[int, int | None, str]] = {}  # stage -> last report
        self._finished: set[str] = set()
        self._current: str | None = None
        self._lock = threading.Lock()

    def _write(self, stage: str, text: str) -> None:
        elapsed = self.clock() - self.started
        self.stream.write(f"[{elapsed:7.1f}s] {stage}: {text}\n")
        self.stream.flush()
        self._last_line = self.clock()

    def __call__(self, stage: str, done: int, total: int | None, message: str = "") -> None:
        with self._lock:
            new = stage not in self._state
            self._state[stage] = (done, total, message)
            self._current = stage
            finished = total is not None and done >= total
            if finished and stage in self._finished:
                return
            due = self.clock() - self._last_line >= self.every
            if new or finished or due:
                text = _fraction(done, total) + (f" {message}" if message else "")
                if finished:
                    self._finished.add(stage)
                    text += "" if "done" in message else " done"
                self._write(stage, text)

    def beat(self) -> None:
        """Called by the heartbeat thread: a line if nothing was said for `heartbeat` s."""
        with self._lock:
            if self._current is None or self.clock() - self._last_line < self.heartbeat:
                return
            done, total, message = self._state[self._current]
            self._write(self._current, f"still working, at {_fraction(done, total)}"
                                       + (f" {message}" if message else ""))


@contextmanager
def line_progress(stream: TextIO, every: float = 10.0, heartbeat: float = 30.0) -> Iterator[LineProgress]:
    """A `LineProgress` with its heartbeat thread running for the duration of the block."""
    progress = LineProgress(stream, every=every, heartbeat=heartbeat)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(5.0, heartbeat / 2)):
            progress.beat()

    thread = threading.Thread(target=beat, name="shelfwise-progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join(timeout=1)


@contextmanager
def rich_bars(console: Any) -> Iterator[Callback]:
    """Rich's live bars, one per stage."""
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
    )

    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]:<22}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[message]}"), console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def callback(stage: str, done: int, total: int | None, message: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, stage=stage, message="", total=total)
            bar.update(tasks[stage], completed=done, total=total, message=message)

        yield callback


@contextmanager
def progress_for(console: Any, enabled: bool = True) -> Iterator[Callback]:
    """The callback for a job: bars in a terminal, lines otherwise, nothing when disabled."""
    if not enabled:
        yield lambda *a, **k: None
    elif console.is_terminal:
        with rich_bars(console) as callback:
            yield callback
    else:
        with line_progress(console.file) as callback:
            yield callback
