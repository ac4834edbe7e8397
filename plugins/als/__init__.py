"""`als`: collaborative filtering on implicit feedback (implicit's ALS).

Events become confidences: each kind has a weight (purchase > cart > view), weights of a
user-item pair add up, and confidence = 1 + alpha * log1p(weight). Users are folded in at
request time from their current history (one exact least-squares step), so new events and
new users count at once without retraining."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from engine import (
    Dataset, ModelState, Query, Recaller, banned_items, hookimpl, kind_verb, mention, top_n,
)

from ._kernels import confidence, fold_in


class AlsConfig(BaseModel):
    factors: int = Field(64, ge=2, description="latent dimensions")
    regularization: float = Field(2.0, ge=0, description="L2 penalty λ")
    alpha: float = Field(0.5, gt=0, description="confidence scale: 1 + alpha*log1p(weight)")
    iterations: int = Field(15, ge=1, description="ALS sweeps")
    history: int = Field(200, ge=1, description="most recent events used to fold a user in")
    seed: int = Field(42, description="random seed for the initial factors")
    threads: int = Field(1, ge=0, description="BLAS/implicit threads (0: all cores)")


class AlsRecaller(Recaller):
    name = "als"
    description = "Collaborative filtering: implicit-feedback matrix factorisation (ALS)"
    Config = AlsConfig
    default_quota = 200

    def fit(self, data: Dataset, progress=None) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        cfg = self.config
        m = data.matrix()
        m.data = confidence(m.data, cfg.alpha).astype(np.float32)

        def step(iteration, seconds, loss):
            if progress:
                progress("als", iteration + 1, cfg.iterations, f"ALS sweep {iteration + 1}")

        with threadpool_limits(limits=1, user_api="blas"):  # implicit parallelises itself
            model = AlternatingLeastSquares(
                factors=cfg.factors, regularization=cfg.regularization, alpha=1.0,
                iterations=cfg.iterations, random_state=cfg.seed, num_threads=cfg.threads)
            model.fit(m, show_progress=False, callback=step)
        self._set(np.asarray(model.item_factors, dtype=np.float32), data.item_ids,
                  data.known if data.known is not None else np.ones(data.n_items, bool),
                  dict(data.kind_weights))

    def _set(self, factors, item_ids, known, kind_weights) -> None:
        self.item_factors = factors
        self.item_ids = np.asarray(item_ids, dtype=str)
        self.known = np.asarray(known, dtype=bool)
        self.kind_weights = dict(kind_weights)
        self.ids = self.item_ids.tolist()
        self.index = {item: i for i, item in enumerate(self.ids)}
        self.gram = (factors.astype(np.float64).T @ factors.astype(np.float64))
        norms = np.linalg.norm(factors, axis=1)
        self.unit = factors / np.maximum(norms, 1e-9)[:, None]
        # an item nobody interacted with keeps a zero factor: ALS has nothing to say about it
        self.recallable = self.known & (norms > 0)
        self._fitted = True

    def state(self) -> ModelState:
        return ModelState(arrays={"item_factors": self.item_factors, "item_ids": self.item_ids,
                                  "known": self.known},
                          meta={"kind_weights": self.kind_weights})

    def load(self, state: ModelState) -> None:
        a = state.arrays
        self._set(a["item_factors"], a["item_ids"], a["known"], state.meta["kind_weights"])

    def _rows(self, queries: Sequence[Query]):
        cfg = self.config
        rows = []
        for q in queries:
            weights: dict[int, float] = {}
            for step in q.history[-cfg.history:]:
                i = self.index.get(step.item_id)
                if i is not None:
                    weights[i] = weights.get(i, 0.0) + self.kind_weights.get(step.kind, 1.0)
            items = np.fromiter(weights, dtype=np.int64, count=len(weights))
            w = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
            rows.append((items, confidence(w, cfg.alpha)))
        return rows

    def recall(self, queries: Sequence[Query], n: int):
        rows = self._rows(queries)
        # "similar to this item": fold in a user who knows only that item
        rows = [((np.array([self.index[q.item_id]]), confidence(np.array([1.0]), self.config.alpha))
                 if q.item_id is not None and not q.history and q.item_id in self.index else row)
                for q, row in zip(queries, rows)]
        users = fold_in(self.item_factors, self.gram, rows, self.config.regularization)
        scores = users @ self.item_factors.T
        out = []
        for q, (items, conf), s in zip(queries, rows, scores):
            if len(items) == 0:
                out.append([])
                continue
            banned = banned_items(self.recallable, self.index,
                                  [*q.exclude, *([q.item_id] if q.item_id is not None else [])])
            best = top_n(s, n, banned)
            out.append(self.recalled([self.ids[i] for i in best.tolist()], s[best],
                                     self._explainer(q, items, conf, best)))
        return out

    def _explainer(self, q: Query, items: np.ndarray, conf: np.ndarray, best: np.ndarray):
        """Reason for the j-th recalled item, made when it is shown: the history item whose
        factor contributes most to it (worked out for all of them on the first call)."""
        anchors: list[int] = []
        ids = self.ids

        def explain(j: int) -> str:
            if not anchors:
                contrib = (self.unit[items] @ self.unit[best].T) * conf[:, None]  # (history, best)
                anchors.extend(items[np.argmax(contrib, axis=0)].tolist())
            anchor_id = ids[anchors[j]]
            if q.item_id is not None:
                return f"liked by the same shoppers as {mention(anchor_id)}"
            kind = next((step.kind for step in reversed(q.history) if step.item_id == anchor_id), "")
            return f"shoppers who {kind_verb(kind, 'shoppers', 'chose')} {mention(anchor_id)} also chose this"
        return explain


@hookimpl
def register_recallers(register):
    register(AlsRecaller)
