"""Where training runs while the server answers requests.

The server owns exactly one serving Engine, on one dedicated thread (`engine.EngineThread`,
shared with the TUI): every request's engine call is queued there, which also makes
ingest, erasure and catalogue changes strictly ordered (no interleaved writes, one cache
to invalidate). The event loop only parses, checks keys and formats.

Training (`Trainer`) runs in a child process (or on a thread) with its own Engine; it writes new model
versions and activates them in one transaction at the end. The serving Engine notices on
its next request (`Engine.sync`: PRAGMA data_version plus the active artifact ids) and
loads the new models; until then the old ones keep serving."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from typing import Any, Callable

from .. import EngineError

TRAIN_NICENESS = 10  # the training process yields the CPU to the serving one


def _train_in_process(db_path: str, config_path: str | None, plugins_dir: str | None,
                      queue) -> None:
    """Body of the training process: its own interpreter, so the fit never competes with
    request handling for the GIL, and at a lower scheduling priority with one core left
    free, so requests keep their latency while it runs (a shop's box has few cores).
    Reports progress (at most twice a second) and the end."""
    import signal

    with contextlib.suppress(OSError):
        os.nice(TRAIN_NICENESS)
    spare = str(max(1, (os.cpu_count() or 2) - 1))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, spare)  # read when torch and the BLAS load, below

    from .. import Engine, load_plugins

    def stop(signum, frame):  # the server shuts down: end as a failed run, nothing activated
        raise KeyboardInterrupt("stopped: the server shut down during training")

    signal.signal(signal.SIGTERM, stop)
    last = 0.0

    def progress(stage: str, done: int, total: int | None, message: str = "") -> None:
        nonlocal last
        if time.monotonic() - last > 0.5 or (total is not None and done >= total):
            last = time.monotonic()
            queue.put(("progress", stage, done, total))

    engine = None
    try:
        engine = Engine(db_path, registry=load_plugins(plugins_dir), config_path=config_path)
        report = engine.train(progress=progress)
        queue.put(("done", report.run_id, engine.dataset_events_upto))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if engine is not None:
            engine.close()


class Trainer:
    """At most one background training run at a time, with its own Engine: in a child
    process (`process=(db_path, config_path, plugins_dir)`) or else on a thread of this
    one (`factory`)."""

    def __init__(self, factory: Callable[[], Any], process: tuple | None = None,
                 on_done: Callable[[int], Any] | None = None, lease=None):
        self._factory = factory
        # held while a run goes on, so that one run at a time goes on across the server
        # processes on this database (leases.FileLease); None: this process only
        self._lease = lease
        self._on_done = on_done  # called with the newest event id the new models saw
        self._process_args = process
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.state: dict[str, Any] = {"running": False, "started_at": None, "finished_at": None,
                                      "stage": "", "done": 0, "total": None, "error": None,
                                      "run_id": None, "in": "process" if process else "thread"}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> dict[str, Any]:
        with self._lock:
            if self.running:
                raise EngineError("A training run is already in progress (see GET /status); "
                                  "the active models keep serving until it finishes.",
                                  title="Conflict")
            if self._lease is not None and not self._lease.acquire():
                raise EngineError(f"A training run is already in progress in another server "
                                  f"process on this database (pid {self._lease.holder()}); the "
                                  f"active models keep serving until it finishes.",
                                  title="Conflict")
            self.state.update(running=True, started_at=time.time(), finished_at=None,
                              stage="starting", done=0, total=None, error=None, run_id=None)
            target = self._run_process if self._process_args else self._run
            self._thread = threading.Thread(target=self._holding, args=(target,),
                                            name="shelfwise-train", daemon=True)
            self._thread.start()
        return dict(self.state)

    def _holding(self, run: Callable[[], None]) -> None:
        try:
            run()
        finally:
            if self._lease is not None:
                self._lease.release()

    def elsewhere(self) -> int | None:
        """The pid of another server process on this database that is training now."""
        if self._lease is None or self.running:
            return None
        pid = self._lease.holder()
        return pid if pid != os.getpid() else None

    def _progress(self, stage: str, done: int, total: int | None, message: str = "") -> None:
        self.state.update(stage=stage, done=done, total=total)

    def _run(self) -> None:
        engine = None
        try:
            engine = self._factory()
            report = engine.train(progress=self._progress)
            self.state.update(run_id=report.run_id, stage="done")
            self._finished(engine.dataset_events_upto)
        except BaseException as exc:  # reported through /status, never lost
            self.state.update(error=f"{type(exc).__name__}: {exc}", stage="failed",
                              trace=traceback.format_exc(limit=5))
        finally:
            if engine is not None:
                engine.close()
            self.state.update(running=False, finished_at=time.time())

    def _run_process(self) -> None:
        import multiprocessing
        import queue as queues

        ctx = multiprocessing.get_context("spawn")  # no forked copy of the server's threads
        messages = ctx.Queue()
        proc = ctx.Process(target=_train_in_process, args=(*self._process_args, messages),
                           name="shelfwise-train", daemon=True)
        finished = False
        self._proc = proc
        try:
            proc.start()
            self.state["pid"] = proc.pid
            while not finished:
                try:
                    kind, *rest = messages.get(timeout=1.0)
                except queues.Empty:
                    if not proc.is_alive():
                        self.state.update(stage="failed", error=f"the training process exited "
                                          f"with code {proc.exitcode} before finishing")
                        break
                    continue
                if kind == "progress":
                    self._progress(*rest)
                elif kind == "done":
                    self.state.update(run_id=rest[0], stage="done")
                    self._finished(rest[1])
                    finished = True
                else:
                    self.state.update(error=rest[0], stage="failed")
                    finished = True
            proc.join(60)
        except BaseException as exc:
            self.state.update(error=f"{type(exc).__name__}: {exc}", stage="failed")
        finally:
            self.state.update(running=False, finished_at=time.time())

    def _finished(self, events_upto: int) -> None:
        if self._on_done is not None:
            try:
                self.state["folded_in"] = self._on_done(events_upto)
            except Exception as exc:  # the models are active either way; say what failed
                self.state["error"] = f"folding in events after training: {type(exc).__name__}: {exc}"

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float = 60) -> None:
        """At shutdown: a training process is asked to stop (its run is recorded as failed,
        the active models stay); a training thread is waited for."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.is_alive():
            proc.terminate()
        self.join(timeout)
