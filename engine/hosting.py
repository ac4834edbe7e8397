"""EngineThread: the one thread that owns an Engine, for the HTTP server and the TUI.

SQLite connections belong to the thread that opened them, and an Engine keeps models, the
vector index and the recommendation cache in memory. So a long-lived program (the server,
the TUI) makes one Engine on one dedicated thread and sends every engine call there, in
order: `await run(...)` from an event loop, `call(...)` from any other thread. Writes are
then strictly ordered and there is one cache to invalidate. Long jobs (train, evaluate) get
an Engine of their own (`job_engine`) in their own thread, so calls stay answered while
they run; after a job activates new models, `reload` drops the loaded ones."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from .engine import Engine

T = TypeVar("T")
CLOSE_TIMEOUT = 30.0  # seconds `close` waits for the engine to save and close


class EngineThread:
    """fn(engine, *args, **kwargs) calls run one at a time, in the order they were made, on
    one thread holding the Engine that `factory()` makes there (on the first call, and again
    after `reload`). An error raised by fn reaches the caller."""

    def __init__(self, factory: Callable[[], Engine]):
        self.factory = factory
        self._engine: Engine | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shelfwise-engine")
        self._closed = False
        self.pending = 0  # `run` calls queued or running (the server's queue depth)

    @classmethod
    def on(cls, db_path: str | Path, registry=None, settings=None) -> EngineThread:
        """On the database at `db_path`; plugins (`registry`) and `settings` load once, on
        the engine thread, and every Engine this thread makes (`job_engine` too) shares them."""
        shared = {"registry": registry, "settings": settings}

        def factory() -> Engine:
            from .engine import Engine
            from .plugins import load_plugins

            if shared["registry"] is None:
                shared["registry"] = load_plugins()
            engine = Engine(db_path, registry=shared["registry"], settings=shared["settings"])
            shared["settings"] = engine.settings
            return engine

        return cls(factory)

    @classmethod
    def like(cls, engine: Engine) -> EngineThread:
        """On the same database, plugins and settings as `engine` (which stays usable in its
        own thread)."""
        return cls.on(engine.db_path, registry=engine.registry, settings=engine.settings)

    def _engine_here(self) -> Engine:
        if self._engine is None:
            self._engine = self.factory()
        return self._engine

    def _submit(self, fn: Callable[..., T], args: tuple, kwargs: dict):
        return self._executor.submit(lambda: fn(self._engine_here(), *args, **kwargs))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(engine, *args, **kwargs) on the engine thread; blocks the calling thread (never
        the engine thread itself, nor an event loop: use `run` there)."""
        return self._submit(fn, args, kwargs).result()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(engine, *args, **kwargs) on the engine thread, awaited without blocking the
        event loop; counted in `pending` while queued or running."""
        self.pending += 1
        try:
            return await asyncio.wrap_future(self._submit(fn, args, kwargs))
        finally:
            self.pending -= 1

    async def background(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like `run`, for a program's own work between requests (not counted in `pending`)."""
        return await asyncio.wrap_future(self._submit(fn, args, kwargs))

    def job_engine(self) -> Engine:
        """A separate Engine from `factory` for a long job, to be used (and closed) in the
        calling thread. The thread's own Engine opens first, so plugins load once."""
        self.call(lambda engine: None)
        return self.factory()

    def _drop(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.close()

    def reload(self) -> None:
        """Close the Engine (after a job activated new models); the next call opens a new
        one. Does not wait: calls run in order, so every later call sees the new models."""
        if not self._closed:
            self._executor.submit(self._drop)

    def close(self) -> None:
        """Let the calls already made finish, close the Engine (it saves what is pending),
        stop the thread. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._executor.submit(self._drop).result(timeout=CLOSE_TIMEOUT)
        finally:
            self._executor.shutdown(wait=True)
