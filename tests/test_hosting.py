"""EngineThread: the one thread that owns an Engine, for the HTTP server (`run`,
`background`, `pending`) and the TUI (`call`, `job_engine`, `reload`). Both users' own
suites (test_server*.py, test_tui.py) exercise it end to end; these pin its contract."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine import EngineError, EngineThread


class FakeEngine:
    made: list[FakeEngine] = []

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.closed_on: int | None = None
        self.log: list[tuple[int, int]] = []  # (value, thread) per call
        FakeEngine.made.append(self)

    def close(self) -> None:
        self.closed_on = threading.get_ident()


@pytest.fixture
def host():
    FakeEngine.made = []
    thread = EngineThread(FakeEngine)
    yield thread
    thread.close()


def note(engine: FakeEngine, value: int, *, times: int = 1) -> int:
    engine.log.append((value, threading.get_ident()))
    return value * times


def test_calls_from_threads_run_in_order_on_one_thread_with_one_engine(host):
    assert FakeEngine.made == []  # the engine opens with the first call, on the engine thread
    assert host.call(note, 1, times=3) == 3
    engine = FakeEngine.made[0]
    assert engine.thread != threading.get_ident()

    async def from_a_loop():
        return await asyncio.gather(*(host.run(note, i) for i in range(2, 40)))

    assert asyncio.run(from_a_loop()) == list(range(2, 40))
    assert [value for value, _ in engine.log] == list(range(1, 40))
    assert {thread for _, thread in engine.log} == {engine.thread}
    assert len(FakeEngine.made) == 1


def test_errors_reach_the_caller_and_the_thread_carries_on(host):
    def fail(engine):
        raise EngineError("no such user", title="Unknown user")

    with pytest.raises(EngineError, match="no such user"):
        host.call(fail)
    with pytest.raises(EngineError, match="no such user"):
        asyncio.run(host.run(fail))
    assert host.call(note, 5) == 5


def test_pending_counts_requests_not_background_work(host):
    seen = []

    async def serve():
        gate = threading.Event()
        blocked = asyncio.ensure_future(host.background(lambda e: gate.wait(5)))
        requests = [asyncio.ensure_future(host.run(note, i)) for i in range(3)]
        await asyncio.sleep(0.05)
        seen.append(host.pending)
        gate.set()
        await asyncio.gather(blocked, *requests)
        seen.append(host.pending)

    asyncio.run(serve())
    assert seen == [3, 0]


def test_reload_and_job_engine_make_new_engines_from_the_factory(host):
    first = host.call(lambda e: e)
    job = host.job_engine()
    assert job is not first and job.thread == threading.get_ident()  # for the caller's thread
    host.reload()
    second = host.call(lambda e: e)
    assert second is not first and first.closed_on == second.thread  # closed on its thread


def test_close_closes_the_engine_on_its_thread_and_stops(host):
    engine = host.call(lambda e: e)
    host.close()
    assert engine.closed_on == engine.thread
    host.close()  # twice: nothing more
    host.reload()
    with pytest.raises(RuntimeError):
        host.call(note, 1)


def test_on_a_database_plugins_and_settings_load_once_and_are_shared(tmp_path):
    host = EngineThread.on(tmp_path / "shop.db")
    try:
        engine = host.call(lambda e: e)
        job = host.job_engine()
        try:
            assert job.registry is engine.registry and job.settings is engine.settings
            assert job.db_path == engine.db_path == tmp_path / "shop.db"
        finally:
            job.close()
        like = EngineThread.like(job)
        try:
            assert like.call(lambda e: e.registry) is engine.registry
        finally:
            like.close()
    finally:
        host.close()
