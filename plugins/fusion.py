"""`fusion`: weighted reciprocal-rank fusion of the recallers' lists.

score(item) = Σ_r w_r / (c + rank_r(item)). The weights are tuned on the validation
examples by coordinate ascent on NDCG@10, so a recaller that helps gets a say and one
that only adds noise is turned down."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pydantic import BaseModel, Field

from engine import (
    Candidate, CandidateSet, ModelState, Query, Ranker, RankingExample, hookimpl, ndcg_at, recallers_of,
)

GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
LONE_GRID = (0.0, 0.25, 0.5, 1.0)


class FusionConfig(BaseModel):
    c: float = Field(20.0, gt=0, description="rank offset of reciprocal-rank fusion")
    rounds: int = Field(3, ge=0, description="coordinate-ascent rounds over the weights (0: all 1)")
    k: int = Field(10, ge=1, description="cut-off of the NDCG the weights are tuned for")


def _example_arrays(examples: Sequence[RankingExample], names: list[str]):
    """All candidates of all examples as one matrix of ranks (inf: not recalled by r), the
    example each belongs to and its place in that example's list. Filled an example at a
    time: a Python list per candidate first took 0.5 GB on the demo shop's 9,000 moments."""
    sizes = np.array([len(ex.candidates) for ex in examples], dtype=np.int64)
    total = int(sizes.sum())
    ranks_arr = np.full((total, len(names)), np.inf, order="F")  # read a recaller (column) at a time
    relevant = np.zeros(total, bool)
    at = 0
    for ex in examples:
        cands = CandidateSet.of(ex.candidates)
        if len(cands):
            for j, name in enumerate(names):
                ranks = cands.column(name)[1]
                ranks_arr[at:at + len(cands), j] = np.where(ranks > 0, ranks, np.inf)
            relevant[at:at + len(cands)] = [item in ex.relevant for item in cands.items]
        at += len(cands)
    owner_arr = np.repeat(np.arange(len(examples), dtype=np.int64), sizes)
    place = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    answered = np.zeros((len(examples), len(names)), bool)   # recaller gave this query anything
    np.logical_or.at(answered, owner_arr, np.isfinite(ranks_arr))
    return ranks_arr, relevant, owner_arr, answered[owner_arr], place


