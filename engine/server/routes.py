"""The API's routes, one router per audience: `reading` (public keys: what a shop page
shows), `ingestion` (events: public keys, some kinds secret), `admin` (secret keys: catalogue,
erasure, training, reports) and `probes` (no key: health and readiness).

Each handler parses, runs one Engine method on the engine thread (`app.state.engine`, an
`engine.EngineThread`) and formats; create_app adds the groups in this order."""

from __future__ import annotations

import os
from typing import Annotated, Any, Callable

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse
from pydantic import StringConstraints

from .. import PUBLIC_EVENT_KINDS, Recommendation
from . import problems
from .problems import Problem
from .schemas import (
    DURATION_PATTERN, ID_LIST_PATTERN, ID_PATTERN, PLACEMENT_PATTERN, Erased, EventsIn, EventsOut,
    ExperimentOut, ExperimentReportOut, ItemOut, ItemsChanged, ItemsIn, RecItem, RecList, Removed,
    Report, RuleIn, RuleOut, TrainStarted,
)
from .security import require

Id = Annotated[str, PathParam(pattern=ID_PATTERN, description="letters, digits and . _ : @ + -")]
N = Annotated[int, Query(ge=1, le=200, description="how many items")]
Placement = Annotated[str, Query(max_length=64, pattern=PLACEMENT_PATTERN,
                                 description="where the list is shown: home, product-page, cart, … "
                                             "(its merchandising rules apply)")]
Category = Annotated[str | None, Query(max_length=200)]
Public = Depends(require("public"))
Secret = Depends(require("secret"))



class Routes:
    """A group of routes declared beside their handlers (`@group.get(path, **options)`, as on
    the app) and added to the app by `add_to(app)`, so that each route gets the app's shared
    dependencies and responses. Not an APIRouter: newer FastAPI includes those lazily, out
    of sight of `app.router.routes` (which `problems.allowed_methods` reads for 405/OPTIONS)."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, str, dict[str, Any], Callable]] = []

    def _route(self, method: str, path: str,
               options: dict[str, Any]) -> Callable[[Callable], Callable]:
        def declare(handler: Callable) -> Callable:
            self.routes.append((method, path, options, handler))
            return handler
        return declare

    def get(self, path: str, **options: Any):
        return self._route("get", path, options)

    def post(self, path: str, **options: Any):
        return self._route("post", path, options)

    def put(self, path: str, **options: Any):
        return self._route("put", path, options)

    def delete(self, path: str, **options: Any):
        return self._route("delete", path, options)

    def add_to(self, app: FastAPI) -> None:
        for method, path, options, handler in self.routes:
            getattr(app, method)(path, **options)(handler)


reading = Routes()
ingestion = Routes()
admin = Routes()
probes = Routes()


def _ids(values: list[str]) -> list[str]:
    """Query lists may repeat the parameter or separate ids by commas (ID_LIST_PATTERN)."""
    return [v for value in values for v in value.split(",")]


def _answer(engine, recs: list[Recommendation], user_id: str | None, placement: str,
            cached: bool = False) -> RecList:
    rid = engine.log_impressions(recs, user_id, placement)
    arm = recs[0] if recs and recs[0].experiment else None
    return RecList(recommendation_id=rid, placement=placement, cached=cached,
                   fallback=recs[0].fallback or None if recs else None,
                   experiment=arm and arm.experiment, arm=arm and arm.arm,
                   items=[RecItem.of(r) for r in recs])


def run(request: Request):
    """`await run(request)(fn, *args)`: fn(engine, *args) on the app's engine thread."""
    return request.app.state.engine.run


def _unknown_item(item_id: str) -> Problem:
    return Problem(404, "Unknown item", f"No item {item_id!r} in the catalogue.",
                   [{"field": "path.item_id", "message": "not in the catalogue"}])


# -- reading (public keys) ----------------------------------------------------------------

@reading.get("/recommend/{user_id}", response_model=RecList, dependencies=[Public],
             summary="Personalised recommendations (unknown users get the cold-start fallback)")
