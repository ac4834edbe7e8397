"""Candidates as arrays, from recall to the shown list.

A recaller answers a query with a `Recalled` list (item ids, scores, and a reason for each
item that is made only when the item is shown). `merge` joins the lists of one query into a
`CandidateSet`: one row per item, one column per recaller (score, 1-based rank), kept as
numpy arrays through filtering and ranking. A `Candidate` object is built only for the rows
that are shown — the top n of a request — or when a plugin written against the object API
iterates the set (both types are sequences of `Candidate`s, so such plugins keep working).
Building ~600 candidate objects per request, each with three dicts, was most of the time of
`recommend --all`.
"""

from __future__ import annotations

from itertools import chain
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .types import Candidate

Reasons = Sequence[str] | Callable[[int], str] | str


class _Candidates(Sequence[Candidate]):
    """Arrays that read as a list of `Candidate`s: `len`, index, iterate, compare."""

    __slots__ = ()

    def __eq__(self, other) -> bool:  # as the list of candidates it reads as
        if isinstance(other, (list, tuple, _Candidates)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class Recalled(_Candidates):
    """One recaller's answer to one query, best first: `items`, their `scores`, and the
    `reasons` — one text for all, one per item, or a function of the item's position that
    is called only for the items that are shown. Reads as a list of `Candidate`s."""

    __slots__ = ("source", "items", "scores", "_reasons")

    def __init__(self, source: str, items: Sequence[str], scores: Sequence[float] | np.ndarray,
                 reasons: Reasons = ""):
        self.source = source
        self.items = list(items)
        self.scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(self.scores) != len(self.items):
            raise ValueError(f"{source}: {len(self.items)} items but {len(self.scores)} scores")
        self._reasons = reasons

    @classmethod
    def empty(cls, source: str) -> "Recalled":
        return cls(source, [], np.zeros(0))

    @classmethod
    def of(cls, source: str, candidates: Sequence[Candidate]) -> "Recalled":
        """A recaller's answer given as `Candidate` objects (the object API), as arrays."""
        if isinstance(candidates, Recalled):
            return candidates
        cands = list(candidates)
        return cls(source, [c.item_id for c in cands],
                   np.fromiter((c.score for c in cands), np.float64, len(cands)),
                   [c.reason for c in cands])

    def reason(self, j: int) -> str:
        r = self._reasons
        if isinstance(r, str):
            return r
        return r(j) if callable(r) else r[j]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        j = range(len(self.items))[j]
        score, reason = float(self.scores[j]), self.reason(j)
        return Candidate(self.items[j], score, self.source, reason, {self.source: score},
                         {self.source: j + 1}, {self.source: reason})

    def __iter__(self) -> Iterator[Candidate]:
        return (self[j] for j in range(len(self.items)))

    def __repr__(self) -> str:
        return f"Recalled({self.source!r}, {len(self.items)} items)"


class CandidateSet(_Candidates):
    """The merged candidates of one query: row j is `items[j]`; column r is recaller
    `names[r]`, with `scores[j, r]` (nan: r did not propose the item) and `ranks[j, r]`
    (1-based; 0: not proposed). `score[j]` is the current score (the best recaller score
    after merging, the ranker's score after ranking) and `lead[j]` the column whose reason
    the item is shown with. `lists` keeps the recallers' answers for their reasons (None in
    a compacted set: reasons are then "")."""

    __slots__ = ("items", "names", "scores", "ranks", "score", "lead", "lists")

    def __init__(self, items: Sequence[str], names: Sequence[str], scores: np.ndarray,
                 ranks: np.ndarray, score: np.ndarray | None = None, lead: np.ndarray | None = None,
                 lists: Mapping[str, Recalled] | None = None):
        self.items = list(items)
        self.names = tuple(names)
        self.scores = scores
        self.ranks = ranks
        if score is None:  # after a merge: each item's best recaller score
            score = np.where(ranks > 0, scores, -np.inf).max(axis=1) if len(self.items) else np.zeros(0)
        self.score = score
        self.lead = best_rank_column(ranks) if lead is None else lead
        self.lists = lists

    @classmethod
    def empty(cls, names: Sequence[str] = ()) -> "CandidateSet":
        r = len(names)
        return cls([], names, np.zeros((0, r)), np.zeros((0, r), np.int32))

    @classmethod
    def of(cls, candidates: Sequence[Candidate]) -> "CandidateSet":
        """Candidate objects (built by hand, or by a ranker of the object API) as a set, in
        their order, with their scores and sources."""
        if isinstance(candidates, CandidateSet):
            return candidates
        cands = list(candidates)
        names: dict[str, None] = {}
        for c in cands:
            names.update(dict.fromkeys(c.ranks))
            names.setdefault(c.source, None)
        col = {name: r for r, name in enumerate(names)}
        scores = np.full((len(cands), len(col)), np.nan)
        ranks = np.zeros((len(cands), len(col)), np.int32)
        reasons: dict[str, dict[str, str]] = {name: {} for name in col}
        for j, c in enumerate(cands):
            for name, rank in c.ranks.items():
                scores[j, col[name]] = c.scores.get(name, np.nan)
                ranks[j, col[name]] = rank
                reasons[name][c.item_id] = c.reasons.get(name, "")
            reasons[c.source][c.item_id] = c.reason
        lists = {name: _ItemReasons(found) for name, found in reasons.items()}
        return cls([c.item_id for c in cands], list(col), scores, ranks,
                   np.array([c.score for c in cands], dtype=np.float64),
                   np.array([col[c.source] for c in cands], dtype=np.int32), lists)

    def __len__(self) -> int:
        return len(self.items)

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ranks) of recaller `name` for every row: nan / 0 where it did not propose
        the item (and everywhere if it is not a column)."""
        try:
            r = self.names.index(name)
        except ValueError:
            return np.full(len(self.items), np.nan), np.zeros(len(self.items), np.int32)
        return self.scores[:, r], self.ranks[:, r]

    def reason(self, j: int, r: int) -> str:
        """Recaller `names[r]`'s reason for row j ("" when it did not propose the item)."""
        found = self.lists.get(self.names[r]) if self.lists is not None else None
        if found is None:
            return ""
        if isinstance(found, _ItemReasons):
            return found.found.get(self.items[j], "")
        rank = int(self.ranks[j, r])
        return found.reason(rank - 1) if rank > 0 else ""

    def candidate(self, j: int) -> Candidate:
        """Row j as a `Candidate` (the object the views and object-API plugins read)."""
        names, row_ranks, row_scores = self.names, self.ranks[j].tolist(), self.scores[j].tolist()
        present = [r for r, rank in enumerate(row_ranks) if rank > 0]
        lead = int(self.lead[j]) if names else -1
        source = names[lead] if lead >= 0 else ""
        reason = self.reason(j, lead) if lead >= 0 else ""
        reasons = _Reasons(self, j, {names[r]: r for r in present}, source, reason) \
            if self.lists is not None else {}
        return Candidate(self.items[j], float(self.score[j]), source, reason,
                         {names[r]: float(row_scores[r]) for r in present},
                         {names[r]: row_ranks[r] for r in present}, reasons)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self.candidate(k) for k in range(*j.indices(len(self)))]
        return self.candidate(range(len(self.items))[j])

    def __iter__(self) -> Iterator[Candidate]:
        return (self.candidate(j) for j in range(len(self.items)))

    def take(self, rows: np.ndarray | Sequence[int], score: np.ndarray | None = None,
             lead: np.ndarray | None = None) -> "CandidateSet":
        """The rows `rows`, in that order; `score`/`lead` (per row of this set) replace the
        current ones."""
        rows = np.asarray(rows, dtype=np.int64)
        items = self.items
        return CandidateSet([items[j] for j in rows.tolist()], self.names, self.scores[rows],
                            self.ranks[rows], (self.score if score is None else score)[rows],
                            (self.lead if lead is None else lead)[rows], self.lists)

    def ranked(self, score: np.ndarray, lead: np.ndarray | None = None) -> "CandidateSet":
        """Ordered by `score` (a score per row), best first; ties keep the current order."""
        score = np.asarray(score, dtype=np.float64)
        return self.take(np.argsort(-score, kind="stable"), score, lead)

    def best_lead(self) -> np.ndarray:
        """Per row, the column of the recaller that ranked the item best (the lead a ranker
        gives when it credits the strongest recall)."""
        return best_rank_column(self.ranks)

    def without(self, name: str) -> "CandidateSet":
        """These candidates as if recaller `name` had not been asked: its column dropped and
        the items only it proposed gone, in the order the others' ranks give."""
        if name not in self.names:
            return self
        r = self.names.index(name)
        keep = [c for c in range(len(self.names)) if c != r]
        ranks = self.ranks[:, keep]
        rows = np.flatnonzero((ranks > 0).any(axis=1))
        lists = None if self.lists is None else {k: v for k, v in self.lists.items() if k != name}
        return CandidateSet([self.items[j] for j in rows.tolist()], [self.names[c] for c in keep],
                            self.scores[rows][:, keep], ranks[rows], lists=lists)

    def compact(self) -> "CandidateSet":
        """Without the reasons, scores stored as float32: what validation moments keep
        (rankers learn from scores and ranks; 9,000 moments x 450 candidates)."""
        ranks = self.ranks.astype(np.int16) if len(self.items) < 32_000 else self.ranks
        return CandidateSet(self.items, self.names, self.scores.astype(np.float32), ranks,
                            self.score.astype(np.float32), self.lead.astype(np.int8)
                            if len(self.names) < 127 else self.lead, None)

    def __repr__(self) -> str:
        return f"CandidateSet({len(self.items)} items from {', '.join(self.names)})"


