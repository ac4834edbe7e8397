"""EngineHost: the one thread that owns the TUI's Engine.

SQLite connections belong to the thread that opened them, and an Engine caches its loaded
models, so every read the screens make goes through one long-lived thread with one
Engine (`call`). Long jobs (train, evaluate) get an Engine of their own in their worker
thread (`job_engine`), so reads stay answered while they run; after a job activates new
models, `reload` drops the cached ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from engine import Engine

T = TypeVar("T")


class EngineHost:
    def __init__(self, db_path: str | Path, registry=None, settings=None):
        self.db_path = Path(db_path)
        self.registry = registry
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shelfwise-engine")
        self._engine: Engine | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> "EngineHost":
        """A host on the same database, plugins and settings as `engine` (which stays
        usable in its own thread)."""
        return cls(engine.db_path, registry=engine.registry, settings=engine.settings)

    def _engine_here(self) -> Engine:
        if self._engine is None:
            if self.registry is None:
                from engine import load_plugins

                self.registry = load_plugins()
            self._engine = Engine(self.db_path, registry=self.registry, settings=self.settings)
            self.settings = self._engine.settings
        return self._engine

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(engine, *args, **kwargs) on the engine thread; blocks the caller (a worker)."""
        return self._pool.submit(lambda: fn(self._engine_here(), *args, **kwargs)).result()

    def job_engine(self) -> Engine:
        """A separate Engine for a long job, to be used (and closed) in the calling thread."""
        self._pool.submit(self._engine_here).result()  # plugins and settings loaded once
        return Engine(self.db_path, registry=self.registry, settings=self.settings)

    def reload(self) -> None:
        """Forget cached models (after a training run activated new ones). Does not wait:
        the engine thread runs calls in order, so every later call sees the new models."""
        def drop() -> None:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
        self._pool.submit(drop)

    def close(self) -> None:
        try:
            self.reload()
        except RuntimeError:  # already shut down
            return
        self._pool.shutdown(wait=True, cancel_futures=True)
