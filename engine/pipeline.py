"""The request path: recall (per-recaller quotas) → merge → filters (and the merchandising
filter rules) → ranker → boosts and burials → re-rank (diversity: maximal marginal
relevance over the item vectors; new-arrival slots) → pins → top N."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .candidates import CandidateSet, Recalled, interleave, item_ids, merge
from .components import Ranker, Recaller
from .diversity import mmr, rank_relevance, score_relevance, similarity
from .errors import EngineError
from .types import Candidate, Query

if TYPE_CHECKING:  # pragma: no cover
    from .merchandising import RuleSet
    from .vectors import VectorIndex

log = logging.getLogger("shelfwise")

__all__ = ["Pipeline", "Trace", "merge", "interleave", "one_blas_thread"]


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
class Trace:
    """What `Pipeline.run` did for one query: the one account of a recommendation that
    `why_not`, `recommend --explain` and the TUI's explanation read.

    `recalled`: each recaller's proposals, best first (up to its quota); `merged`: all of
    them in one list (before the filters); `removed`: the items each filter took out;
    `ranked`: the ranker's order of what was left (the merged order without a ranker);
    `shown`: the top n after the re-rank rules (merchandising boosts, burials and pins,
    diversity, new-arrival slots); `notes`: per item, the merchandising rules that moved
    or placed it ("boosted by rule 2", "pinned by rule 3"; filter rules are in `removed`
    as "rule 4"), and "moved up for variety" where the diversity re-rank placed it ahead
    of candidates the ranker preferred."""

    query: Query
    n: int
    quotas: dict[str, int]
    recalled: dict[str, Recalled]
    merged: CandidateSet
    removed: dict[str, set[str]]
    ranker: str | None
    ranked: Sequence[Candidate]
    shown: list[Candidate]
    notes: dict[str, list[str]] = field(default_factory=dict)

    def recall_rank(self, recaller: str, item_id: str) -> int | None:
        """1-based place of the item in that recaller's proposals (None: not proposed)."""
        return _place(item_ids(self.recalled[recaller]), item_id)

    def ranked_at(self, item_id: str) -> int | None:
        """1-based place the ranker gave the item among the filtered candidates."""
        return _place(item_ids(self.ranked), item_id)

    def shown_at(self, item_id: str) -> int | None:
        return _place([c.item_id for c in self.shown], item_id)

    def filters_of(self, item_id: str) -> list[str]:
        """The filters that removed the item (empty: it was kept or never proposed)."""
        return [name for name, found in self.removed.items() if item_id in found]

    def rules_of(self, item_id: str) -> list[str]:
        """What the merchandising rules did to the item, in words ("filtered by rule 4",
        "boosted by rule 2", "pinned by rule 3"); empty when no rule touched it."""
        return [f"filtered by {name}" for name in self.filters_of(item_id) if name.startswith("rule ")] \
            + list(self.notes.get(item_id, ()))

    def moved(self) -> list[tuple[str, int | None, int]]:
        """What the re-rank rules changed: (item, place the ranker gave it, place shown)
        for every shown item not at its ranked place."""
        return [(c.item_id, self.ranked_at(c.item_id), k) for k, c in enumerate(self.shown, start=1)
                if self.ranked_at(c.item_id) != k]

    def to_dict(self) -> dict:
        """Plain data (JSON): per recaller how many it proposed, per filter how many it
        removed, the ranker, the rules' moves and the shown items with their sources."""
        return {
            "user_id": self.query.user_id, "n": self.n, "ranker": self.ranker,
            "recalled": {name: {"quota": self.quotas.get(name), "proposed": len(found)}
                         for name, found in self.recalled.items()},
            "merged": len(self.merged),
            "removed": {name: len(found) for name, found in self.removed.items()},
            "ranked": len(self.ranked),
            "moved": [{"item_id": i, "ranked": r, "shown": s} for i, r, s in self.moved()],
            "rules": {item: list(notes) for item, notes in self.notes.items()},
            "shown": [{"item_id": c.item_id, "score": c.score, "source": c.source,
                       "sources": {name: self.recall_rank(name, c.item_id) for name in c.ranks}}
                      for c in self.shown],
        }


def _place(items: Sequence[str], item_id: str) -> int | None:
    for k, found in enumerate(items, start=1):
        if found == item_id:
            return k
    return None


