"""Recall features: what the recallers said about each candidate, as numbers (pure numpy).

For every recaller the ranker was trained with: was the item recalled by it, 1/rank,
log rank and the recaller's score scaled within the request (min-max), so a score scale
that differs between recallers or requests does not matter. Then evidence about the item
and the shopper that no single recaller sees whole: how many recallers agree, the merged
position, popularity (all-time and the last 7 days before the request), the item's age
and the time since anyone last touched it ("new item"), and whether the item's category
is one the shopper keeps coming back to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

DAY = 86400.0
PER_RECALLER = ("present", "inv_rank", "log_rank", "score")
GLOBAL = ("agree", "position", "log_pop", "log_trend", "log_age", "log_idle", "new_item",
          "category_share", "log_history")


def feature_names(recallers: Sequence[str]) -> list[str]:
    return [f"{r}.{f}" for r in recallers for f in PER_RECALLER] + list(GLOBAL)


@dataclass
class ItemStats:
    """Per-item evidence at some moment: distinct users, events in the last week, the first
    and last event time, and the category."""

    index: Mapping[str, int]
    users: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    category: list[str]
    week: np.ndarray = field(default_factory=lambda: np.zeros(0))
    now: float = 0.0

    @property
    def max_log_pop(self) -> float:
        return float(np.log1p(self.users.max())) if len(self.users) else 1.0

    @classmethod
    def from_dataset(cls, data) -> "ItemStats":
        n = data.n_items
        pairs = np.unique(np.stack([data.items.astype(np.int64), data.users.astype(np.int64)]), axis=1) \
            if data.n_events else np.zeros((2, 0), np.int64)
        users = np.bincount(pairs[0], minlength=n).astype(np.float64)
        first = np.full(n, np.nan)
        last = np.full(n, np.nan)
        if data.n_events:
            first_rev = np.full(n, np.inf)
            np.minimum.at(first_rev, data.items, data.ts)
            last_rev = np.full(n, -np.inf)
            np.maximum.at(last_rev, data.items, data.ts)
            first = np.where(np.isfinite(first_rev), first_rev, np.nan)
            last = np.where(np.isfinite(last_rev), last_rev, np.nan)
        now = data.now
        week = np.bincount(data.items[data.ts > now - 7 * DAY], minlength=n).astype(np.float64)
        cats = list(data.categories) if data.categories is not None else [""] * n
        return cls(data.item_index, users, first, last, [str(c) for c in cats], week, now)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple], now: float) -> "ItemStats":
        """rows: (item_id, distinct users, first ts, last ts, events in the last week, category)."""
        index = {r[0]: i for i, r in enumerate(rows)}
        arr = lambda j: np.array([np.nan if r[j] is None else float(r[j]) for r in rows])  # noqa: E731
        return cls(index, arr(1), arr(2), arr(3), [r[5] or "" for r in rows], arr(4), now)


def _log_days(seconds: float) -> float:
    return math.log1p(max(seconds, 0.0) / DAY) / 8.0


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
        scores = [c.scores.get(name) for c in candidates]
        present = [s is not None for s in scores]
        vals = np.array([s for s in scores if s is not None], dtype=np.float64)
        lo, hi = (vals.min(), vals.max()) if len(vals) else (0.0, 0.0)
        span = hi - lo if hi > lo else 1.0
        base = j * len(PER_RECALLER)
        for i, c in enumerate(candidates):
            if not present[i]:
                continue
            rank = c.ranks.get(name, 1)
            out[i, base] = 1.0
            out[i, base + 1] = 1.0 / rank
            out[i, base + 2] = math.log1p(rank) / 6.0
            out[i, base + 3] = (scores[i] - lo) / span if hi > lo else 1.0
    g = r_count * len(PER_RECALLER)
    cats: dict[str, int] = {}
    recent = list(history_items)[:20]
    for item in recent:
        k = stats.index.get(item)
        if k is not None and stats.category[k]:
            cats[stats.category[k]] = cats.get(stats.category[k], 0) + 1
    max_log_pop = stats.max_log_pop or 1.0
    log_history = math.log1p(len(history_items)) / 6.0
    for i, c in enumerate(candidates):
        out[i, g] = sum(1 for r in recallers if r in c.ranks) / max(r_count, 1)
        out[i, g + 1] = i / max(n, 1)
        k = stats.index.get(c.item_id)
        if k is None or not np.isfinite(stats.first_ts[k]) or stats.first_ts[k] > now:
            out[i, g + 6] = 1.0  # nobody has touched it yet: a new item
        else:
            out[i, g + 2] = math.log1p(stats.users[k]) / max_log_pop
            out[i, g + 3] = math.log1p(stats.week[k]) / max_log_pop if len(stats.week) else 0.0
            out[i, g + 4] = _log_days(now - stats.first_ts[k])
            out[i, g + 5] = _log_days(now - stats.last_ts[k])
        if k is not None and recent and stats.category[k]:
            out[i, g + 7] = cats.get(stats.category[k], 0) / len(recent)
        out[i, g + 8] = log_history
    return out