class _Reasons(Mapping[str, str]):
    """A candidate's reason from each recaller that proposed it, each made when first read
    (a shown item is shown with one of them)."""

    __slots__ = ("_set", "_row", "_columns", "_made")

    def __init__(self, cands: CandidateSet, row: int, columns: dict[str, int], lead: str, reason: str):
        self._set, self._row, self._columns = cands, row, columns
        self._made = {lead: reason} if lead in columns else {}

    def __getitem__(self, name: str) -> str:
        found = self._made.get(name)
        if found is None:
            found = self._made[name] = self._set.reason(self._row, self._columns[name])
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def __repr__(self) -> str:
        return repr(dict(self))


class _ItemReasons:
    """A recaller's reasons in a set built from objects, by item id."""

    __slots__ = ("found",)

    def __init__(self, found: Mapping[str, str]):
        self.found = found


def best_rank_column(ranks: np.ndarray) -> np.ndarray:
    """Per row, the column with the best (lowest) rank; earlier columns win ties."""
    if not ranks.size:
        return np.zeros(len(ranks), np.int32)
    masked = np.where(ranks > 0, ranks, np.iinfo(np.int32).max).astype(np.int64)
    return masked.argmin(axis=1).astype(np.int32)


def recallers_of(candidate_lists: Iterable[Sequence[Candidate]]) -> list[str]:
    """The recallers that proposed any of the candidates, sorted (a ranker's features)."""
    names: set[str] = set()
    for cands in candidate_lists:
        cands = CandidateSet.of(cands)
        names.update(name for name, used in zip(cands.names, (cands.ranks > 0).any(axis=0)) if used)
    return sorted(names)


