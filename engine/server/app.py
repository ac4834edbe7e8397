"""create_app: the FastAPI application over one shop database.

Handlers parse, call one Engine method on the engine thread, and format; the recommendation
logic, caching, attribution and erasure all live in the engine."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import StringConstraints

from ..apikeys import PUBLIC_EVENT_KINDS
from ..types import Recommendation
from . import problems
from .problems import Problem
from .schemas import (
    DURATION_PATTERN, ID_LIST_PATTERN, ID_PATTERN, Erased, EventsIn, EventsOut, ItemOut, ItemsChanged, ItemsIn, ProblemOut,
    RecItem, RecList, Removed, Report, TrainStarted,
)
from .security import BodyLimit, KeyRing, RateLimiter, require
from .workers import EngineThread, Trainer

DEFAULT_RATE_LIMITS = {"public": 600, "secret": 6000}  # requests a minute per key
MAX_BODY = 1 << 20

Id = Annotated[str, PathParam(pattern=ID_PATTERN, description="letters, digits and . _ : @ + -")]
N = Annotated[int, Query(ge=1, le=200, description="how many items")]
Placement = Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$",
                                 description="where the list is shown: home, product-page, cart, …")]
Public = Depends(require("public"))
Secret = Depends(require("secret"))
ERRORS = {code: {"model": ProblemOut, "content": {problems.MEDIA_TYPE: {}}}
          for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)}


def _ids(values: list[str]) -> list[str]:
    """Query lists may repeat the parameter or separate ids by commas (ID_LIST_PATTERN)."""
    return [v for value in values for v in value.split(",")]


ARRAY_PARAMETERS = {"exclude"}  # query parameters that may be repeated


async def _one_value_each(request: Request) -> None:
    """`?n=5&n=50`: which is meant? A parameter that holds one value is refused when repeated."""
    keys = [k for k, _ in request.query_params.multi_items()]
    twice = sorted({k for k in keys if keys.count(k) > 1} - ARRAY_PARAMETERS)
    if twice:
        raise Problem(422, "Invalid request", f"query.{twice[0]}: given more than once; it takes one value",
                      [{"field": f"query.{k}", "message": "given more than once"} for k in twice])


def _answer(engine, recs: list[Recommendation], user_id: str | None, placement: str,
            cached: bool = False) -> RecList:
    rid = engine.log_impressions(recs, user_id, placement)
    return RecList(recommendation_id=rid, placement=placement, cached=cached,
                   items=[RecItem.of(r) for r in recs])


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
            from ..engine import Engine

            return Engine(db_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.engine = EngineThread(engine_factory)
        app.state.trainer = Trainer(engine_factory, process=(
            str(db_path), str(config_path) if config_path else None,
            str(plugins_dir) if plugins_dir else None) if train_in_process else None,
            on_done=lambda upto: app.state.engine.call(lambda e: e.fold_in_since(upto)))
        app.state.keys = KeyRing(db_path)
        def warm(engine):  # open the engine before serving
            engine.incremental_save_interval = incremental_save_interval
            engine.sync()
        await app.state.engine.run(warm)
        warmer = asyncio.create_task(keep_warm(app.state.engine))
        try:
            yield
        finally:
            warmer.cancel()
            app.state.trainer.stop()
            app.state.engine.close()
            app.state.keys.close()

    app = FastAPI(title="Shelfwise", version="1", lifespan=lifespan, responses=ERRORS,
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

    def run(request: Request):
        return request.app.state.engine.run

    # -- reading (public keys) ------------------------------------------------------------

    @app.get("/recommend/{user_id}", response_model=RecList, dependencies=[Public],
             summary="Personalised recommendations (unknown users get the cold-start fallback)")
    async def recommend(request: Request, user_id: Id, n: N = 10,
                        category: Annotated[str | None, Query(max_length=200)] = None,
                        exclude: Annotated[list[Annotated[str, StringConstraints(pattern=ID_LIST_PATTERN)]], Query(
                            description="item ids not to show: repeat the parameter or separate "
                                        "ids by commas")] = [],  # noqa: B006
                        placement: Placement = ""):
        excluded = _ids(exclude)

        def work(engine):
            hits = engine.recommendation_cache.hits
            recs = engine.recommend(user_id, n, category=category or None, exclude=excluded)
            return _answer(engine, recs, user_id, placement, engine.recommendation_cache.hits > hits)
        return await run(request)(work)

    @app.get("/similar/{item_id}", response_model=RecList, dependencies=[Public],
             summary="Items similar to one item (product page)")
    async def similar(request: Request, item_id: Id, n: N = 10, placement: Placement = ""):
        return await run(request)(lambda e: _answer(e, e.similar(item_id, n), None, placement))

    @app.get("/search", response_model=RecList, dependencies=[Public],
             summary="Catalogue search (when a search recaller is installed and trained)")
    async def search(request: Request, q: Annotated[str, Query(min_length=1, max_length=500, pattern=r"\S",
                                                                description="the words to look for")],
                     n: N = 10, category: Annotated[str | None, Query(max_length=200)] = None,
                     placement: Placement = ""):
        return await run(request)(lambda e: _answer(e, e.search(q, n, category or None), None, placement))

    @app.get("/popular", response_model=RecList, dependencies=[Public],
             summary="What a visitor without history is shown (the cold-start fallback)")
    async def popular(request: Request, n: N = 10,
                      category: Annotated[str | None, Query(max_length=200)] = None,
                      placement: Placement = ""):
        return await run(request)(
            lambda e: _answer(e, e.popular(n, category=category or None), None, placement))

    @app.get("/items/{item_id}", response_model=ItemOut, dependencies=[Public])
    async def get_item(request: Request, item_id: Id):
        item = await run(request)(lambda e: e.item(item_id))
        if item is None:
            raise Problem(404, "Unknown item", f"No item {item_id!r} in the catalogue.",
                          [{"field": "path.item_id", "message": "not in the catalogue"}])
        return ItemOut.of(item)

    # -- events -------------------------------------------------------------------------

    @app.post("/events", response_model=EventsOut,
              summary="Store events (idempotent by event_id); acknowledged after commit")
    async def post_events(request: Request, body: EventsIn, key: dict = Public):
        if key["scope"] != "secret":
            bad = [(i, e.kind) for i, e in enumerate(body.events) if e.kind not in PUBLIC_EVENT_KINDS]
            if bad:
                raise Problem(403, "Secret key required",
                              f"events.{bad[0][0]}.kind: {bad[0][1]!r} events need a secret key; "
                              f"public keys may send {', '.join(sorted(PUBLIC_EVENT_KINDS))}.",
                              [{"field": f"events.{i}.kind", "message": "needs a secret key"}
                               for i, _ in bad])
        events = [e.to_event() for e in body.events]
        rids = {e.event_id: e.recommendation_id for e in body.events if e.recommendation_id}
        return await run(request)(lambda eng: eng.ingest(events, rids))

    # -- catalogue, erasure, training, reports (secret keys) -----------------------------

    @app.put("/items", response_model=ItemsChanged, dependencies=[Secret],
             summary="Add or update catalogue items (new products are recommendable at once)")
    async def put_items(request: Request, body: ItemsIn):
        items = [i.to_item() for i in body.items]
        return await run(request)(lambda e: e.upsert_items(items))

    @app.delete("/items/{item_id}", response_model=Removed, dependencies=[Secret])
    async def delete_item(request: Request, item_id: Id):
        found = await run(request)(lambda e: e.remove_items([item_id]))
        if not found["removed"]:
            raise Problem(404, "Unknown item", f"No item {item_id!r} in the catalogue.",
                          [{"field": "path.item_id", "message": "not in the catalogue"}])
        return {"removed": found["removed"]}

    @app.delete("/users/{user_id}", response_model=Erased, dependencies=[Secret],
                summary="Erase a user: events, impressions, attribution, cached lists")
    async def erase_user(request: Request, user_id: Id):
        return await run(request)(lambda e: e.erase_user(user_id))

    @app.post("/train", response_model=TrainStarted, status_code=202, dependencies=[Secret],
              summary="Start a background retrain; the active models serve until it is done")
    async def train(request: Request):
        return {"started": True, "training": request.app.state.trainer.start()}

    @app.get("/status", dependencies=[Secret], summary="Models, last training, queue depth")
    async def status(request: Request) -> dict[str, Any]:
        state = request.app.state

        def work(engine):
            return {**engine.status(), "recommendation_cache": engine.recommendation_cache.stats()}
        out = await state.engine.run(work)
        out.update(training={k: v for k, v in state.trainer.state.items() if k != "trace"},
                   queue_depth=state.engine.pending, api_keys=state.keys.active())
        return out

    @app.get("/report", response_model=Report, dependencies=[Secret],
             summary="Impressions, CTR, add-to-cart, conversion and revenue per recaller, ranker, placement")
    async def report(request: Request, since: Annotated[str, Query(
                         pattern=DURATION_PATTERN, description="how far back: 30m, 12h, 7d, 2w or all")] = "7d",
                     placement: Annotated[str | None, Query(max_length=64)] = None):
        return await run(request)(lambda e: e.report(since, placement))

    # -- probes -------------------------------------------------------------------------

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz", summary="The database opens and trained models can serve")
    async def readyz(request: Request):
        def work(engine):
            engine.pipeline()
            return True
        try:
            await run(request)(work)
        except Exception as exc:  # not ready: say why, with 503
            return problems.problem_response(503, "Not ready", str(exc), instance="/readyz")
        return JSONResponse({"ok": True, "ready": True})

    return app
