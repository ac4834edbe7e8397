"""create_app: the FastAPI application over one shop database.

The routes live in `routes` (handlers parse, call one Engine method on the engine thread,
and format); this module assembles them with the middleware, the request checks every
route shares, and the lifespan: one `EngineThread` for serving, a `Trainer` for retrains,
the API keys, a task that warms the serving caches between requests, and the leases that
let several server processes share one database (`leases`: one leader saves incremental
state, one retrain at a time). The recommendation logic, caching, attribution and erasure
all live in the engine."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from .. import EngineThread
from . import problems
from .leases import LEADER_RETRY, FileLease
from .problems import Problem
from .routes import GROUPS
from .schemas import ProblemOut
from .security import BodyLimit, KeyRing, RateLimiter
from .workers import Trainer

DEFAULT_RATE_LIMITS = {"public": 600, "secret": 6000}  # requests a minute per key
MAX_BODY = 1 << 20

ERRORS = {code: {"model": ProblemOut, "content": {problems.MEDIA_TYPE: {}}}
          for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)}


ARRAY_PARAMETERS = {"exclude"}  # query parameters that may be repeated


async def _one_value_each(request: Request) -> None:
    """`?n=5&n=50`: which is meant? A parameter that holds one value is refused when repeated."""
    keys = [k for k, _ in request.query_params.multi_items()]
    twice = sorted({k for k in keys if keys.count(k) > 1} - ARRAY_PARAMETERS)
    if twice:
        raise Problem(422, "Invalid request", f"query.{twice[0]}: given more than once; it takes one value",
                      [{"field": f"query.{k}", "message": "given more than once"} for k in twice])


WARM_STEP = 64         # items whose caches one step between requests computes (a fraction of a second)
WARM_RECHECK = 2.0     # seconds between looks once warm: a new model or catalogue starts cold


async def keep_warm(engine: EngineThread) -> None:
    """Between requests, precompute the serving caches in small steps (`Engine.warm`), so
    that the first requests after start or after a model change are as fast as the rest;
    a request waits for at most one step."""
    while True:
        if engine.pending:
            await asyncio.sleep(0.05)
            continue
        try:
            left = await engine.background(lambda e: e.warm(WARM_STEP))
        except Exception:  # serving goes on cold; the error is in the log; try again later
            problems.log.exception("warming the serving caches failed")
            await asyncio.sleep(60)
            continue
        await asyncio.sleep(0 if left else WARM_RECHECK)


async def lead(engine: EngineThread, leader: FileLease) -> None:
    """Ask to become the leader every LEADER_RETRY seconds (a leader that ended leaves the
    lock free); while leading, fold in what other processes stored and save the incremental
    state when due, with or without requests of its own."""
    while True:
        if leader.held or leader.acquire():
            try:
                await engine.background(_sync_and_save)
            except Exception:  # the next turn tries again; the error is in the log
                problems.log.exception("saving the incremental state failed")
        await asyncio.sleep(LEADER_RETRY)


def _sync_and_save(engine) -> None:
    engine.sync()
    if engine.serving.save_due():
        engine.save_incremental()


def lifespan(db_path: str | Path, engine_factory: Callable[[], Any],
             incremental_save_interval: float, train_process: tuple | None):
    """The app's lifespan: open the serving engine (one `EngineThread`), the trainer, the
    key ring and the leases on `app.state`, keep the caches warm and lead while serving,
    close all at the end."""
    @asynccontextmanager
    async def serve(app: FastAPI):
        app.state.engine = EngineThread(engine_factory)
        app.state.leader = leader = FileLease.beside(db_path, "leader")
        leader.acquire()
        def fold_in(_snapshot: int):  # events that came in while training, on the new models
            return app.state.engine.call(lambda e: e.catch_up())  # (the models record their snapshot)
        app.state.trainer = Trainer(engine_factory, process=train_process, on_done=fold_in,
                                    lease=FileLease.beside(db_path, "train"))
        app.state.keys = KeyRing(db_path)
        def warm(engine):  # open the engine before serving
            engine.incremental_save_interval = incremental_save_interval
            engine.serving.may_save = lambda: leader.held
            engine.sync()
        await app.state.engine.run(warm)
        tasks = [asyncio.create_task(keep_warm(app.state.engine)),
                 asyncio.create_task(lead(app.state.engine, leader))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            app.state.trainer.stop()
            app.state.engine.close()  # the leader saves what is pending
            app.state.keys.close()
            leader.release()
    return serve


def create_app(db_path: str | Path, engine_factory: Callable[[], Any] | None = None,
               cors_origins: list[str] | None = None, rate_limits: dict[str, int] | None = None,
               max_body: int = MAX_BODY, incremental_save_interval: float = 30.0,
               train_in_process: bool = True, config_path: str | Path | None = None,
               plugins_dir: str | Path | None = None) -> FastAPI:
    """The API over the shop database at `db_path`. `engine_factory` makes an Engine for
    the serving thread (default: Engine(db_path)). `POST /train` trains in a child
    process (`config_path`, `plugins_dir` as for the CLI) so the fit does not compete with
    serving for the GIL; `train_in_process=False` trains on a thread with `engine_factory`.

    The serving engine saves incrementally updated recaller state (co-occurrence counts
    with the new events folded in) at most every `incremental_save_interval` seconds and
    at shutdown, rather than after every batch: the events themselves are committed
    before each answer, and the state is a cache of them that a retrain rebuilds."""
    if engine_factory is None:
        def engine_factory():
            from .. import Engine

            return Engine(db_path)

    process = (str(db_path), str(config_path) if config_path else None,
               str(plugins_dir) if plugins_dir else None) if train_in_process else None
    app = FastAPI(title="Shelfwise", version="1", responses=ERRORS,
                  lifespan=lifespan(db_path, engine_factory, incremental_save_interval, process),
                  dependencies=[Depends(_one_value_each)],
                  description="Recommendations, similar items, search and event ingestion "
                              "for a shop's website, over one Shelfwise database.")
    app.state.limiter = RateLimiter(rate_limits if rate_limits is not None else DEFAULT_RATE_LIMITS)
    problems.install(app)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, max_age=600,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    for group in GROUPS:
        group.add_to(app)
    return app


SETTINGS_ENV = "SHELFWISE_SERVE_SETTINGS"  # how `shelfwise serve --workers N` hands its options on


def from_environment() -> FastAPI:
    """The app `shelfwise serve --workers N` gives each of uvicorn's worker processes
    (`uvicorn.run("engine.server.app:from_environment", factory=True, workers=N)`): the
    options of the command, as JSON in the SHELFWISE_SERVE_SETTINGS environment variable."""
    import json
    import os

    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: this factory serves the worker processes "
                           f"of \"shelfwise serve --workers N\"; run that command instead.")
    options = json.loads(raw)
    db, config, plugins_dir = options["db"], options.get("config"), options.get("plugins_dir")
    registry = None

    def engine_factory():
        nonlocal registry
        from .. import Engine, load_plugins

        if registry is None:
            registry = load_plugins(plugins_dir)
        return Engine(db, registry=registry, config_path=config)

    return create_app(db, engine_factory=engine_factory, cors_origins=options.get("cors") or None,
                      rate_limits=options["rate_limits"], config_path=config, plugins_dir=plugins_dir,
                      incremental_save_interval=options.get("incremental_save_interval", 30.0))
