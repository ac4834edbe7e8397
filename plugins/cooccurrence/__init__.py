"""`cooccurrence`: "bought together" and "viewed together" item-to-item recall (and, in
`sequence.py`, `sequence`: what shoppers went on to next).

Counts how often two items are among a shopper's nearby interactions, normalises by item
popularity and shrinks small counts. New events are folded into the counts as they
arrive (`update`), without a retrain."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field

from engine import (
    Dataset, Event, Interaction, ModelState, Query, Recaller, hookimpl, mention, recent_anchors, top_n,
)

from ._kernels import distinct_interactions, joined_csr, pair_blocks, similarity, summed_csr


class CooccurrenceConfig(BaseModel):
    window: int = Field(20, ge=1, description="an interaction pairs with this many previous distinct items of the same user")
    shrinkage: float = Field(5.0, ge=0, description="pseudo-count that damps rare pairs")
    history: int = Field(30, ge=1, description="recent distinct items used as anchors at request time")
    decay: float = Field(0.9, gt=0, le=1, description="weight factor per step back in the history")
    strong_weight: float = Field(4.0, gt=0, description="kind weight from which an interaction counts as 'bought' (cart, purchase, rating)")


class CooccurrenceRecaller(Recaller):
    name = "cooccurrence"
    description = "Items bought or viewed together (item-to-item co-occurrence, incremental)"
    Config = CooccurrenceConfig
    default_quota = 100

    def fit(self, data: Dataset, progress=None) -> None:
        cfg = self.config
        self.drop_fit()
        users, items, strength = distinct_interactions(
            data.users, data.items, data.event_weights().astype(np.float64), data.n_items)
        if progress:
            progress("cooccurrence", 0, 1, "counting pairs")
        degree = np.bincount(items, weights=strength, minlength=data.n_items)
        parts = pair_blocks(users, items, strength, data.n_items, cfg.window, cfg.strong_weight)
        del users, items, strength  # before the join: 0.5 GB at 20M interactions
        indptr, indices, (counts, strong) = joined_csr(*parts)
        strong_kinds = [k for k in data.kind_names if data.kind_weight(k) >= cfg.strong_weight]
        counts_by_kind = {k: int((data.kinds == data.kind_names.index(k)).sum()) for k in strong_kinds}
        phrase = ("liked by the same people as"
                  if counts_by_kind and max(counts_by_kind, key=counts_by_kind.get) == "rating"
                  else "bought together with")
        known = data.known if data.known is not None else np.ones(data.n_items, bool)
        self._set(data.item_ids, known, indptr, indices, counts, strong, degree,
                  dict(data.kind_weights), phrase)
        if progress:
            progress("cooccurrence", 1, 1, f"{len(indices):,} item pairs")

    def drop_fit(self) -> None:
        """Drop the last fit's pairs (before counting again, and when train is done with a
        validation cut's model): at a million shoppers they are 1.4 GB, and the similarity
        matrix made from them for batches as much again."""
        self.indptr = self.indices = self.counts = self.strong = self._similarity = None
        self.delta = {}
        self._fitted = False

    def _set(self, item_ids, known, indptr, indices, counts, strong, degree, kind_weights, phrase) -> None:
        self.item_ids = np.asarray(item_ids, dtype=str)
        self.ids = self.item_ids.tolist()
        self.index = {item: i for i, item in enumerate(self.ids)}
        self.known = np.asarray(known, dtype=bool)
        self.indptr, self.indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int32)
        self.counts, self.strong = np.asarray(counts, np.float32), np.asarray(strong, np.float32)
        self.degree = np.asarray(degree, dtype=np.float64)
        self.kind_weights = dict(kind_weights)
        self.phrase = phrase
        self.delta: dict[int, dict[int, list[float]]] = {}  # a -> b -> [count, strong]
        self._similarity = None  # (anchor x item) similarities for batches, made when first asked
        self._fitted = True

    # -- persistence -------------------------------------------------------------------

    def _compact(self) -> None:
        """Fold the incremental delta into the base arrays."""
        if not self.delta:
            return
        n = len(self.ids)
        rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        d_rows = np.array([a for a, row in self.delta.items() for _ in row], np.int64)
        d_cols = np.array([b for row in self.delta.values() for b in row], np.int64)
        d_vals = np.array([v for row in self.delta.values() for v in row.values()], np.float64)
        indptr, indices, (counts, strong) = summed_csr(
            np.concatenate([rows, d_rows]), np.concatenate([self.indices, d_cols]),
            [np.concatenate([self.counts, d_vals[:, 0]]), np.concatenate([self.strong, d_vals[:, 1]])], n)
        self.indptr, self.indices, self.counts, self.strong = indptr, indices, counts, strong
        self.delta = {}
        self._similarity = None

    def state(self) -> ModelState:
        self._compact()
        return ModelState(
            arrays={"item_ids": self.item_ids, "known": self.known, "degree": self.degree,
                    "indptr": self.indptr, "indices": self.indices, "counts": self.counts,
                    "strong": self.strong},
            meta={"kind_weights": self.kind_weights, "phrase": self.phrase})

    def load(self, state: ModelState) -> None:
        a = state.arrays
        self._set(a["item_ids"], a["known"], a["indptr"], a["indices"], a["counts"], a["strong"],
                  a["degree"], state.meta["kind_weights"], state.meta["phrase"])

    # -- serving -----------------------------------------------------------------------

    def _row(self, a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbours of item a: (indices, weighted counts, strong counts)."""
        if a < len(self.indptr) - 1:
            lo, hi = self.indptr[a], self.indptr[a + 1]
            idx, cnt, strong = self.indices[lo:hi], self.counts[lo:hi], self.strong[lo:hi]
        else:
            idx, cnt, strong = np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        extra = self.delta.get(a)
        if extra:  # counts folded in since the fit: added to the stored row, pair by pair
            pending = np.array(list(extra.values()), dtype=np.float64).reshape(-1, 2)
            both = np.concatenate([idx, np.fromiter(extra, dtype=np.int64, count=len(extra))])
            idx, at = np.unique(both, return_inverse=True)
            cnt = np.bincount(at, np.concatenate([cnt, pending[:, 0]]), len(idx))
            strong = np.bincount(at, np.concatenate([strong, pending[:, 1]]), len(idx))
        return idx, cnt.astype(np.float64), strong

    def _anchors(self, q: Query) -> list[tuple[int, float]]:
        """(item index, weight) of the query's recent items, a purchase of the newest one 1."""
        index = self.index
        return [(index[a.item_id], a.weight)
                for a in recent_anchors(q, self.kind_weights, limit=self.config.history,
                                        decay=self.config.decay, relative=True)
                if a.item_id in index]

    def recall(self, queries: Sequence[Query], n: int):
        anchors = [self._anchors(q) for q in queries]
        # a batch (recommend --all, validation) is one sparse product; a single request
        # sums its anchors' rows unless the similarities are already at hand
        batch = self._batch_scores(anchors) if len(queries) >= 32 or self._similarity is not None else None
        size = len(self.item_ids)
        out = []
        for qi, (q, anc) in enumerate(zip(queries, anchors)):
            if not anc:
                out.append(self.recalled([], []))
                continue
            if batch is not None:
                lo, hi = batch.indptr[qi], batch.indptr[qi + 1]
                cols, vals = batch.indices[lo:hi].astype(np.int64), batch.data[lo:hi]
            else:
                idx, contrib, _, _ = self._entries(anc)
                score = np.bincount(idx, weights=contrib, minlength=size)
                cols = np.flatnonzero(score)
                vals = score[cols]
            banned = [i for i in (self.index.get(item) for item in q.exclude) if i is not None]
            ok = self.known[cols] & (vals > 0) & ~np.isin(cols, banned + [a for a, _ in anc])
            top = top_n(np.where(ok, vals, -np.inf), n)  # ties: the lower item index first
            ids = self.ids
            out.append(self.recalled([ids[i] for i in cols[top].tolist()], vals[top],
                                     self._explainer(cols[top], anc)))
        return out

    def _entries(self, anchors: list[tuple[int, float]]):
        """Every anchor's neighbours at once: (item, contribution, anchor, strong count) per
        pair, in anchor order."""
        rows = [self._row(a) for a, _ in anchors]
        idx = np.concatenate([r[0] for r in rows]).astype(np.int64)
        owner = np.repeat(np.arange(len(anchors)), [len(r[0]) for r in rows])
        at = np.array([a for a, _ in anchors], dtype=np.int64)
        weight = np.array([wa for _, wa in anchors])
        contrib = weight[owner] * similarity(np.concatenate([r[1] for r in rows]),
                                             self.degree[at][owner], self.degree[idx], self.config.shrinkage)
        return idx, contrib, at[owner], np.concatenate([r[2] for r in rows])

    def _batch_scores(self, anchors: list[list[tuple[int, float]]]):
        """Scores of a batch of queries as one sparse product (queries x anchors) @ (anchor
        x item similarity), the similarities computed once after a fit or load; None while
        incremental counts are pending (`update`: until they are folded in, the rows are
        summed per query)."""
        import scipy.sparse as sp

        if self.delta:
            return None
        n_rows, size = len(self.indptr) - 1, len(self.item_ids)
        if self._similarity is None:
            self._similarity = self._similarity_matrix(n_rows, size)
        q_rows = [qi for qi, anc in enumerate(anchors) for a, _ in anc if a < n_rows]
        cols = [a for anc in anchors for a, _ in anc if a < n_rows]
        vals = [w for anc in anchors for a, w in anc if a < n_rows]
        weights = sp.csr_matrix((vals, (q_rows, cols)), shape=(len(anchors), n_rows))
        scores = (weights @ self._similarity).tocsr()
        scores.sort_indices()
        return scores

    def _similarity_matrix(self, n_rows: int, size: int, rows_per_step: int = 4096):
        """(anchor x item) similarities of the stored counts, worked out a block of rows at a
        time and sharing the stored indices: at 130 million pairs, all rows at once took
        five temporary arrays of 1 GB each and a copy of the indices."""
        import scipy.sparse as sp

        sims = np.empty(len(self.indices), np.float64)
        for lo in range(0, n_rows, rows_per_step):
            hi = min(lo + rows_per_step, n_rows)
            a, b = self.indptr[lo], self.indptr[hi]
            rows = np.repeat(np.arange(lo, hi), np.diff(self.indptr[lo:hi + 1]))
            sims[a:b] = similarity(self.counts[a:b].astype(np.float64), self.degree[rows],
                                   self.degree[self.indices[a:b]], self.config.shrinkage)
        # int32 offsets while they fit, as the indices are: scipy then keeps both arrays
        indptr = self.indptr.astype(np.int32) if len(self.indices) < 2**31 - 1 else self.indptr
        return sp.csr_matrix((sims, self.indices, indptr), shape=(n_rows, size), copy=False)

    def _explainer(self, top: np.ndarray, anchors: list[tuple[int, float]]):
        """Reason for the j-th recalled item, made when it is shown: the anchor that
        contributed most to it (the earliest of equals)."""
        ids, phrase = self.ids, self.phrase
        at = np.array([a for a, _ in anchors], dtype=np.int64)
        weight = np.array([w for _, w in anchors])
        sims = self._similarity if not self.delta else None
        found: list = []

        def best(i: int) -> tuple[int, float]:
            """(anchor, strong count) of item i's strongest anchor."""
            if sims is not None and sims.has_sorted_indices:
                # the counts are symmetric: item i's own row holds its pair with every anchor
                lo, hi = sims.indptr[i], sims.indptr[i + 1]
                row = sims.indices[lo:hi]
                pos = np.minimum(np.searchsorted(row, at), max(hi - lo - 1, 0))
                hit = (row[pos] == at) if hi > lo else np.zeros(len(at), bool)
                k = int(np.argmax(np.where(hit, weight * sims.data[lo + pos], 0.0)))
                return int(at[k]), float(self.strong[lo + pos[k]])
            if not found:
                found.extend(self._entries(anchors))
            idx, contrib, anchor, strong = found
            rows = np.flatnonzero(idx == i)
            k = rows[np.argmax(contrib[rows])]
            return int(anchor[k]), float(strong[k])

        def explain(j: int) -> str:
            anchor, strong = best(int(top[j]))
            said = phrase if strong >= 1 else "viewed together with"
            return f"{said} {mention(ids[anchor])}"
        return explain

    # -- incremental learning ----------------------------------------------------------

    def update(self, events: Sequence[Event], histories: Mapping[str, Sequence[Interaction]]) -> bool:
        """Pair each user's new items with their previous `window` distinct items."""
        cfg = self.config
        seqs: dict[str, dict[str, float]] = {}
        changed = False
        for e in sorted(events, key=lambda e: e.ts):
            seq = seqs.get(e.user_id)
            if seq is None:
                seq = seqs[e.user_id] = {}
                for step in histories.get(e.user_id, ()):
                    w = self.kind_weights.get(step.kind, 1.0)
                    seq[step.item_id] = max(seq.get(step.item_id, 0.0), w)
            w = self.kind_weights.get(e.kind, 1.0)
            if e.item_id in seq:
                seq[e.item_id] = max(seq[e.item_id], w)
                continue
            b = self._ensure(e.item_id)
            for item, s in list(seq.items())[-cfg.window:]:
                a = self._ensure(item)
                dc = min(s, w)
                ds = 1.0 if s >= cfg.strong_weight and w >= cfg.strong_weight else 0.0
                for x, y in ((a, b), (b, a)):
                    cell = self.delta.setdefault(x, {}).setdefault(y, [0.0, 0.0])
                    cell[0] += dc
                    cell[1] += ds
            self.degree[b] += w
            seq[e.item_id] = w
            changed = True
        if changed:
            self._similarity = None  # degrees changed: every similarity of b's pairs
        return changed

    def _ensure(self, item_id: str) -> int:
        i = self.index.get(item_id)
        if i is None:
            i = len(self.item_ids)
            self.item_ids = np.append(self.item_ids, item_id)
            self.ids.append(item_id)
            self.known = np.append(self.known, True)
            self.degree = np.append(self.degree, 0.0)
            self.index[item_id] = i
        return i


@hookimpl
def register_recallers(register):
    from .sequence import SequenceRecaller

    register(CooccurrenceRecaller)
    register(SequenceRecaller)
