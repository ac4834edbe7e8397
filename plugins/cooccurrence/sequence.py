"""`sequence`: what shoppers went on to next after the items this shopper met last.

Co-occurrence is symmetric and spans a long window ("bought together"); this counts
directed steps: item b follows item a when b is one of the next `window` distinct items a
shopper met after a, weighted 1/distance. At request time the shopper's few most recent
items, newest weighted most, vote for what tends to come after them. Counts are refreshed
at `train` (not incremental: the shopper's latest items are read at request time, so a
new step is used as an anchor at once)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from engine import Dataset, ModelState, Query, Recaller, banned_items, mention, recent_anchors, top_n

from ._kernels import blocked_parts, distinct_interactions, joined_csr, padded, positions_by_item


class SequenceConfig(BaseModel):
    window: int = Field(5, ge=1, description="an item counts as following the previous this many distinct items")
    history: int = Field(5, ge=1, description="most recent distinct items used as anchors at request time")
    decay: float = Field(0.6, gt=0, le=1, description="weight factor per step back in the history")
    shrinkage: float = Field(5.0, ge=0, description="pseudo-count that damps anchors with few followers")


class SequenceRecaller(Recaller):
    name = "sequence"
    description = "What shoppers went on to next after the same recent items (directed steps)"
    Config = SequenceConfig
    default_quota = 100

    def fit(self, data: Dataset, progress=None) -> None:
        cfg = self.config
        self.drop_fit()  # the last fit's steps would sit beside the new ones being counted
        users, items, _ = distinct_interactions(data.users, data.items,
                                                np.ones(data.n_events), data.n_items)
        n = data.n_items
        out_degree, per_row = np.zeros(n), np.zeros(n, np.int64)
        for d in range(1, cfg.window + 1):
            same = users[d:] == users[:-d]
            per_row += np.bincount(items[:-d][same], minlength=n)

        parts = _step_blocks(users, items, n, cfg.window, per_row, out_degree)
        del users, items  # with the padded copies (gone with `_step_blocks`), before the join
        indptr, indices, (weights,) = joined_csr(*parts)
        known = data.known if data.known is not None else np.ones(data.n_items, bool)
        self._set(data.item_ids, known, indptr, indices, weights, out_degree)
        if progress:
            progress("sequence", 1, 1, f"{len(indices):,} steps between items")

    def drop_fit(self) -> None:
        self.indptr = self.indices = self.weights = None
        self._fitted = False

    def _set(self, item_ids, known, indptr, indices, weights, out_degree) -> None:
        self.item_ids = np.asarray(item_ids, dtype=str)
        self.ids = self.item_ids.tolist()
        self.index = {item: i for i, item in enumerate(self.ids)}
        self.known = np.asarray(known, dtype=bool)
        self.indptr, self.indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int32)
        self.weights = np.asarray(weights, np.float32)
        self.out_degree = np.asarray(out_degree, np.float64)
        self._fitted = True

    def state(self) -> ModelState:
        return ModelState(arrays={"item_ids": self.item_ids, "known": self.known,
                                  "indptr": self.indptr, "indices": self.indices,
                                  "weights": self.weights, "out_degree": self.out_degree})

    def load(self, state: ModelState) -> None:
        a = state.arrays
        self._set(a["item_ids"], a["known"], a["indptr"], a["indices"], a["weights"], a["out_degree"])

    def _anchors(self, q: Query) -> list[tuple[int, float]]:
        """(item index, weight) of the query's recent items: recency only, not the kind."""
        index = self.index
        return [(index[a.item_id], a.weight)
                for a in recent_anchors(q, limit=self.config.history, decay=self.config.decay)
                if a.item_id in index]

    def recall(self, queries: Sequence[Query], n: int):
        out = []
        size = len(self.ids)
        for q in queries:
            anchors = self._anchors(q)
            score, best = np.zeros(size), np.zeros(size)
            best_anchor = np.full(size, -1, dtype=np.int64)
            for a, wa in anchors:
                lo, hi = self.indptr[a], self.indptr[a + 1]
                idx = self.indices[lo:hi]
                contrib = wa * self.weights[lo:hi] / (self.out_degree[a] + self.config.shrinkage)
                score[idx] += contrib
                better = contrib > best[idx]
                best[idx[better]] = contrib[better]
                best_anchor[idx[better]] = a
            banned = banned_items(self.known & (score > 0), self.index, q.exclude, [a for a, _ in anchors])
            top = top_n(score, n, banned)
            ids, anchor = self.ids, best_anchor[top]
            out.append(self.recalled([ids[i] for i in top.tolist()], score[top],
                                     lambda j, anchor=anchor: f"often chosen next after {mention(ids[anchor[j]])}"))
        return out


def _step_blocks(users, items, n, w, per_row, out_degree):
    """The steps' blocks (`blocked_parts`): from each item to the `w` items that followed it
    in a shopper's sequence, weighted 1/distance; fills `out_degree` on the way."""
    positions = positions_by_item(items, n)
    users_p, items_p = padded(users, w, -1, np.int32), padded(items, w, 0, np.int32)

    def entries(lo, hi):  # the steps from items lo..hi-1, nearest first
        p = positions(lo, hi) + w  # only the block's own interactions, in time order
        up, ip = users_p[p], items_p[p]
        rows, cols, vals = [], [], []
        for d in range(1, w + 1):
            same = np.flatnonzero(users_p[p + d] == up)
            rows.append(ip[same])
            cols.append(items_p[p[same] + d])
            vals.append(np.full(len(same), 1.0 / d))
        r, v = np.concatenate(rows), np.concatenate(vals)
        out_degree[lo:hi] = np.bincount(r - lo, weights=v, minlength=hi - lo)
        return r, np.concatenate(cols), [v]

    return blocked_parts(entries, per_row, 1, n)
