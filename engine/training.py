"""Fitting a pipeline: recallers on the visible part, the ranker on validation examples,
then the recallers again on everything. Used by both `train` and `evaluate`.

A share of the validation examples is held back from every ranker; each fitted ranker
re-ranks those same candidates, and `train` activates a ranker of higher priority only if
it beats the others there (`choose_ranker`)."""

from __future__ import annotations

import gc
import time
import traceback
from typing import Callable, Mapping, Sequence

import numpy as np

from .components import ProgressCallback, Ranker, RankingExample, Recaller, no_progress
from .config import PipelineSettings
from .dataset import Dataset
from .evaluation import holdout
from .memory import give_back_memory
from .metrics import ndcg_at, user_metrics
from .candidates import CandidateSet, item_ids
from .pipeline import Pipeline
from .types import Query

# (recallers fitted, their quotas, queries, report(done)) -> the queries' candidates
Recall = Callable[[Mapping[str, Recaller], Mapping[str, int], Sequence[Query], Callable[[int], None]],
                  list[CandidateSet]]


CHECK_SHARE = 0.2   # validation users no ranker learns from: the rankers are compared on them
CHECK_MIN = 10      # fewer validation users than this: no comparison, every ranker sees all
CHECK_MAX = 400     # enough to tell rankers apart; more only makes `train` slower
CHECK_K = 10


def check_split(examples: Sequence[RankingExample], seed: int = 0,
                earlier: Sequence[RankingExample] = ()) -> tuple[list[RankingExample], list[RankingExample]]:
    """Hold back a seeded share of the users of the latest cut's examples so that rankers
    can be compared on the same candidates that none of them learned from; the moments of
    those users at `earlier` cuts are held back with them (more moments, a less noisy
    comparison). Returns (examples to learn from, held-back examples)."""
    scored = [j for j, ex in enumerate(examples) if ex.relevant]
    if len(scored) < CHECK_MIN:
        return list(examples) + list(earlier), []
    n = min(max(1, round(CHECK_SHARE * len(scored))), CHECK_MAX)
    chosen = np.random.default_rng(seed).permutation(scored)[:n]
    held = set(chosen.tolist())
    users = {examples[j].query.user_id for j in held}
    fit = [ex for j, ex in enumerate(examples) if j not in held]
    check = [ex for j, ex in enumerate(examples) if j in held]
    fit += [ex for ex in earlier if ex.query.user_id not in users]
    check += [ex for ex in earlier if ex.query.user_id in users and ex.relevant]
    return fit, check


def check_ndcg(ranker: Ranker, check: Sequence[RankingExample], k: int = CHECK_K) -> float:
    """Mean NDCG@k of the ranker's order of each held-back example's candidates."""
    total = 0.0
    for ex in check:
        ranked = ranker.rank(ex.query, ex.candidates)
        total += user_metrics(item_ids(ranked), ex.relevant, k)["ndcg"]
    return total / max(len(check), 1)


def choose_ranker(report: Mapping, rankers: Sequence[Ranker]) -> tuple[str | None, list[str], str]:
    """Which of the freshly fitted rankers should serve: the best on the held-back check
    (ties: the higher priority). Returns (winner, rankers of higher priority that lost and
    must not be activated, a sentence saying why)."""
    if not rankers:
        return None, [], ""
    key = f"check_ndcg@{CHECK_K}"
    scores = {r.name: report["rankers"].get(r.name, {}).get(key) for r in rankers}
    if any(v is None for v in scores.values()):
        top = max(rankers, key=lambda r: r.priority)
        return top.name, [], "too few validation users to compare rankers"
    winner = max(rankers, key=lambda r: (round(scores[r.name], 6), r.priority))
    losers = [r.name for r in rankers if r.priority > winner.priority]
    n = report.get("check_examples", 0)
    if losers:
        why = "; ".join(f"{name} NDCG@{CHECK_K} {scores[name]:.4f}" for name in losers)
        return winner.name, losers, (f"{winner.name} keeps serving: on {n} held-back validation "
                                     f"moments it scored NDCG@{CHECK_K} {scores[winner.name]:.4f} "
                                     f"and {why} did not beat it, so "
                                     f"{', '.join(losers)} was not activated")
    others = [r for r in rankers if r is not winner]
    if others:
        best = max(others, key=lambda r: scores[r.name])
        return winner.name, [], (f"{winner.name} serves: NDCG@{CHECK_K} {scores[winner.name]:.4f} "
                                 f"on {n} held-back validation moments vs {best.name} "
                                 f"{scores[best.name]:.4f}")
    return winner.name, [], f"{winner.name} serves (NDCG@{CHECK_K} {scores[winner.name]:.4f})"


