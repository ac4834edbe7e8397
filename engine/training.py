"""Fitting a pipeline: recallers on the visible part, the ranker on validation examples,
then the recallers again on everything. Used by both `train` and `evaluate`."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

from .components import ProgressCallback, Ranker, RankingExample, Recaller, no_progress
from .config import PipelineSettings
from .dataset import Dataset
from .evaluation import holdout
from .pipeline import Pipeline


def fit_recallers(data: Dataset, recallers: Mapping[str, Recaller],
                  progress: ProgressCallback, label: str = "fit") -> dict[str, float]:
    seconds = {}
    for name, recaller in recallers.items():
        stage = f"{label} {name}"
        progress(stage, 0, None, "")
        started = time.perf_counter()
        recaller.fit(data, progress=lambda _s, done, total, msg="", st=stage: progress(st, done, total, msg))
        seconds[name] = time.perf_counter() - started
        progress(stage, 1, 1, f"done in {seconds[name]:.1f}s")
    return seconds


def fit_pipeline(data: Dataset, recallers: Mapping[str, Recaller], quotas: Mapping[str, int],
                 rankers: Sequence[Ranker], settings: PipelineSettings,
                 progress: ProgressCallback = no_progress) -> dict:
    """Fit everything on `data`: the recallers on a validation split first, so that each
    ranker learns from candidates of recallers that did not see the held-out items; then
    the recallers again on all of `data`. Only recallers in `quotas` feed the rankers.
    Returns timings, each ranker's validation metrics and the candidates' hit rate."""
    report: dict = {"seconds": {}, "rankers": {}}
    if rankers:
        split = holdout(data, settings.validation_share, settings.min_interactions,
                        history=settings.history, max_users=settings.validation_users,
                        seed=settings.seed)
        in_pipeline = {name: recallers[name] for name in quotas}
        fit_recallers(split.visible, in_pipeline, progress, label="validate")
        progress("candidates", 0, len(split.queries), "recalling for validation users")
        cands = Pipeline(in_pipeline, dict(quotas)).candidates(split.queries)
        examples = [RankingExample(q, c, rel)
                    for q, c, rel in zip(split.queries, cands, split.relevant)]
        progress("candidates", len(examples), len(examples), f"{len(examples)} validation users")
        for ranker in rankers:
            stage = f"fit {ranker.name}"
            started = time.perf_counter()
            report["rankers"][ranker.name] = ranker.fit(
                examples, split.visible,
                progress=lambda _s, done, total, msg="", st=stage: progress(st, done, total, msg))
            report["seconds"][ranker.name] = time.perf_counter() - started
        hits = sum(bool({c.item_id for c in cs} & ex.relevant) for cs, ex in zip(cands, examples))
        report["candidate_hit_rate"] = hits / max(len(examples), 1)
        del cands, examples, split  # free the validation candidates before the final fit
    report["seconds"].update(fit_recallers(data, recallers, progress))
    return report