def item_ids(candidates: Sequence[Candidate]) -> list[str]:
    """The candidates' item ids, in order, without building objects for a set (its own
    list: read it, do not change it)."""
    items = getattr(candidates, "items", None)
    return items if isinstance(items, list) else [c.item_id for c in candidates]


def merge(lists: Mapping[str, Sequence[Candidate]]) -> CandidateSet:
    """Union of the recallers' lists for one query. Each item keeps every recaller's score,
    rank and reason; its score is the best recaller score and it is shown with the reason of
    the recaller that ranked it best (earlier recallers win ties). Ordered by
    reciprocal-rank sum (ties: the order items were first met), so the merge is useful even
    without a ranker."""
    answers = [Recalled.of(name, lst) for name, lst in lists.items()]
    names = [a.source if a.source else name for a, name in zip(answers, lists)]
    firsts = dict.fromkeys(chain.from_iterable(a.items for a in answers))  # first-met order
    row = dict(zip(firsts, range(len(firsts))))
    n, r_count = len(row), len(answers)
    scores = np.full((n, r_count), np.nan)
    ranks = np.zeros((n, r_count), np.int32)
    for r, a in enumerate(answers):
        if not a.items:
            continue
        at = np.fromiter(map(row.__getitem__, a.items), np.int64, len(a.items))
        # a recaller naming an item twice: its best (first) place counts
        first = np.unique(at, return_index=True)[1] if len(set(a.items)) < len(a.items) else None
        if first is not None:
            at, picked = at[first], first
        else:
            picked = slice(None)
        scores[at, r] = a.scores[picked]
        ranks[at, r] = (np.arange(len(a.items), dtype=np.int32) + 1)[picked]
    rrf = np.zeros(n)
    for r in range(r_count):  # column by column: the same sums as adding the ranks in turn
        present = ranks[:, r] > 0
        rrf[present] += 1.0 / (20 + ranks[present, r])
    merged = CandidateSet(list(row), names, scores, ranks,
                          lists={name: a for name, a in zip(names, answers)})
    return merged.take(np.argsort(-rrf, kind="stable"))


def interleave(lists: Mapping[str, Sequence[Candidate]]) -> CandidateSet:
    """Blend by taking each recaller's next best in turn (deduplicated), so every recaller
    is heard — a new item that only one recaller can know still reaches the top. The score
    is 1 / (best rank any recaller gave the item): comparable across recallers."""
    merged = merge(lists)
    answers = [Recalled.of(name, lst) for name, lst in lists.items()]
    row = {item: j for j, item in enumerate(merged.items)}
    order: list[int] = []
    seen: set[str] = set()
    for rank in range(max((len(a) for a in answers), default=0)):
        for a in answers:
            if rank < len(a.items) and a.items[rank] not in seen:
                seen.add(a.items[rank])
                order.append(row[a.items[rank]])
    best = np.where(merged.ranks > 0, merged.ranks, np.iinfo(np.int32).max).min(axis=1) \
        if len(merged) else np.zeros(0)
    return merged.take(order, score=1.0 / best.astype(np.float64))
