"""The two long jobs behind `Engine.train` and `Engine.evaluate`, step by step.

train: encode new items, fit every installed component (each in isolation), choose the
ranker that serves, store every model and activate them in one transaction, prune old
versions. evaluate: hold out each user's newest items, fit on the rest, score every
recaller and the pipeline on the held-out users (all of them, the light ones, the
cold-start items). Both record a `runs` row that never stays "running"."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .artifacts import dump_state
from .components import ProgressCallback, Ranker, Recaller
from .db import write_transaction
from .errors import EngineError
from .evaluation import holdout
from .executor import LocalExecutor, chunked
from .metrics import aggregate
from .pipeline import Pipeline
from .results import EvaluationReport, ModelScores, RankerChoice, TrainReport
from .snapshot import FittedPipeline, FittedShared, ShopSnapshot, snapshot
from .training import VALIDATION_BATCH, Recall, choose_ranker, fit_pipeline, recall_here

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .executor import Executor
    from .types import Query


def train(engine: Engine, progress: ProgressCallback, executor: Executor | None = None) -> TrainReport:
    """`executor`: where the catalogue is encoded and the validation candidates recalled
    (default: this process); the fits run here."""
    started = time.perf_counter()
    data = engine.dataset()
    if data.n_events == 0:
        raise EngineError("There are no events to learn from. Import some first: "
                          "\"shelfwise import csv --events events.csv\".", title="No data")
    installed = engine.registry.components()
    store = engine.store
    run_id = store.start_run("train", {"pipeline": engine.lineup.quotas(),
                                       "recallers": list(installed["recallers"]),
                                       "rankers": list(installed["rankers"])})
    try:  # until the models are activated, a failure or a cancel leaves the old ones serving
        vector_report = engine.refresh_vectors(progress, executor=executor)  # a cancel is recorded too
        # made after the refresh, so that they are given the index it brought up to date
        quotas, recallers, rankers = engine.lineup.fresh(every=True)
        report = fit_pipeline(data, recallers, quotas, rankers, engine.settings.pipeline, progress,
                              recall_on(engine, executor))
        shape = data.n_events, data.n_users, data.n_items
        del data  # every event in memory (1.7 GiB at 20M) is not needed to save the models
        versions, chosen = _activate(engine, report, recallers, rankers, progress)
    except BaseException as exc:
        store.finish_run(run_id, {}, status="failed", note=str(exc))
        raise
    engine.serving.drop_models()
    result = TrainReport(
        run_id=run_id, events=shape[0], users=shape[1], items=shape[2],
        seconds=report["seconds"], rankers=report["rankers"], failed=report["failed"],
        versions=versions, ranker=chosen, vectors=vector_report,
        kept_models=sorted(m["name"] for m in store.active_artifacts()
                           if m["name"].partition("/")[2] in report["failed"]),
        total_seconds=time.perf_counter() - started, check_examples=report.get("check_examples"),
        candidate_hit_rate=report.get("candidate_hit_rate"),
        validation_moments=report.get("validation_moments"), trials=report.get("trials", {}))
    store.finish_run(run_id, result.to_dict())
    result = replace(result, pruned=store.prune_artifacts(engine.settings.store.keep_versions))
    with contextlib.suppress(Exception):  # activated: too late to cancel, nothing to undo
        progress("save", 1, 1, "models activated")
    return result


def _activate(engine: Engine, report: dict, recallers: dict[str, Recaller], rankers: list[Ranker],
              progress: ProgressCallback) -> tuple[dict[str, int], RankerChoice]:
    """Store the fitted models and activate them together: (versions, the ranker chosen).

    A component whose fit raised is not saved: its last good model (if any) serves on. A
    ranker of higher priority is activated only if it beat the others on the held-back
    validation users; otherwise its new version is kept inactive and the old one retired,
    so the winner serves (unless shelfwise.toml names a ranker). A recaller on trial that
    did not improve the validation candidates is kept inactive the same way (unless
    shelfwise.toml's `[pipeline] recallers` names it)."""
    failed = report["failed"]
    recallers = {n: r for n, r in recallers.items() if n not in failed}
    rankers = [r for r in rankers if r.name not in failed]
    progress("save", 0, 1, "writing model artifacts")
    serving, losers, why = choose_ranker(report, rankers)
    if engine.settings.pipeline.ranker:
        serving, losers, why = engine.settings.pipeline.ranker, [], "named in shelfwise.toml"
    named = engine.settings.pipeline.recallers or {}
    out = [name for name, verdict in report["trials"].items()
           if not verdict["joined"] and name not in named and name in recallers]
    upto = engine.dataset_events_upto

    def blob(component):
        """The component's artifact, made when the store writes it (one at a time); with
        the snapshot it learnt from: what came later is folded in."""
        def make():
            payload, fmt, meta = dump_state(component.state())
            return payload, fmt, {**meta, "events_upto": upto}
        return make

    blobs = {f"recaller/{n}": blob(r) for n, r in recallers.items() if n not in out}
    blobs.update({f"ranker/{r.name}": blob(r) for r in rankers if r.name not in losers})
    inactive = {f"recaller/{n}": blob(recallers[n]) for n in out}
    inactive.update({f"ranker/{r.name}": blob(r) for r in rankers if r.name in losers})
    store = engine.store
    with write_transaction(engine.db):
        versions = store.save_artifacts(blobs)
        if inactive:  # kept for a look, not served
            versions.update(store.save_artifacts(inactive, activate=False))
            store.deactivate(list(inactive))
    return versions, RankerChoice(serving, losers, why)


def evaluate(engine: Engine, k: int, progress: ProgressCallback,
             recallers: Sequence[str] | None, ranker: str | None,
             executor: Executor | None = None) -> EvaluationReport:
    """`executor`: where the new items are encoded, the validation candidates recalled and
    the held-out users scored (default: this process); the metrics are the same either way."""
    executor = executor or LocalExecutor()
    ps = engine.settings.pipeline
    engine.refresh_vectors(progress, executor=executor)
    data = engine.dataset()
    split = holdout(data, ps.validation_share, ps.min_interactions, history=ps.history)
    if not split.queries:
        raise EngineError(f"No user has {ps.min_interactions} or more distinct items, so "
                          f"nothing can be held out for evaluation.", title="Too little data")
    quotas, fresh, rankers = engine.lineup.fresh(recallers, ranker)
    ranker_obj = rankers[0] if rankers else None
    run_id = engine.store.start_run("evaluate", {"k": k, "recallers": quotas,
                                                 "ranker": ranker_obj.name if ranker_obj else None})
    try:  # a failure or a cancel at any step is recorded, never left "running"
        fit_report = fit_pipeline(split.visible, fresh, quotas, rankers, ps, progress,
                                  recall_on(engine, executor))
        failed = fit_report["failed"]  # left out of the evaluation, and said so
        fresh = {name: r for name, r in fresh.items() if name not in failed}
        quotas = {name: q for name, q in quotas.items() if name not in failed}
        if ranker_obj is not None and ranker_obj.name in failed:
            ranker_obj = None
        if not fresh:
            raise EngineError("Nothing to evaluate: " + "; ".join(
                f"{name} failed to train ({f['error']})" for name, f in failed.items()),
                title="Training failed")
        out = EvaluationReport(
            run_id=run_id, **_score(engine, data, split, fresh, quotas, ranker_obj, k, progress, executor),
            candidate_hit_rate=fit_report.get("candidate_hit_rate"),
            ranker_validation=fit_report["rankers"].get(ranker_obj.name, {}) if ranker_obj else {},
            failed={name: f["error"] for name, f in failed.items()})
    except BaseException as exc:
        engine.store.finish_run(run_id, {}, status="failed", note=str(exc))
        raise
    engine.store.finish_run(run_id, out.to_dict())
    return out


class _Slices:
    """The held-out users scored three ways: all, the light quarter (fewest items before
    the cut), and those whose held-out items include cold-start ones (nobody touched them
    in the visible part)."""

    def __init__(self, data, split, cold: set[str], k: int):
        self.relevant, self.k, self.n_items = split.relevant, k, data.n_items
        self.cold_rel = [rel & cold for rel in split.relevant]
        self.cold_users = [j for j, rel in enumerate(self.cold_rel) if rel]
        known = np.array([len(q.exclude) for q in split.queries])
        self.light_limit = int(np.quantile(known, 0.25))
        self.light_users = np.flatnonzero(known <= self.light_limit).tolist()

    def score(self, lists: list[list[str]]) -> dict[str, Any]:
        k, n = self.k, self.n_items
        out = {"metrics": aggregate(lists, self.relevant, k, n),
               "light_users": aggregate([lists[j] for j in self.light_users],
                                        [self.relevant[j] for j in self.light_users], k, n)}
        if self.cold_users:
            out["cold_start"] = aggregate([lists[j] for j in self.cold_users],
                                          [self.cold_rel[j] for j in self.cold_users], k, n)
        return out


def _score(engine: Engine, data, split, fresh: dict[str, Recaller], quotas: dict[str, int],
           ranker: Ranker | None, k: int, progress: ProgressCallback,
           executor: Executor) -> dict[str, Any]:
    seen = np.bincount(split.visible.items, minlength=data.n_items) > 0
    cold = {str(i) for i in data.item_ids[~seen]}
    pipe = Pipeline(fresh, {name: max(q, k) for name, q in quotas.items()}, ranker,
                    categories=engine.serving.catalogue().categories, new_items=cold,
                    **engine.lineup.rules())
    scored = [name for name in fresh if not fresh[name].text_queries]  # search answers typed
    queries = split.queries                                           # queries; these have none
    # in this process one chunk, as before; on a cluster a few per worker
    size = len(queries) if executor.kind == "local" else -(-len(queries) // (4 * executor.workers))
    chunks = chunked(queries, size or 1)
    shared = FittedShared(engine, pipe, fresh, ranker, cold)
    work = shared.here() if executor.kind == "local" else shared
    lists: dict[str, list[list[str]]] = {name: [] for name in [*scored, "pipeline"]}
    # progress in chunks (a UI may cancel at each), the message in held-out users
    progress("score", 0, len(chunks), f"recalling and ranking for {len(queries):,} held-out users")
    done = 0
    for step, (part, found) in enumerate(zip(chunks, executor.map(ScoreChunk(k, tuple(scored)),
                                                                  chunks, work)), start=1):
        for name, got in found.items():
            lists[name].extend(got)
        done += len(part)
        progress("score", step, len(chunks), f"{done:,} of {len(queries):,} held-out users")
    slices = _Slices(data, split, cold, k)
    results = [ModelScores(name, "recaller", **slices.score(lists[name])) for name in scored]
    results.append(ModelScores("pipeline", "pipeline", **slices.score(lists["pipeline"]),
                               ranker=ranker.name if ranker else None))
    return {"k": k, "results": results, "users": len(split.queries),
            "cold_start_users": len(slices.cold_users), "light_users": len(slices.light_users),
            "light_user_max_items": slices.light_limit}


@dataclass(frozen=True)
class ScoreChunk:
    """The top k of held-out `queries`, by each recaller in `recallers` and by the pipeline
    (run where the executor runs it: this engine's pipeline or a worker's copy)."""

    k: int
    recallers: tuple[str, ...]

    def __call__(self, queries: Sequence[Query], fitted: FittedPipeline) -> dict[str, list[list[str]]]:
        pipe = fitted.pipe
        recalled = pipe.recall(queries)
        out = {name: [[c.item_id for c in per[name][:self.k]] for per in recalled]
               for name in self.recallers}
        out["pipeline"] = [[c.item_id for c in cs] for cs in pipe.run(queries, self.k, recalled)]
        return out


def recall_on(engine: Engine, executor: Executor | None) -> Recall:
    """How `fit_pipeline` recalls the validation candidates: here (`recall_here`), or on
    the executor's workers (`RecallOn`)."""
    if executor is None or executor.kind == "local":
        return recall_here
    return RecallOn(engine, executor)


@dataclass
class RecallOn:
    """training.Recall on an executor's workers: the recallers fitted at a validation cut
    travel as their state, with one snapshot of the shop for every cut of the job; the
    queries go in the batches `recall_here` uses, so the candidates are the same."""

    engine: Engine
    executor: Executor
    shop: ShopSnapshot | None = None

    def __call__(self, recallers, quotas, queries, report) -> list:
        if self.shop is None:
            self.shop = snapshot(self.engine)
        shared = FittedShared(self.engine, Pipeline(dict(recallers), dict(quotas)), dict(recallers),
                              None, plain=True, shop=self.shop)
        cands: list = []
        for found in self.executor.map(_candidates, chunked(queries, VALIDATION_BATCH), shared):
            cands += found
            report(len(cands))
        return cands


def _candidates(queries: Sequence[Query], fitted: FittedPipeline) -> list:
    return [found.compact() for found in fitted.pipe.candidates(queries)]
