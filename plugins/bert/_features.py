"""Recall features: what the recallers said about each candidate, as numbers (pure numpy).

For every recaller the ranker was trained with: was the item recalled by it, 1/rank,
log rank and the recaller's score scaled within the request (min-max), so a score scale
that differs between recallers or requests does not matter. Then evidence about the item
and the shopper that no single recaller sees whole: how many recallers agree, the merged
position, popularity as of the request's moment (shoppers so far, new shoppers in the last
7 and 30 days), the item's age and the time since a shopper last arrived ("new item" when
none has yet), whether the item's category is one the shopper keeps coming back to, and
how the item's popularity and age compare with those of the shopper's recent items (some
shoppers follow the crowd or the new arrivals, others do not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

DAY = 86400.0
POP_SCALE = 10.0  # log1p of shopper counts divided by this: about 1 at 22,000 shoppers
PER_RECALLER = ("present", "inv_rank", "log_rank", "score")
GLOBAL = ("agree", "position", "log_pop", "log_trend", "log_month", "log_age", "log_idle",
          "new_item", "category_share", "log_history", "taste_pop", "taste_age", "pop_gap", "age_gap")


def feature_names(recallers: Sequence[str]) -> list[str]:
    return [f"{r}.{f}" for r in recallers for f in PER_RECALLER] + list(GLOBAL)


@dataclass
class ItemStats:
    """When each item met each of its shoppers (the first event of every item–user pair),
    so that popularity, trend and recency can be read as of any moment: a training moment
    cut months before the data ends sees the item as it was then, not as it is now."""

    index: Mapping[str, int]
    category: list[str]
    ptr: np.ndarray     # (n_items + 1,) item k's times are times[ptr[k]:ptr[k + 1]]
    times: np.ndarray   # float64, ascending within each item
    now: float = 0.0    # the newest event counted

    def __post_init__(self) -> None:
        n = len(self.ptr) - 1
        counts = np.diff(self.ptr)
        self._base = float(self.times.min()) if len(self.times) else 0.0
        self._span = (float(self.times.max()) - self._base if len(self.times) else 0.0) + 2 * DAY
        owner = np.repeat(np.arange(max(n, 0)), counts)
        self._keys = owner * self._span + (self.times - self._base)  # ascending: one search for all

    @classmethod
    def empty(cls) -> "ItemStats":
        return cls({}, [], np.zeros(1, np.int64), np.zeros(0))

    @classmethod
    def from_dataset(cls, data) -> "ItemStats":
        n = data.n_items
        if data.n_events:
            order = np.lexsort((data.ts, data.users, data.items))
            items, users, ts = data.items[order], data.users[order], data.ts[order]
            first = np.ones(len(order), bool)
            first[1:] = (items[1:] != items[:-1]) | (users[1:] != users[:-1])
            items, ts = items[first], ts[first]
            by_time = np.lexsort((ts, items))
            items, ts = items[by_time], ts[by_time]
        else:
            items, ts = np.zeros(0, np.int64), np.zeros(0)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(items, minlength=n))]).astype(np.int64)
        cats = list(data.categories) if data.categories is not None else [""] * n
        return cls(data.item_index, [str(c) for c in cats], ptr, ts.astype(np.float64), data.now)

    def _count(self, k: np.ndarray, t: float) -> np.ndarray:
        """Shoppers of items k whose first event was at or before t."""
        rel = min(max(t - self._base, -DAY), self._span - DAY)
        return np.searchsorted(self._keys, k * self._span + rel, side="right") - self.ptr[k]

    def at(self, k: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        """For items k as of `now`: shoppers so far, new shoppers in the last 7 and 30 days,
        first and latest time a shopper arrived (nan when none yet)."""
        users = self._count(k, now)
        week = users - self._count(k, now - 7 * DAY)
        month = users - self._count(k, now - 30 * DAY)
        first = np.full(len(k), np.nan)
        last = np.full(len(k), np.nan)
        some = users > 0
        first[some] = self.times[self.ptr[k[some]]]
        last[some] = self.times[self.ptr[k[some]] + users[some] - 1]
        return users, week, month, first, last


def candidate_features(candidates: Sequence, history_items: Sequence[str], now: float | None,
                       recallers: Sequence[str], stats: ItemStats) -> np.ndarray:
    """Feature matrix (len(candidates), len(feature_names(recallers))), float32."""
    n, r_count = len(candidates), len(recallers)
    out = np.zeros((n, r_count * len(PER_RECALLER) + len(GLOBAL)), dtype=np.float32)
    if n == 0:
        return out
    # "now" is never later than the newest event known: a shop whose data stopped last year
    # looks to the model as it did when the training moments were cut
    now = stats.now if now is None else (min(now, stats.now) if stats.now else now)
    for j, name in enumerate(recallers):
        scores = np.array([c.scores.get(name, np.nan) for c in candidates], dtype=np.float64)
        present = ~np.isnan(scores)
        if not present.any():
            continue
        ranks = np.array([c.ranks.get(name, 1) for c in candidates], dtype=np.float64)[present]
        vals = scores[present]
        lo, hi = vals.min(), vals.max()
        base = j * len(PER_RECALLER)
        out[present, base] = 1.0
        out[present, base + 1] = 1.0 / ranks
        out[present, base + 2] = np.log1p(ranks) / 6.0
        out[present, base + 3] = (vals - lo) / (hi - lo) if hi > lo else 1.0
    g = r_count * len(PER_RECALLER)
    cats: dict[str, int] = {}
    recent = list(history_items)[:20]
    for item in recent:
        k = stats.index.get(item)
        if k is not None and stats.category[k]:
            cats[stats.category[k]] = cats.get(stats.category[k], 0) + 1
    log_history = math.log1p(len(history_items)) / 6.0
    # the shopper's taste for popular and for new things: their recent items as of now
    past = np.array([k for k in (stats.index.get(i, -1) for i in recent) if k >= 0], dtype=np.int64)
    taste_pop = taste_age = 0.0
    if len(past):
        p_users, _, _, p_first, _ = stats.at(past, now)
        seen = p_users > 0
        if seen.any():
            taste_pop = float(np.mean(np.log1p(p_users[seen]))) / POP_SCALE
            taste_age = float(np.mean(np.log1p(np.maximum(now - p_first[seen], 0) / DAY))) / 8.0
    index = np.array([stats.index.get(c.item_id, -1) for c in candidates])
    known = np.flatnonzero(index >= 0)
    users = np.zeros(n)
    week, month, first, last = users.copy(), users.copy(), np.full(n, np.nan), np.full(n, np.nan)
    if len(known):
        users[known], week[known], month[known], first[known], last[known] = stats.at(index[known], now)
    touched = users > 0
    scale = POP_SCALE
    out[:, g] = [sum(1 for r in recallers if r in c.ranks) / max(r_count, 1) for c in candidates]
    out[:, g + 1] = np.arange(n) / max(n, 1)
    out[:, g + 2] = np.log1p(users) / scale
    out[:, g + 3] = np.log1p(week) / scale
    out[:, g + 4] = np.log1p(month) / scale
    out[touched, g + 5] = np.log1p(np.maximum(now - first[touched], 0) / DAY) / 8.0
    out[touched, g + 6] = np.log1p(np.maximum(now - last[touched], 0) / DAY) / 8.0
    out[~touched, g + 7] = 1.0  # nobody has touched it yet: a new item
    if recent:
        out[:, g + 8] = [cats.get(stats.category[k], 0) / len(recent) if k >= 0 and stats.category[k]
                         else 0.0 for k in index]
    out[:, g + 9] = log_history
    if taste_pop or taste_age:
        out[:, g + 10] = taste_pop
        out[:, g + 11] = taste_age
        out[:, g + 12] = np.abs(out[:, g + 2] - taste_pop)
        out[touched, g + 13] = np.abs(out[touched, g + 5] - taste_age)
    return out