async def recommend(request: Request, user_id: Id, n: N = 10, category: Category = None,
                    exclude: Annotated[list[Annotated[str, StringConstraints(pattern=ID_LIST_PATTERN)]], Query(
                        description="item ids not to show: repeat the parameter or separate "
                                    "ids by commas")] = [],  # noqa: B006
                    placement: Placement = ""):
    excluded = _ids(exclude)

    def work(engine):
        hits = engine.recommendation_cache.hits
        recs = engine.recommend(user_id, n, category=category or None, exclude=excluded,
                                placement=placement)
        return _answer(engine, recs, user_id, placement, engine.recommendation_cache.hits > hits)
    return await run(request)(work)


@reading.get("/similar/{item_id}", response_model=RecList, dependencies=[Public],
             summary="Items similar to one item (product page)")
async def similar(request: Request, item_id: Id, n: N = 10, placement: Placement = ""):
    return await run(request)(lambda e: _answer(e, e.similar(item_id, n, placement), None, placement))


@reading.get("/search", response_model=RecList, dependencies=[Public],
             summary="Catalogue search (when a search recaller is installed and trained)")
async def search(request: Request, q: Annotated[str, Query(min_length=1, max_length=500, pattern=r"\S",
                                                            description="the words to look for")],
                 n: N = 10, category: Category = None, placement: Placement = ""):
    return await run(request)(lambda e: _answer(e, e.search(q, n, category or None), None, placement))


@reading.get("/popular", response_model=RecList, dependencies=[Public],
             summary="What a visitor without history is shown (the cold-start fallback)")
async def popular(request: Request, n: N = 10, category: Category = None, placement: Placement = ""):
    return await run(request)(
        lambda e: _answer(e, e.popular(n, category=category or None, placement=placement), None, placement))


@reading.get("/items/{item_id}", response_model=ItemOut, dependencies=[Public])
async def get_item(request: Request, item_id: Id):
    item = await run(request)(lambda e: e.item(item_id))
    if item is None:
        raise _unknown_item(item_id)
    return ItemOut.of(item)


# -- events ---------------------------------------------------------------------------------

