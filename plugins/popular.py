"""`popular`: what many people want, overall and right now — the fallback for new users.

Score = (1 − trend) · all-time weighted count + trend · time-decayed weighted count (both
scaled to [0, 1]); the decay has a configurable half-life."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from engine import Dataset, ModelState, Query, Recaller, hookimpl

DAY = 86_400.0


class PopularConfig(BaseModel):
    half_life_days: float = Field(7.0, gt=0, description="half-life of the trending signal")
    trend: float = Field(0.5, ge=0, le=1, description="share of the trending signal in the score")
    recent_days: float = Field(7.0, gt=0, description="window named in 'trending' reasons")


class PopularRecaller(Recaller):
    name = "popular"
    description = "Popular and trending items (time-decayed), the cold-start fallback"
    Config = PopularConfig
    default_quota = 50
    similar_items = False

    def fit(self, data: Dataset, progress=None) -> None:
        cfg = self.config
        w = data.event_weights().astype(np.float64)
        age_days = (data.now - data.ts) / DAY
        decayed = w * np.power(0.5, age_days / cfg.half_life_days)
        total = np.bincount(data.items, weights=w, minlength=data.n_items)
        trending = np.bincount(data.items, weights=decayed, minlength=data.n_items)
        score = ((1 - cfg.trend) * total / max(total.max(initial=0), 1e-12)
                 + cfg.trend * trending / max(trending.max(initial=0), 1e-12))
        pairs = np.unique(np.stack([data.users.astype(np.int64), data.items]), axis=1) \
            if data.n_events else np.zeros((2, 0), np.int64)
        people = np.bincount(pairs[1], minlength=data.n_items)
        recent = data.ts >= data.now - cfg.recent_days * DAY
        rpairs = np.unique(np.stack([data.users[recent].astype(np.int64), data.items[recent]]), axis=1) \
            if recent.any() else np.zeros((2, 0), np.int64)
        recent_people = np.bincount(rpairs[1], minlength=data.n_items)
        known = data.known if data.known is not None else np.ones(data.n_items, bool)
        keep = (score > 0) & known
        order = np.argsort(-score[keep], kind="stable")
        idx = np.flatnonzero(keep)[order]
        cats = data.catalogue.categories
        self._set(data.item_ids[idx], score[idx], people[idx], recent_people[idx], cats[idx])

    def _set(self, item_ids, scores, people, recent, categories) -> None:
        self.item_ids = np.asarray(item_ids, dtype=str)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.people = np.asarray(people, dtype=np.int64)
        self.recent = np.asarray(recent, dtype=np.int64)
        self.categories = np.asarray(categories, dtype=str)
        self._ids = self.item_ids.tolist()
        self._fitted = True

    def state(self) -> ModelState:
        return ModelState(arrays={"item_ids": self.item_ids, "scores": self.scores,
                                  "people": self.people, "recent": self.recent,
                                  "categories": self.categories})

    def load(self, state: ModelState) -> None:
        a = state.arrays
        self._set(a["item_ids"], a["scores"], a["people"], a["recent"], a["categories"])

    def _reason(self, i: int) -> str:
        days = int(self.config.recent_days)
        if self.recent[i] * 4 >= self.people[i] and self.recent[i] >= 3:
            return f"trending: {self.recent[i]} people in the last {days} days"
        n = self.people[i]
        return f"popular with {n} {'person' if n == 1 else 'people'}"

    def recall(self, queries: Sequence[Query], n: int):
        out = []
        for q in queries:
            picked = []
            for i, item in enumerate(self._ids):
                if item in q.exclude or (q.category and self.categories[i] != q.category):
                    continue
                picked.append(i)
                if len(picked) >= n:
                    break
            out.append(self.recalled([self._ids[i] for i in picked], self.scores[picked],
                                     lambda j, picked=picked: self._reason(picked[j])))
        return out


@hookimpl
def register_recallers(register):
    register(PopularRecaller)