class _Stopped(BaseException):
    """The progress callback raised (a cancel): the caller's stop, not the component's fault."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def isolated(name: str, fit, progress: ProgressCallback, stage: str, failed: dict) -> bool:
    """Run one component's `fit(progress=…)` so that its failure is its own: the exception
    is recorded in `failed[name]` (a line and the traceback) and False returned, and the
    other components go on. A stop raised by `progress` (a cancel) still stops everything.
    Afterwards the memory the fit freed goes back to the system: a fit's temporaries left
    in the C heap added up across fits (at a million shoppers, gigabytes of free but
    resident heap under the next fit's peak)."""
    def report(_stage, done, total, msg=""):
        try:
            progress(stage, done, total, msg)
        except BaseException as exc:
            raise _Stopped(exc) from exc

    try:
        fit(report)
    except _Stopped as stop:
        raise stop.original from None
    except Exception as exc:  # noqa: BLE001 — a plugin may raise anything
        failed[name] = {"error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()}
        progress(stage, 1, 1, f"failed: {type(exc).__name__}: {exc}")
        return False
    finally:
        # what the fit left in reference cycles is young: a full collection walked every
        # validation moment after each of the ~45 fits (10 s of the demo shop's train)
        gc.collect(1)
        give_back_memory(collect=False)
    return True


def fit_recallers(data: Dataset, recallers: Mapping[str, Recaller],
                  progress: ProgressCallback, label: str = "fit",
                  failed: dict | None = None) -> dict[str, float]:
    """Fit each recaller on `data`; one that raises is recorded in `failed` (name -> error
    and traceback) and the others are fitted all the same."""
    failed = {} if failed is None else failed
    seconds = {}
    for name, recaller in recallers.items():
        if name in failed:
            continue
        stage = f"{label} {name}"
        progress(stage, 0, None, "")
        started = time.perf_counter()
        if isolated(name, lambda report, r=recaller: r.fit(data, progress=report), progress, stage, failed):
            seconds[name] = time.perf_counter() - started
            progress(stage, 1, 1, f"done in {seconds[name]:.1f}s")
    return seconds


# validation queries recalled at a time (a progress step, where a cancel lands)
VALIDATION_BATCH = 128


def recall_here(recallers: Mapping[str, Recaller], quotas: Mapping[str, int],
                queries: Sequence[Query], report: Callable[[int], None]) -> list[CandidateSet]:
    """The merged candidates of validation `queries` (compacted: what rankers learn from),
    recalled in this process in batches of VALIDATION_BATCH; `report(done)` after each."""
    pipe, cands = Pipeline(dict(recallers), dict(quotas)), []
    for start in range(0, len(queries), VALIDATION_BATCH):
        cands += [found.compact() for found in pipe.candidates(queries[start:start + VALIDATION_BATCH])]
        report(len(cands))
    return cands


def validation_examples(data: Dataset, recallers: Mapping[str, Recaller], quotas: Mapping[str, int],
                        settings: PipelineSettings, progress: ProgressCallback = no_progress,
                        failed: dict | None = None, recall: Recall = recall_here,
                        ) -> tuple[list[RankingExample], list[RankingExample]]:
    """The moments rankers learn from, built time-correctly: each user's newest items are
    held out, the recallers are fitted on what came before, and the candidates they recall
    are paired with the items the user met next. With `validation_windows` > 1 the same is
    done again on the part before each cut (an earlier moment of the same users, recallers
    fitted again, except those with `refit_per_cut` False: fitted at the oldest cut only).
    `recall`: how the candidates are recalled (`recall_here`, or on an executor's workers:
    flows.py). Returns (moments of the latest cut, moments of the earlier cuts)."""
    latest: list[RankingExample] = []
    earlier: list[RankingExample] = []
    splits, visible = [], data
    for window in range(settings.validation_windows):  # the cuts, newest first
        split = holdout(visible, settings.validation_share, settings.min_interactions,
                        history=settings.history, max_users=settings.validation_users,
                        seed=settings.seed + window)
        if not split.queries:
            break
        splits.append(split)
        visible = split.visible
    failed = {} if failed is None else failed
    # fitted oldest cut first: each fit sees more of the same data than the one before (and
    # the final fit on all of it comes last), so a recaller may start from its previous fit
    for window in reversed(range(len(splits))):
        split = splits[window]
        label = "validate" if window == 0 else f"validate (cut {window + 1})"
        oldest = window == len(splits) - 1
        fit_recallers(split.visible, {name: r for name, r in recallers.items() if oldest or r.refit_per_cut},
                      progress, label=label, failed=failed)
        working = {name: r for name, r in recallers.items() if name not in failed}
        what = f"recalling for validation users ({label})"
        progress("candidates", 0, len(split.queries), what)
        cands = recall(working, {n: q for n, q in quotas.items() if n in working}, split.queries,
                       lambda done, n=len(split.queries), what=what: progress("candidates", done, n, what))
        moments = [RankingExample(q, c, rel, split.visible)
                   for q, c, rel in zip(split.queries, cands, split.relevant)]
        (latest if window == 0 else earlier)[:0] = moments  # newest cut's moments first
        splits[window] = None  # its candidates are kept, the split's queries are not needed
    return latest, earlier


def fused_ndcg(examples: Sequence[RankingExample], leave_out: str | None = None, k: int = CHECK_K,
               c: float = 60.0) -> float:
    """Mean NDCG@k of the examples' candidates ordered by plain reciprocal-rank fusion (each
    recaller's 1 / (c + rank), summed), optionally as if recaller `leave_out` were absent: a
    ranker-free measure of what a recaller adds to the others."""
    total = 0.0
    for ex in examples:
        cands = ex.candidates.without(leave_out) if leave_out else ex.candidates
        if not len(cands):
            continue
        ranks = np.asarray(cands.ranks, np.float64)
        score = np.where(ranks > 0, 1.0 / (c + ranks), 0.0).sum(axis=1)
        top = np.argsort(-score, kind="stable")[:k]
        total += ndcg_at([cands.items[j] in ex.relevant for j in top.tolist()], len(ex.relevant), k)
    return total / max(len(examples), 1)


def try_out(latest: list[RankingExample], earlier: list[RankingExample],
            on_trial: Sequence[str]) -> tuple[dict[str, dict], list, list]:
    """Recallers on trial join the pipeline only if the validation moments' candidates rank
    better with them than without (`fused_ndcg`). Returns each one's verdict and the moments
    without the candidates of those that lost (the rankers learn what will serve)."""
    verdicts: dict[str, dict] = {}
    for name in on_trial:
        with_it, without = fused_ndcg(latest), fused_ndcg(latest, leave_out=name)
        verdicts[name] = {"joined": with_it > without, f"ndcg@{CHECK_K}_with": round(with_it, 6),
                          f"ndcg@{CHECK_K}_without": round(without, 6)}
        if with_it <= without:
            def strip(moments, name=name):
                return [RankingExample(ex.query, ex.candidates.without(name), ex.relevant, ex.known)
                        for ex in moments]
            latest, earlier = strip(latest), strip(earlier)
    return verdicts, latest, earlier


def fit_pipeline(data: Dataset, recallers: Mapping[str, Recaller], quotas: Mapping[str, int],
                 rankers: Sequence[Ranker], settings: PipelineSettings,
                 progress: ProgressCallback = no_progress, recall: Recall = recall_here) -> dict:
    """Fit everything on `data`: the recallers on validation splits first, so that each
    ranker learns from candidates of recallers that did not see the held-out items; then
    the recallers again on all of `data`. Only recallers in `quotas` feed the rankers.
    `recall`: how the validation candidates are recalled (see `validation_examples`).
    Returns timings, each ranker's validation metrics and the candidates' hit rate."""
    failed: dict = {}  # component -> {"error", "traceback"}: it is not saved, the rest is
    report: dict = {"seconds": {}, "rankers": {}, "failed": failed, "trials": {}}
    if rankers:
        in_pipeline = {name: recallers[name] for name in quotas}
        latest, earlier = validation_examples(data, in_pipeline, quotas, settings, progress, failed,
                                              recall)
        report["trials"], latest, earlier = try_out(
            latest, earlier, [n for n, r in in_pipeline.items() if r.on_trial and n not in failed])
        for name, recaller in in_pipeline.items():  # refitted on all the events below
            if name not in failed:
                isolated(name, lambda _report, r=recaller: r.drop_fit(), progress, "candidates", failed)
        examples = latest + earlier
        progress("candidates", len(examples), len(examples), f"{len(examples)} validation moments")
        # the rankers are compared on users of the latest cut that none of them learned from
        fit_examples, check = check_split(latest, settings.seed, earlier)
        visible = latest[0].known if latest else data
        for ranker in rankers:
            stage = f"fit {ranker.name}"
            started = time.perf_counter()

            def fit(report_progress, r=ranker):
                report["rankers"][r.name] = r.fit(fit_examples, visible, progress=report_progress)
            if isolated(ranker.name, fit, progress, stage, failed):
                report["seconds"][ranker.name] = time.perf_counter() - started
        rankers = [r for r in rankers if r.name not in failed]
        if check:
            progress("check", 0, len(rankers), f"{len(check)} held-back validation moments")
            for j, ranker in enumerate(rankers, start=1):
                report["rankers"][ranker.name][f"check_ndcg@{CHECK_K}"] = check_ndcg(ranker, check)
                progress("check", j, len(rankers), ranker.name)
            # The ranker that will serve learns again from every validation user (the check
            # only decided which one serves), unless its class says its fit is too slow
            # (`refit` False: a fine-tuned model keeps its fit) — decided by the class, not
            # by how long the fit took here, so a busy machine gives the same models. The
            # others keep their first fit (a refit of a ranker that did not serve took 19 s of
            # the demo shop's train).
            serving = settings.ranker or choose_ranker(report, rankers)[0]
            for ranker in (r for r in rankers if r.refit and r.name == serving):
                def again(_s, done, total, msg="", name=ranker.name):
                    progress(f"refit {name}", done, total, msg)
                report["rankers"][ranker.name].update(
                    {f"{key}_all": value for key, value in ranker.fit(examples, visible, progress=again).items()
                     if key.startswith("ndcg")})
        report["check_examples"] = len(check)
        hits = sum(not ex.relevant.isdisjoint(item_ids(ex.candidates)) for ex in latest)
        report["candidate_hit_rate"] = hits / max(len(latest), 1)
        report["validation_moments"] = len(examples)
        del examples, latest, earlier, fit_examples, check, visible  # free the candidates before the final fit
        for ranker in rankers:  # final: what is only a cache goes before the final fits
            ranker.drop_caches()
    report["seconds"].update(fit_recallers(data, recallers, progress, failed=failed))
    for ranker in rankers:
        ranker.observe(data)
    return report
