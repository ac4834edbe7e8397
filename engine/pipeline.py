"""The request path: recall (per-recaller quotas) → merge → filters → ranker → re-rank
(category diversity, new-arrival slots) → top N."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .candidates import CandidateSet, Recalled, interleave, item_ids, merge
from .components import Ranker, Recaller
from .types import Candidate, Query

__all__ = ["Pipeline", "merge", "interleave", "one_blas_thread"]


_blas = None


def one_blas_thread():
    """Requests multiply small matrices: a second BLAS thread only spins, and on a busy
    machine it made `recommend --all` 40% slower (46 vs 70 users/s on the demo shop). The
    controller is made once (threadpoolctl looks the libraries up: 1 ms), after the
    components have loaded theirs."""
    global _blas
    from threadpoolctl import ThreadpoolController

    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


@dataclass
class Pipeline:
    """Recallers with their quotas, an optional ranker, and the catalogue filters.

    `available`: the items that may be shown (known and in stock); None means no stock
    filter (evaluation ranks over the whole catalogue). `categories` maps items to their
    category for requests that ask for one and for the diversity re-rank.

    After the ranker: `diversity` > 0 trades rank for variety (each item's rank-based
    relevance minus `diversity` times the number of items of its category already shown);
    `new_slots` reserves up to that many places, from position `new_position` on (0: the
    last places of lists of 5 or more), for
    `new_items` (products nobody has interacted with yet) that some recaller proposed but
    the ranker placed lower — rankers learn from past behaviour, which new products lack."""

    recallers: dict[str, Recaller]
    quotas: dict[str, int]
    ranker: Ranker | None = None
    available: set[str] | None = None
    categories: Mapping[str, str] = field(default_factory=dict)
    diversity: float = 0.0
    new_items: frozenset[str] | set[str] = frozenset()
    new_slots: int = 0
    new_position: int = 0

    def recall(self, queries: Sequence[Query]) -> list[dict[str, Recalled]]:
        per_recaller = {name: r.recall(queries, self.quotas.get(name, 100))
                        for name, r in self.recallers.items()}
        return [{name: Recalled.of(name, lists[i]) for name, lists in per_recaller.items()}
                for i in range(len(queries))]

    def filtered(self, query: Query, merged: CandidateSet) -> CandidateSet:
        """The rows of `merged` the query may show (not excluded, available, in the asked
        category), in order."""
        items = merged.items
        present = set(items)
        dropped = present & query.exclude
        if self.available is not None:
            dropped |= present - self.available
        if query.category:
            dropped |= {item for item in present if self.categories.get(item) != query.category}
        if not dropped:
            return merged
        return merged.take([j for j, item in enumerate(items) if item not in dropped])

    def candidates(self, queries: Sequence[Query],
                   recalled: list[dict[str, Recalled]] | None = None,
                   blend=merge) -> list[CandidateSet]:
        """Merged, filtered candidates per query (what the ranker sees)."""
        recalled = self.recall(queries) if recalled is None else recalled
        return [self.filtered(q, blend(lists)) for q, lists in zip(queries, recalled)]

    def run(self, queries: Sequence[Query], n: int,
            recalled: list[dict[str, Recalled]] | None = None) -> list[list[Candidate]]:
        """Top n per query. `recalled`: the output of `recall(queries)`, if already at hand."""
        with one_blas_thread():
            merged = self.candidates(queries, recalled)
            ranked = self.ranker.rank_many(queries, merged) if self.ranker is not None else merged
            return [self.rerank(r, n) for r in ranked]

    def rerank(self, ranked: Sequence[Candidate], n: int) -> list[Candidate]:
        """The top n of a ranked list after the diversity and new-arrival rules."""
        top = self._diversify(ranked, n) if self.diversity > 0 and self.categories else list(ranked[:n])
        if self.new_slots > 0 and self.new_items and (self.new_position or n >= 5):
            shown = {c.item_id for c in top}
            missing = self.new_slots - sum(c.item_id in self.new_items for c in top)
            fresh = [j for j, item in enumerate(item_ids(ranked))
                     if item in self.new_items and item not in shown][:max(missing, 0)]
            first = self.new_position - 1 if self.new_position else n - len(fresh)
            for k, j in enumerate(fresh):
                position = max(first, 0) + k
                if position >= n:
                    break
                top.insert(min(position, len(top)), ranked[j])
                del top[n:]
        return top

    def _diversify(self, ranked: Sequence[Candidate], n: int) -> list[Candidate]:
        pool = list(ranked[:max(3 * n, n + 20)])
        relevance = {c.item_id: 1.0 - i / len(pool) for i, c in enumerate(pool)}
        shown: Counter[str] = Counter()
        top: list[Candidate] = []

        def value(c: Candidate) -> float:
            category = self.categories.get(c.item_id, "")
            return relevance[c.item_id] - (self.diversity * shown[category] if category else 0.0)

        while pool and len(top) < n:
            best = max(pool, key=value)  # ties keep the ranker's order: max returns the first
            pool.remove(best)
            top.append(best)
            shown[self.categories.get(best.item_id, "")] += 1
        return top