class FusionRanker(Ranker):
    name = "fusion"
    description = "Weighted reciprocal-rank fusion, weights tuned on validation NDCG"
    Config = FusionConfig
    priority = 0

    def __init__(self, config=None):
        super().__init__(config)
        self.weights: dict[str, float] = {}
        self.lone = 0.0
        self._cached = None
        self._table = None

    def _scores(self, ranks: np.ndarray, active: np.ndarray, weights: np.ndarray, lone: float) -> np.ndarray:
        """Σ over recallers that ranked the item of w/(c + rank), plus `lone` times what the
        recallers that answered the query but did not rank the item would have given at the
        item's best rank: lone = 0 is plain RRF (consensus wins); lone = 1 trusts a single
        recaller as much as agreement (a brand-new item only `content` can know)."""
        missing, best = self._parts(ranks, active)
        c = self.config.c
        score = np.zeros(len(ranks))
        for j, w in enumerate(np.asarray(weights, dtype=np.float64).tolist()):
            if w:  # a zero weight adds 0.0 everywhere: skipped, the sum is the same bit for bit
                score += w / (c + ranks[:, j])  # column by column (absent: w / inf = 0), few temporaries
        if lone:
            extra = np.zeros(len(ranks))
            for j, w in enumerate(np.asarray(weights, dtype=np.float64).tolist()):
                if w:
                    extra += missing[:, j] * w / best
            score = score + lone * extra
        return score

    def _parts(self, ranks: np.ndarray, active: np.ndarray):
        """What `_scores` needs of a rank matrix, worked out once per matrix (the tuning
        scores the same candidates ~150 times): the recallers that answered the query but
        not the item, and c + the item's best rank."""
        key = (id(ranks), id(active))
        if self._cached is None or self._cached[0] != key:
            present = np.isfinite(ranks)
            missing = np.asfortranarray(active & ~present)
            best = self.config.c + ranks.min(axis=1) if ranks.shape[1] else np.full(len(ranks), np.inf)
            self._cached = (key, (missing, best), (ranks, active))  # keeps the ids alive
        return self._cached[1]

    def _layout(self, owner: np.ndarray, place: np.ndarray, relevant: np.ndarray):
        """Where each candidate sits in the (examples x longest list) table (flat index) and
        which places hold a relevant item: the same at each of the ~150 scorings of a fit."""
        if self._table is None or self._table[0] is not owner:
            width = int(place.max()) + 1
            at = owner * width + place
            hits = np.zeros((self._n, width), bool)
            hits.reshape(-1)[at] = relevant
            self._table = (owner, (width, at, hits))
        return self._table[1]

    def _mean_ndcg(self, arrays, weights: np.ndarray, lone: float = 0.0) -> float:
        """Mean NDCG@k of the examples ordered by the fused score (ties: recall order). The
        scores go into one (examples x longest list) matrix, padded with -inf, and a stable
        sort of its rows finds each top k: 9x faster than sorting all candidates by
        (example, score), which made `fusion` a minute and a half of the demo's training."""
        ranks, relevant, owner, active, place = arrays
        k = self.config.k
        if not self._n or not len(owner):
            return 0.0
        score = self._scores(ranks, active, weights, lone)
        width, at, hits = self._layout(owner, place, relevant)
        table = np.full((self._n, width), -np.inf)
        table.reshape(-1)[at] = score
        k = min(k, width)
        # each row's k-th best score; only the entries at or above it (ties included) are
        # sorted, by (row, score, place): the top k of a stable sort of every row
        kth = np.partition(table, width - k, axis=1)[:, width - k]
        rows, cols = np.nonzero(table >= kth[:, None])
        order = np.lexsort((cols, -table[rows, cols], rows))
        rows, cols = rows[order], cols[order]
        pos = np.arange(len(rows)) - np.searchsorted(rows, rows)  # place within its row
        top = pos < k
        ranked = np.zeros((self._n, k), bool)  # is each row's item at each rank relevant
        ranked[rows[top], pos[top]] = hits[rows[top], cols[top]]
        return float(ndcg_at(ranked, self._relevant, self.config.k).mean())

    def fit(self, examples, data, progress=None) -> dict[str, float]:
        examples = [ex for ex in examples if ex.relevant]
        names = recallers_of(ex.candidates for ex in examples)
        arrays = _example_arrays(examples, names)
        k = self.config.k
        self._n = len(examples)
        self._relevant = np.array([len(ex.relevant) for ex in examples], dtype=np.int64)
        w = np.ones(len(names))
        best = start = self._mean_ndcg(arrays, w)
        steps, total = 0, self.config.rounds * len(names) * len(GRID)
        for _ in range(self.config.rounds):
            improved = False
            for j, name in enumerate(names):
                for value in GRID:
                    steps += 1
                    if progress:
                        progress("fusion", steps, total, f"tuning the weight of {name}")
                    if value == w[j]:
                        continue
                    trial = w.copy()
                    trial[j] = value
                    if not trial.any():
                        continue
                    score = self._mean_ndcg(arrays, trial)
                    if score > best + 1e-9:
                        best, w, improved = score, trial, True
            if not improved:
                break
        lone = 0.0
        for value in LONE_GRID[1:]:
            score = self._mean_ndcg(arrays, w, value)
            if score > best + 1e-9:
                best, lone = score, value
        self.weights = {name: float(v) for name, v in zip(names, w)}
        self.lone = lone
        self._fitted = True
        self._cached = self._table = None
        return {f"ndcg@{k}": best, f"ndcg@{k}_equal_weights": start, "examples": len(examples),
                "weights": dict(self.weights), "lone": lone}

    def rank(self, query: Query, candidates: Sequence[Candidate]) -> CandidateSet:
        cands = CandidateSet.of(candidates)
        if not len(cands):
            return cands
        c, ranks = self.config.c, cands.ranks
        present = ranks > 0
        answered = present.any(axis=0)
        weights = np.array([self.weights.get(r, 1.0) if answered[j] else 0.0
                            for j, r in enumerate(cands.names)])
        if any(w > 0 and name not in cands.names for name, w in self.weights.items()):
            # a request for some recallers only (`--recallers als,popular`): a weight tuned
            # to 0 meant "adds nothing beside the others", and some of those are not asked;
            # each asked recaller counts at least as much as the least of the others
            positive = weights[weights > 0]
            weights = np.where(answered & (weights == 0), positive.min() if positive.size else 1.0, weights)
        if not weights.any():  # only recallers tuned to 0 were asked: keep their order
            weights = answered.astype(np.float64)
        parts = np.where(present, weights / (c + np.where(present, ranks, 0)), 0.0)
        score = np.zeros(len(cands))
        for j in range(parts.shape[1]):  # column by column: the sums of adding in turn
            score += parts[:, j]
        if self.lone:
            best = np.where(present, ranks, np.iinfo(np.int32).max).min(axis=1)
            missing = answered & ~present
            score += self.lone * (missing * weights / (c + best[:, None])).sum(axis=1)
        lead = np.where(present.any(axis=1), np.where(present, parts, -1.0).argmax(axis=1), cands.lead)
        return cands.ranked(score, lead.astype(np.int32))

    def state(self) -> ModelState:
        return ModelState(meta={"weights": self.weights, "lone": self.lone})

    def load(self, state: ModelState) -> None:
        self.weights = dict(state.meta.get("weights", {}))
        self.lone = float(state.meta.get("lone", 0.0))
        self._fitted = True


@hookimpl
def register_rankers(register):
    register(FusionRanker)
