"""The request path: recall (per-recaller quotas) → merge → filters → ranker → top N."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from .components import Ranker, Recaller
from .types import Candidate, Query


def merge(lists: Mapping[str, Sequence[Candidate]]) -> list[Candidate]:
    """Union of the recallers' lists for one query. Each item keeps every recaller's score,
    rank and reason; its `source` is the recaller that ranked it best (earlier recallers win
    ties). Ordered by reciprocal-rank sum, so the merge is useful even without a ranker."""
    merged: dict[str, Candidate] = {}
    for name, cands in lists.items():
        for cand in cands:
            old = merged.get(cand.item_id)
            if old is None:
                merged[cand.item_id] = cand
                continue
            best_old = min(old.ranks.values(), default=10**9)
            lead = cand if min(cand.ranks.values(), default=10**9) < best_old else old
            merged[cand.item_id] = Candidate(
                cand.item_id, max(old.score, cand.score), lead.source, lead.reason,
                {**old.scores, **cand.scores}, {**old.ranks, **cand.ranks},
                {**old.reasons, **cand.reasons})
    rrf = {item: sum(1.0 / (20 + r) for r in c.ranks.values()) for item, c in merged.items()}
    return sorted(merged.values(), key=lambda c: -rrf[c.item_id])


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
    category for requests that ask for one."""

    recallers: dict[str, Recaller]
    quotas: dict[str, int]
    ranker: Ranker | None = None
    available: set[str] | None = None
    categories: Mapping[str, str] = field(default_factory=dict)

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
        out = []
        for q, cands in zip(queries, self.candidates(queries, recalled)):
            ranked = self.ranker.rank(q, cands) if self.ranker is not None else cands
            out.append(ranked[:n])
        return out
