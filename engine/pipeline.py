"""The request path: recall (per-recaller quotas) → merge → filters → ranker → re-rank
(category diversity, new-arrival slots) → top N."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from .components import Ranker, Recaller
from .types import Candidate, Query


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


def merge(lists: Mapping[str, Sequence[Candidate]]) -> list[Candidate]:
    """Union of the recallers' lists for one query. Each item keeps every recaller's score,
    rank and reason; its `source` is the recaller that ranked it best (earlier recallers win
    ties). Ordered by reciprocal-rank sum, so the merge is useful even without a ranker."""
    merged: dict[str, Candidate | list] = {}  # an item met twice: its fields, being merged
    for cands in lists.values():
        for cand in cands:
            old = merged.get(cand.item_id)
            if old is None:
                merged[cand.item_id] = cand
                continue
            if type(old) is not list:
                old = merged[cand.item_id] = [old.score, old.source, old.reason, dict(old.scores),
                                              dict(old.ranks), dict(old.reasons),
                                              min(old.ranks.values(), default=10**9)]
            best = min(cand.ranks.values(), default=10**9)
            if best < old[6]:
                old[1], old[2], old[6] = cand.source, cand.reason, best
            old[0] = max(old[0], cand.score)
            old[3].update(cand.scores)
            old[4].update(cand.ranks)
            old[5].update(cand.reasons)
    out = [c if type(c) is not list else Candidate(item, c[0], c[1], c[2], c[3], c[4], c[5])
           for item, c in merged.items()]
    rrf = [sum(1.0 / (20 + r) for r in c.ranks.values()) for c in out]
    return [out[j] for j in sorted(range(len(out)), key=lambda j: -rrf[j])]


def interleave(lists: Mapping[str, Sequence[Candidate]]) -> list[Candidate]:
    """Blend by taking each recaller's next best in turn (deduplicated), so every recaller
    is heard — a new item that only one recaller can know still reaches the top. The score
    is 1 / (best rank any recaller gave the item): comparable across recallers."""
    merged = {c.item_id: replace(c, score=1.0 / min(c.ranks.values())) for c in merge(lists)}
    order: list[str] = []
    seen: set[str] = set()
    for rank in range(max((len(v) for v in lists.values()), default=0)):
        for cands in lists.values():
            if rank < len(cands) and cands[rank].item_id not in seen:
                seen.add(cands[rank].item_id)
                order.append(cands[rank].item_id)
    return [merged[item] for item in order]


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

    def recall(self, queries: Sequence[Query]) -> list[dict[str, list[Candidate]]]:
        per_recaller = {name: r.recall(queries, self.quotas.get(name, 100))
                        for name, r in self.recallers.items()}
        return [{name: lists[i] for name, lists in per_recaller.items()}
                for i in range(len(queries))]

    def keep(self, query: Query, cand: Candidate) -> bool:
        if cand.item_id in query.exclude:
            return False
        if self.available is not None and cand.item_id not in self.available:
            return False
        if query.category and self.categories.get(cand.item_id) != query.category:
            return False
        return True

    def candidates(self, queries: Sequence[Query],
                   recalled: list[dict[str, list[Candidate]]] | None = None,
                   blend=merge) -> list[list[Candidate]]:
        """Merged, filtered candidates per query (what the ranker sees)."""
        recalled = self.recall(queries) if recalled is None else recalled
        return [[c for c in blend(lists) if self.keep(q, c)] for q, lists in zip(queries, recalled)]

    def run(self, queries: Sequence[Query], n: int,
            recalled: list[dict[str, list[Candidate]]] | None = None) -> list[list[Candidate]]:
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
            fresh = [c for c in ranked if c.item_id in self.new_items and c.item_id not in shown]
            fresh = fresh[:max(missing, 0)]
            first = self.new_position - 1 if self.new_position else n - len(fresh)
            for k, cand in enumerate(fresh):
                position = max(first, 0) + k
                if position >= n:
                    break
                top.insert(min(position, len(top)), cand)
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