@ingestion.post("/events", response_model=EventsOut,
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


# -- catalogue, erasure, training, reports (secret keys) -----------------------------------

@admin.put("/items", response_model=ItemsChanged, dependencies=[Secret],
           summary="Add or update catalogue items (new products are recommendable at once)")
async def put_items(request: Request, body: ItemsIn):
    items = [i.to_item() for i in body.items]
    return await run(request)(lambda e: e.upsert_items(items))


@admin.delete("/items/{item_id}", response_model=Removed, dependencies=[Secret])
async def delete_item(request: Request, item_id: Id):
    found = await run(request)(lambda e: e.remove_items([item_id]))
    if not found["removed"]:
        raise _unknown_item(item_id)
    return {"removed": found["removed"]}


@admin.delete("/users/{user_id}", response_model=Erased, dependencies=[Secret],
              summary="Erase a user: events, impressions, attribution, cached lists")
async def erase_user(request: Request, user_id: Id):
    return await run(request)(lambda e: e.erase_user(user_id))


@admin.post("/train", response_model=TrainStarted, status_code=202, dependencies=[Secret],
            summary="Start a background retrain; the active models serve until it is done")
async def train(request: Request):
    return {"started": True, "training": request.app.state.trainer.start()}


@admin.get("/status", dependencies=[Secret],
           summary="Models, last training, queue depth, this process and the leader's pid")
async def status(request: Request) -> dict[str, Any]:
    state = request.app.state

    def work(engine):
        return {**engine.status(), "recommendation_cache": engine.recommendation_cache.stats()}
    out = await state.engine.run(work)
    out.update(training={k: v for k, v in state.trainer.state.items() if k != "trace"},
               queue_depth=state.engine.pending, api_keys=state.keys.active(),
               process={"pid": os.getpid(), "leader": state.leader.held,
                        "leader_pid": state.leader.holder()})
    elsewhere = state.trainer.elsewhere()
    if elsewhere is not None:
        out["training"].update(running=True, elsewhere=elsewhere, stage="in another process")
    return out


@admin.get("/report", response_model=Report, dependencies=[Secret],
           summary="Impressions, CTR, add-to-cart, conversion and revenue per recaller, ranker, placement")
async def report(request: Request, since: Annotated[str, Query(
                     pattern=DURATION_PATTERN, description="how far back: 30m, 12h, 7d, 2w or all")] = "7d",
                 placement: Annotated[str | None, Query(max_length=64)] = None):
    return await run(request)(lambda e: e.report(since, placement))


# -- merchandising rules (secret keys) -------------------------------------------------------

RULES_DOC = ("Pin a product at a position, boost or bury the products a condition matches by "
             "some places, or filter them out; per placement and until a date if wished. Rules "
             "apply from the next request (no retrain) and each affected list item names its "
             "rule in `rules`. `shelfwise rules --help` says the same for the command line.")


@admin.get("/rules", response_model=list[RuleOut], dependencies=[Secret],
           summary="The merchandising rules and whether each applies now", description=RULES_DOC)
async def list_rules(request: Request, placement: Annotated[str | None, Query(
                         max_length=64, pattern=PLACEMENT_PATTERN,
                         description="only the rules that apply to lists of this placement")] = None):
    found = await run(request)(lambda e: e.rules(placement))
    return [r.to_dict() for r in found]


@admin.post("/rules", response_model=RuleOut, status_code=201, dependencies=[Secret],
            summary="Add a merchandising rule: pin, boost, bury or filter", description=RULES_DOC)
async def add_rule(request: Request, body: RuleIn):
    fields = body.model_dump(exclude={"kind"})
    rule = await run(request)(lambda e: e.add_rule(body.kind, **fields))
    return rule.to_dict()


@admin.delete("/rules/{rule_id}", response_model=RuleOut, dependencies=[Secret],
              summary="Remove a merchandising rule")
async def remove_rule(request: Request, rule_id: Annotated[int, PathParam(ge=1, le=2**53)]):
    rule = await run(request)(lambda e: e.remove_rule(rule_id))
    return rule.to_dict()


# -- A/B experiments (secret keys) ------------------------------------------------------------

EXPERIMENTS_DOC = ("A/B experiments are started and stopped with `shelfwise experiment start|stop`; "
                   "while one runs, shoppers of its placement get their arm's pipeline and each "
                   "list names its `experiment` and `arm`. The report's unit is the shopper: rates "
                   "with delta-method 95% intervals, and each arm against control.")
ExperimentName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
                                          description="the experiment's name")]


@admin.get("/experiments", response_model=list[ExperimentOut], dependencies=[Secret],
           summary="Every A/B experiment, running or stopped, newest first", description=EXPERIMENTS_DOC)
async def list_experiments(request: Request):
    return await run(request)(lambda e: [x.to_dict() for x in e.experiments()])


@admin.get("/experiments/{name}", response_model=ExperimentReportOut, dependencies=[Secret],
           summary="An A/B experiment's report: per arm shoppers, impressions, CTR, add-to-cart, "
                   "conversion, revenue per shopper with 95% intervals, P(better than control)",
           description=EXPERIMENTS_DOC)
async def experiment_report(request: Request, name: ExperimentName):
    return await run(request)(lambda e: e.experiment_report(name).to_dict())


# -- probes ---------------------------------------------------------------------------------

@probes.get("/healthz", summary="The process answers")
async def healthz() -> dict[str, Any]:
    return {"ok": True}


@probes.get("/readyz", summary="The database opens and trained models can serve")
async def readyz(request: Request):
    def work(engine):
        engine.pipeline()
        return True
    try:
        await run(request)(work)
    except Exception as exc:  # not ready: say why, with 503
        return problems.problem_response(503, "Not ready", str(exc), instance="/readyz")
    return JSONResponse({"ok": True, "ready": True})


GROUPS = (reading, ingestion, admin, probes)
