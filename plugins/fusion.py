"""`fusion`: weighted reciprocal-rank fusion of the recallers' lists.

score(item) = Σ_r w_r / (c + rank_r(item)). The weights are tuned on the validation
examples by coordinate ascent on NDCG@10, so a recaller that helps gets a say and one
that only adds noise is turned down."""

from __future__ import annotations

import math
from typing import Sequence

from pydantic import BaseModel, Field

from engine import Candidate, ModelState, Query, Ranker, RankingExample, hookimpl

GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


class FusionConfig(BaseModel):
    c: float = Field(20.0, gt=0, description="rank offset of reciprocal-rank fusion")
    rounds: int = Field(3, ge=0, description="coordinate-ascent rounds over the weights (0: all 1)")
    k: int = Field(10, ge=1, description="cut-off of the NDCG the weights are tuned for")


def _ndcg(ranked: list[str], relevant: frozenset[str], k: int) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / idcg


class FusionRanker(Ranker):
    name = "fusion"
    description = "Weighted reciprocal-rank fusion, weights tuned on validation NDCG"
    Config = FusionConfig
    priority = 0

    def __init__(self, config=None):
        super().__init__(config)
        self.weights: dict[str, float] = {}

    def _score(self, cand: Candidate, weights: dict[str, float]) -> float:
        c = self.config.c
        return sum(weights.get(r, 1.0) / (c + rank) for r, rank in cand.ranks.items())

    def _mean_ndcg(self, examples: Sequence[RankingExample], weights: dict[str, float]) -> float:
        k = self.config.k
        total = 0.0
        for ex in examples:
            ranked = sorted(ex.candidates, key=lambda cand: -self._score(cand, weights))
            total += _ndcg([cand.item_id for cand in ranked], ex.relevant, k)
        return total / max(len(examples), 1)

    def fit(self, examples, data, progress=None) -> dict[str, float]:
        examples = [ex for ex in examples if ex.relevant]
        names = sorted({r for ex in examples for cand in ex.candidates for r in cand.ranks})
        weights = {name: 1.0 for name in names}
        best = self._mean_ndcg(examples, weights)
        start = best
        steps, total = 0, self.config.rounds * len(names) * len(GRID)
        for _ in range(self.config.rounds):
            improved = False
            for name in names:
                for value in GRID:
                    steps += 1
                    if progress:
                        progress("fusion", steps, total, f"tuning weight of {name}")
                    if value == weights[name]:
                        continue
                    trial = dict(weights, **{name: value})
                    if not any(trial.values()):
                        continue
                    score = self._mean_ndcg(examples, trial)
                    if score > best + 1e-9:
                        best, weights, improved = score, trial, True
            if not improved:
                break
        self.weights = weights
        self._fitted = True
        k = self.config.k
        return {f"ndcg@{k}": best, f"ndcg@{k}_equal_weights": start, "examples": len(examples)}

    def rank(self, query: Query, candidates: Sequence[Candidate]) -> list[Candidate]:
        c = self.config.c
        out = []
        for cand in candidates:
            parts = {r: self.weights.get(r, 1.0) / (c + rank) for r, rank in cand.ranks.items()}
            lead = max(parts, key=parts.get) if parts else cand.source
            out.append(cand.led_by(lead, sum(parts.values())))
        out.sort(key=lambda cand: -cand.score)
        return out

    def state(self) -> ModelState:
        return ModelState(meta={"weights": self.weights})

    def load(self, state: ModelState) -> None:
        self.weights = dict(state.meta.get("weights", {}))
        self._fitted = True


@hookimpl
def register_rankers(register):
    register(FusionRanker)
