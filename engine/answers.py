"""What the views ask of the engine, answered: a shopper's recommendations (and their
trace), what a visitor without history sees, search, similar items, every shopper's list.
`Engine`'s methods of the same names call these.

A shopper in an A/B experiment that covers the request's placement gets the arm's pipeline
(engine.experiments); each line of the answer names the experiment and arm.

The merchandising rules of the request's `placement` shape recommendations, the
visitor's list and similar items (each affected line names its rule in `rules`); search
answers what was typed, untouched by them."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from .components import ProgressCallback, no_progress
from .config import PipelineSettings
from .errors import ArtifactError, EngineError, NotTrainedError
from .executor import LocalExecutor, chunked
from .pipeline import Pipeline, Trace, interleave
from .rendering import items_named, render
from .snapshot import FittedPipeline, ServingShared
from .types import Candidate, Interaction, Query, Recommendation

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .executor import Executor
    from .experiments import Assigned


def query_for(engine: Engine, user_id: str | None, category: str | None = None,
              exclude: Iterable[str] = (), items: Sequence[str] = (),
              text: str | None = None, settings: PipelineSettings | None = None) -> Query:
    """The request as recallers see it: the user's stored history (if any) followed by
    `items` the caller says were just viewed (anonymous visitors, cold start). `settings`:
    an experiment arm's [pipeline] (history length, kinds excluded), else the shop's."""
    ps = settings or engine.settings.pipeline
    now = time.time()
    history = engine.store.history(user_id, ps.history) if user_id else ()
    history = history + tuple(Interaction(i, "view", now) for i in items)
    consumed = engine.store.consumed(user_id, ps.exclude_kinds) if user_id else set()
    return Query(user_id=user_id, history=history, text=text or None,
                 exclude=frozenset(consumed) | frozenset(exclude) | frozenset(items),
                 category=category, now=now)


def recommend(engine: Engine, user_id: str | None, n: int = 10, recallers: Sequence[str] | None = None,
              ranker: str | None = None, category: str | None = None,
              exclude: Iterable[str] = (), items: Sequence[str] = (),
              text: str | None = None, placement: str = "") -> list[Recommendation]:
    """Personalised recommendations. An unknown user (or None) gets the cold-start
    path: popular items, or content neighbours of `items` / matches of `text`.
    `placement`: where the list is shown (its merchandising rules apply)."""
    if n < 1:
        raise EngineError(f"n must be at least 1, not {n}.")
    engine.sync()
    if not engine.serving.loaded:  # models dropped (a retrain, a reload): their answers are stale
        engine.serving.cache.clear()
    arm = assigned(engine, user_id, recallers, ranker, placement)
    key = (user_id, n, tuple(recallers or ()), ranker, category, frozenset(exclude),
           tuple(items), text, placement or "", arm and (arm.experiment, arm.arm))
    found = engine.serving.cache.get(key)
    if found is not None:
        return list(found)
    pipe, query = arm_pipeline(engine, arm, user_id, recallers, ranker, category, exclude, items,
                               text, placement)
    traces: list[Trace] = []
    shown = pipe.run([query], n, traces=traces)[0]
    recs = with_rules(render(engine.store, shown, pipe.ranker_name), traces[0].notes)
    why = fallback(engine, user_id, query, items, text)
    if why or arm:
        recs = [replace(r, fallback=why, experiment=arm.experiment if arm else "",
                        arm=arm.arm if arm else "") for r in recs]
    engine.serving.cache.put(key, user_id, tuple(recs))
    return recs


def assigned(engine: Engine, user_id: str | None, recallers: Sequence[str] | None,
             ranker: str | None, placement: str) -> Assigned | None:
    """The experiment arm this request is served (engine.experiments), or None: no
    experiment covers the placement, the request has no shopper id, or it names its own
    recallers or ranker (then it gets what it asked for, outside the experiment)."""
    if recallers or ranker is not None:
        return None
    return engine.abtests.assign(placement or "", user_id)


def arm_pipeline(engine: Engine, arm: Assigned | None, user_id: str | None,
                 recallers: Sequence[str] | None, ranker: str | None, category: str | None,
                 exclude: Iterable[str], items: Sequence[str], text: str | None,
                 placement: str) -> tuple[Pipeline, Query]:
    """The pipeline and query of a request: the shop's, or its experiment arm's (the arm's
    recallers, quotas, ranker and re-rank settings, and the rules of its placement)."""
    if arm is None:
        pipe = engine.with_rules(engine.lineup.pipeline(recallers, ranker), placement)
        return pipe, query_for(engine, user_id, category, exclude, items, text)
    pipe = engine.with_rules(arm.lineup.pipeline(), arm.rules_placement)
    return pipe, query_for(engine, user_id, category, exclude, items, text,
                           arm.lineup.settings.pipeline)


def with_rules(recs: list[Recommendation], notes: dict[str, list[str]]) -> list[Recommendation]:
    """The recommendations with the merchandising rules that placed each ("pinned by rule 3")."""
    if not notes:
        return recs
    return [replace(r, rules=tuple(notes[r.item_id])) if r.item_id in notes else r for r in recs]


def fallback(engine: Engine, user_id: str | None, query: Query, items: Sequence[str],
             text: str | None) -> str:
    """Why an answer is the cold-start one, in a few words ("" when it is personal): the
    shopper is unknown or has no events yet, or none of the items named is a product."""
    if text:
        return ""
    if items:
        return "" if any(engine.store.item(i) is not None for i in items) or \
            len(query.history) > len(items) else "unknown item"
    if user_id is None or query.history:
        return ""
    return "no history yet" if engine.store.has_user(user_id) else "unknown user"


def trace(engine: Engine, user_id: str | None, n: int = 10, recallers: Sequence[str] | None = None,
          ranker: str | None = None, category: str | None = None,
          exclude: Iterable[str] = (), items: Sequence[str] = (), text: str | None = None,
          placement: str = "") -> Trace:
    """What `recommend` with these arguments does, stage by stage (never cached): each
    recaller's proposals, what each filter removed, the ranker's order, what the re-rank
    rules (the merchandising rules among them) moved, and the list shown. `ranker=""`
    leaves the ranker out."""
    if n < 1:
        raise EngineError(f"n must be at least 1, not {n}.")
    engine.sync()
    arm = assigned(engine, user_id, recallers, ranker, placement)
    pipe, query = arm_pipeline(engine, arm, user_id, recallers, ranker, category, exclude, items,
                               text, placement)
    return pipe.trace(query, n)


def popular(engine: Engine, n: int = 10, category: str | None = None,
            placement: str = "") -> list[Recommendation]:
    """What a visitor without history sees: the pipeline's answer for nobody (the
    `popular` recaller's list, ranked); when no trained model can give one (before the
    first train, or every model damaged), the products most shoppers chose, counted
    from the events — this answer never depends on a model."""
    try:
        recs = engine.recommend(None, n, category=category, placement=placement)
    except (NotTrainedError, ArtifactError):
        recs = []
    if recs:
        return recs
    counted = engine.store.most_chosen(n, category)
    return render(engine.store, [Candidate(item, float(people), "popular", f"popular with {people} "
                                  f"{'person' if people == 1 else 'people'}")
                        for item, people in counted], None)


def search(engine: Engine, text: str, n: int = 10, category: str | None = None) -> list[Recommendation]:
    """Catalogue search through the recallers that answer text queries."""
    if not text.strip():
        raise EngineError("The search text is empty. Example: shelfwise search \"red shoes\".")
    pipe = replace(engine.lineup.only(engine.pipeline(), lambda r: r.text_queries), merchandising=None)
    if not pipe.recallers:
        raise NotTrainedError("No trained recaller answers text queries. Install a search "
                              "plugin and run \"shelfwise train\".")
    query = Query(text=text, category=category, now=time.time())
    return render(engine.store, pipe.run([query], n)[0], None)


def recommend_all(engine: Engine, n: int = 10, batch: int = 512,
                  progress: ProgressCallback = no_progress, recallers: Sequence[str] | None = None,
                  ranker: str | None = None, category: str | None = None,
                  placement: str = "", executor: Executor | None = None,
                  ) -> Iterator[tuple[str, list[Recommendation]]]:
    """Recommendations for every user with at least one event, in batches, with the same
    choices `recommend` takes (recallers, ranker, category, placement). `executor`: where
    the batches are answered (engine.executor; default: this process); the lists come back
    in the order of the users either way, and are the same."""
    executor = executor or LocalExecutor()
    shared = ServingShared(engine, tuple(recallers) if recallers else None, ranker, placement)
    fitted = shared.here()  # not trained, an unknown recaller: said before any work starts
    users = engine.store.users_with_events()
    progress("recommend", 0, len(users), f"{len(users):,} shoppers")
    done = 0
    for answered in executor.map(RecommendBatch(n, category), chunked(users, batch),
                                 fitted if executor.kind == "local" else shared):
        yield from answered
        done += len(answered)
        progress("recommend", done, len(users), "")


@dataclass(frozen=True)
class RecommendBatch:
    """One batch of `recommend_all`: the lists of `users`, in their order (run where the
    executor runs it, against `fitted`: this engine's pipeline or a worker's copy)."""

    n: int
    category: str | None

    def __call__(self, users: Sequence[str], fitted: FittedPipeline) -> list[tuple[str, list[Recommendation]]]:
        engine, pipe = fitted.engine, fitted.pipe
        queries = [query_for(engine, u, self.category) for u in users]
        traces: list[Trace] = []
        shown = pipe.run(queries, self.n, traces=traces)
        items = items_named(engine.store, (c for cands in shown for c in cands))  # one read a batch
        return [(u, with_rules(render(engine.store, cands, pipe.ranker_name, items), done.notes))
                for u, cands, done in zip(users, shown, traces)]


def similar(engine: Engine, item_id: str, n: int = 10, placement: str = "") -> list[Recommendation]:
    """Items like this one, blended from the recallers that answer item queries (no
    ranker), with the merchandising rules of `placement`."""
    if engine.store.item(item_id) is None and not engine.store.item_events(item_id, 1):
        raise EngineError(f"Unknown item {item_id!r}. Find ids with \"shelfwise items QUERY\".",
                          title="Unknown item")
    pipe = engine.lineup.only(engine.pipeline(placement=placement), lambda r: r.similar_items)
    query = Query(item_id=item_id, exclude=frozenset([item_id]), now=time.time())
    shown, notes = pipe.finish(query, pipe.candidates([query], blend=interleave)[0], n, rerank=False)
    return with_rules(render(engine.store, shown, None), notes)
