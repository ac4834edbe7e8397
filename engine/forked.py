"""A job in a forked process beside this one: how `train` fits two rankers at once.

The child is a copy of this process at the fork (the validation moments, the data: nothing
is copied until one side writes), runs one function, and sends back bytes: the result, or
its traceback. Its progress messages travel through the same pipe and are passed on to this
process's progress whenever it drains them (`drain`, `result`). No pickle: messages are
bytes and JSON.

Linux only (fork); `Forked.start` returns None elsewhere, or inside `no_helpers()`, and the
caller runs the job itself."""

from __future__ import annotations

import contextvars
import gc
import json
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator

from .components import ProgressCallback
from .memory import give_back_memory


_helpers = contextvars.ContextVar("shelfwise_helpers", default=True)


def helpers_allowed() -> bool:
    """Whether a job may fork helper processes now (`Forked`, the transformer's training
    partner): not while `no_helpers()` is in force."""
    return _helpers.get()


@contextmanager
def no_helpers() -> Iterator[None]:
    """Fits in this block run in this process alone. `train` says so for the final fits:
    this process then holds the fitted rankers, and a child forked from it ends up holding
    a copy of most of that (each page either side rewrites or frees stays with the other)."""
    token = _helpers.set(False)
    try:
        yield
    finally:
        _helpers.reset(token)


class ForkedError(RuntimeError):
    """The job raised in the child (its traceback is `details`), or the child went away."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details or message


class Forked:
    def __init__(self, pid: int, conn):
        self.pid, self._conn, self._done = pid, conn, False
        self._answer: bytes | None = None
        self._error: ForkedError | None = None

    @classmethod
    def start(cls, job: Callable[[ProgressCallback], bytes]) -> Forked | None:
        """Fork a child that runs `job(progress)` and sends back the bytes it returns."""
        if not hasattr(os, "fork") or sys.platform != "linux" or not helpers_allowed():
            return None
        import multiprocessing

        mine, theirs = multiprocessing.Pipe(duplex=False)
        give_back_memory()  # what this process frees later, the child's copy would keep
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                mine.close()
                gc.freeze()  # the parent's objects: a collection would write to (and copy) their pages

                def progress(stage, done, total, message=""):
                    theirs.send_bytes(b"P" + json.dumps([stage, done, total, message]).encode())
                result = job(progress)
                theirs.send_bytes(b"R" + result)
                code = 0
            except BaseException as exc:  # noqa: BLE001 — said to the parent, then gone
                try:
                    first = f"{type(exc).__name__}: {exc}"
                    theirs.send_bytes(b"E" + json.dumps([first, traceback.format_exc()]).encode())
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, mine)

    def drain(self, progress: ProgressCallback) -> None:
        """Pass on the progress the child has reported so far (without waiting)."""
        while not self._done and self._conn.poll():
            self._take(progress)

    def result(self, progress: ProgressCallback) -> bytes:
        """Wait for the child's result, passing its progress on; raise `ForkedError` if the
        job raised or the child ended without an answer."""
        while not self._done:
            self._take(progress)
        if self._error is not None:
            raise self._error
        return self._answer if self._answer is not None else b""

    def _take(self, progress: ProgressCallback) -> None:
        try:
            message = self._conn.recv_bytes()
        except (EOFError, OSError):
            self._error = ForkedError(f"the process (pid {self.pid}) ended without an answer")
            self.close()
            return
        kind, body = message[:1], message[1:]
        if kind == b"P":
            progress(*json.loads(body))
            return
        if kind == b"E":
            self._error = ForkedError(*json.loads(body))
        else:
            self._answer = body
        self.close()

    def close(self) -> None:
        """End the child if it still runs (a cancel), and reap it."""
        if self._done:
            return
        self._done = True
        answered = self._answer is not None or self._error is not None
        self._conn.close()
        try:
            if not answered:
                os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