@dataclass
class Pipeline:
    """Recallers with their quotas, an optional ranker, and the catalogue filters.

    `available`: the items that may be shown (known and in stock); None means no stock
    filter (evaluation ranks over the whole catalogue). `categories` maps items to their
    category for requests that ask for one and for the diversity re-rank.

    After the ranker: `diversity` (λ, 0 to 1; 0: off) re-ranks the top of the list by
    maximal marginal relevance (engine.diversity): each next place goes to the candidate
    with the best (1 - λ) · relevance - λ · its highest similarity to an item already
    placed, over the first max(3n, n + 20) candidates. Relevance is the ranker's order
    (`relevance="rank"`; "score": its scores scaled to [0, 1]); similarity is the cosine
    of the items' vectors in `vectors` (the engine's vector index), or, for an item
    without one, 1 when both share a category. `new_slots` reserves up to that many
    places, from position `new_position` on (0: the last places of lists of 5 or more), for
    `new_items` (products nobody has interacted with yet) that some recaller proposed but
    the ranker placed lower — rankers learn from past behaviour, which new products lack.

    `merchandising`: the shop owner's rules for this request's placement
    (engine.merchandising.RuleSet; None: none apply): filter rules join the filters, boosts
    and burials reorder the ranked list before the re-rank, pins take their places last."""

    recallers: dict[str, Recaller]
    quotas: dict[str, int]
    ranker: Ranker | None = None
    available: set[str] | None = None
    categories: Mapping[str, str] = field(default_factory=dict)
    diversity: float = 0.0
    vectors: VectorIndex | None = None
    relevance: str = "rank"
    new_items: frozenset[str] | set[str] = frozenset()
    new_slots: int = 0
    new_position: int = 0
    merchandising: RuleSet | None = None
    failed: dict[str, str] = field(default_factory=dict)  # part -> what it raised

    def __post_init__(self) -> None:
        check_diversity(self.diversity)
        if self.relevance not in ("rank", "score"):
            raise EngineError(f"Unknown relevance {self.relevance!r} for the diversity re-rank. "
                              f"Choices: rank, score.", title="Invalid setting")

    @property
    def ranker_name(self) -> str | None:
        return self.ranker.name if self.ranker is not None else None

    def recall(self, queries: Sequence[Query]) -> list[dict[str, Recalled]]:
        """Each recaller's proposals per query. A recaller that raises (a plugin's bug, a
        model that does not fit the data) proposes nothing for these queries, is logged
        once and named in `failed` (the serving pipelines share one: Serving.failing): the
        others still answer."""
        per_recaller = {name: self._isolated(name, lambda r=r, name=name: r.recall(
            queries, self.quotas.get(name, 100)), [[] for _ in queries])
            for name, r in self.recallers.items()}
        return [{name: Recalled.of(name, lists[i]) for name, lists in per_recaller.items()}
                for i in range(len(queries))]

    def _isolated(self, part: str, work, fallback):
        try:
            return work()
        except EngineError:
            raise  # said for the user (a wrong request), not a broken part
        except Exception as error:  # noqa: BLE001 - one broken part never takes down the rest
            if part not in self.failed:
                self.failed[part] = f"{type(error).__name__}: {error}"
                log.warning("%s failed and is left out of this list: %s", part, self.failed[part],
                            exc_info=log.isEnabledFor(logging.DEBUG))
            return fallback

    def removals(self, query: Query, items: Sequence[str]) -> dict[str, set[str]]:
        """Which of `items` each filter removes: "excluded" (consumed before, or asked not
        to show), "unavailable" (not in the catalogue or out of stock), "category" (not the
        asked category). An item may fall to several."""
        present = set(items)
        out = {"excluded": present & query.exclude}
        if self.available is not None:
            out["unavailable"] = present - self.available
        if query.category:
            out["category"] = {item for item in present if self.categories.get(item) != query.category}
        if self.merchandising is not None:
            out.update(self.merchandising.removals(present))
        return {name: found for name, found in out.items() if found}

    def filtered(self, query: Query, merged: CandidateSet,
                 removed: dict[str, set[str]] | None = None) -> CandidateSet:
        """The rows of `merged` the query may show (not excluded, available, in the asked
        category, not removed by a filter rule), in order. `removed`: `removals` of it, if
        already at hand."""
        removed = self.removals(query, merged.items) if removed is None else removed
        if not removed:
            return merged
        dropped = set().union(*removed.values())
        return merged.take([j for j, item in enumerate(merged.items) if item not in dropped])

    def candidates(self, queries: Sequence[Query],
                   recalled: list[dict[str, Recalled]] | None = None,
                   blend=merge) -> list[CandidateSet]:
        """Merged, filtered candidates per query (what the ranker sees)."""
        recalled = self.recall(queries) if recalled is None else recalled
        return [self.filtered(q, blend(lists)) for q, lists in zip(queries, recalled)]

    def run(self, queries: Sequence[Query], n: int,
            recalled: list[dict[str, Recalled]] | None = None,
            traces: list[Trace] | None = None) -> list[list[Candidate]]:
        """Top n per query. `recalled`: the output of `recall(queries)`, if already at hand.
        `traces`: a list to which one `Trace` per query is appended (what each stage did)."""
        with one_blas_thread():
            recalled = self.recall(queries) if recalled is None else recalled
            merged = [merge(lists) for lists in recalled]
            removed = [self.removals(q, m.items) for q, m in zip(queries, merged)]
            kept = [self.filtered(q, m, r) for q, m, r in zip(queries, merged, removed)]
            ranked = kept if self.ranker is None else self._isolated(
                self.ranker.name, lambda: self.ranker.rank_many(queries, kept), kept)
            finished = [self.finish(q, r, n) for q, r in zip(queries, ranked)]
        if traces is not None:
            traces.extend(Trace(q, n, dict(self.quotas), lists, m, gone, self.ranker_name, r, s, notes)
                          for q, lists, m, gone, r, (s, notes)
                          in zip(queries, recalled, merged, removed, ranked, finished))
        return [s for s, _ in finished]

    def trace(self, query: Query, n: int) -> Trace:
        """What `run` does for one query, stage by stage."""
        traces: list[Trace] = []
        self.run([query], n, traces=traces)
        return traces[0]

    def finish(self, query: Query, ranked: Sequence[Candidate], n: int, rerank: bool = True
               ) -> tuple[list[Candidate], dict[str, list[str]]]:
        """After the ranker: the merchandising boosts and burials, the re-rank (diversity,
        new-arrival slots; `rerank=False`: the top n as they are), then the pins; with what
        each rule did (item -> notes)."""
        rules = self.merchandising
        notes: dict[str, list[str]] = {}
        if rerank:
            def cut(found, k):
                top, varied = self._reranked(found, k)
                for item in varied:
                    notes[item] = [VARIETY_NOTE]
                return top
        else:
            def cut(found, k):
                return list(found[:k])
        if rules is None:
            return cut(ranked, n), notes
        moved = rules.reorder(ranked)
        top, pinned = rules.pin(query, cut(moved, n), ranked, n,
                                allowed=lambda item: not self.removals(query, [item]))
        if rules.notes:
            for item in item_ids(ranked):
                if item in rules.notes:
                    notes[item] = list(rules.notes[item]) + notes.get(item, [])
        for item, found in pinned.items():
            notes[item] = notes.get(item, []) + found
        shown = {c.item_id for c in top}  # a variety note on an item a pin pushed out is moot
        return top, {item: found for item, found in notes.items()
                     if item in shown or found != [VARIETY_NOTE]}

    def rerank(self, ranked: Sequence[Candidate], n: int) -> list[Candidate]:
        """The top n of a ranked list after the diversity and new-arrival rules."""
        return self._reranked(ranked, n)[0]

    def _reranked(self, ranked: Sequence[Candidate], n: int) -> tuple[list[Candidate], list[str]]:
        """`rerank`, with the items diversity placed ahead of ones the ranker preferred."""
        top, varied = self._diversify(ranked, n) if self.diversity > 0 else (list(ranked[:n]), [])
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
        return top, varied

    def pool_similarity(self, pool: Sequence[Candidate]) -> np.ndarray:
        """Pairwise similarity of candidates: the cosine of their vectors, else (for an item
        without a vector) 1 when both share a category."""
        ids = [c.item_id for c in pool]
        if self.vectors is not None:
            vectors, found = self.vectors.vectors(ids)
        else:
            vectors, found = np.zeros((len(ids), 1), np.float32), np.zeros(len(ids), bool)
        codes: dict[str, int] = {"": -1}
        cats = np.fromiter((codes.setdefault(self.categories.get(i, ""), len(codes)) for i in ids),
                           np.int64, len(ids)) if not found.all() else np.zeros(len(ids), np.int64)
        return similarity(vectors, found, cats)

    def _diversify(self, ranked: Sequence[Candidate], n: int) -> tuple[list[Candidate], list[str]]:
        """Maximal marginal relevance over the head of the ranked list: (the top n, the items
        placed ahead of a candidate the ranker preferred)."""
        pool = list(ranked[:max(3 * n, n + 20)])
        if len(pool) < 2:
            return pool[:n], []
        relevance = rank_relevance(len(pool)) if self.relevance == "rank" else \
            score_relevance([c.score for c in pool])
        order, jumped = mmr(relevance, self.pool_similarity(pool), n, self.diversity)
        return [pool[j] for j in order], [pool[j].item_id for j, up in zip(order, jumped) if up]


VARIETY_NOTE = "moved up for variety"


def check_diversity(value: float) -> float:
    """`diversity` must be a number from 0 (the ranker's order) to 1 (variety only)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise EngineError(
            f"diversity must be a number from 0 to 1 (0: the ranker's order, 1: variety only; "
            f"0.1 to 0.3 keeps most of the accuracy), not {value!r}. Set it under [pipeline] "
            f"in shelfwise.toml.", title="Invalid setting")
    return float(value)
