"""Recall features: what the recallers said about each candidate, as numbers (pure numpy).

For every recaller the ranker was trained with: was the item recalled by it, 1/rank,
log rank and the recaller's score scaled within the request (min-max), so a score scale
that differs between recallers or requests does not matter. Then evidence about the item
and the shopper that no single recaller sees whole: how many recallers agree, the merged
position, popularity as of the request's moment (shoppers so far, new shoppers in the last
7 and 30 days), the item's age and the time since a shopper last arrived ("new item" when
none has yet), whether the item's category is one the shopper keeps coming back to, and
how the item's popularity and age compare with those of the shopper's recent items (some
shoppers follow the crowd or the new arrivals, others do not). Then what the catalogue
and the ratings say: how much the item's tags (and category) overlap those of the
shopper's recent items (mean Jaccard), the item's rating as of the moment (a Bayesian
mean of its shoppers' ratings, relative to the shop's mean) and the shopper's own mean
rating of their recent items — zero where a shop has no tags or no ratings. Last, who
the item's shoppers are: for each attribute the shop knows of its customers (a segment, a
country, an age band), how much more (or less) often than the shop as a whole the item's
shoppers so far belonged to this shopper's group (a smoothed log lift; the mean and the
largest over the attributes) — zero for shoppers without attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from engine import CandidateSet

if TYPE_CHECKING:  # scipy is imported where it is used: `shelfwise --help` loads every plugin
    import scipy.sparse as sp

DAY = 86400.0
POP_SCALE = 10.0  # log1p of shopper counts divided by this: about 1 at 22,000 shoppers
PER_RECALLER = ("present", "inv_rank", "log_rank", "score")
GLOBAL = ("agree", "position", "log_pop", "log_trend", "log_month", "log_age", "log_idle",
          "new_item", "category_share", "log_history", "taste_pop", "taste_age", "pop_gap", "age_gap",
          "tag_overlap", "item_rating", "shopper_rating", "group_lift", "group_lift_max")
RATING_PRIOR = 10.0  # ratings a Bayesian mean gives the shop's mean rating
RECENT = 20          # the shopper's newest items that describe their taste
MAX_GROUPS = 32      # an attribute with more values (an id, a zip code) groups nobody...
BANDS = (0.2, 0.4, 0.6, 0.8)  # ...unless it is a number: then quintiles (an age band)
GROUP_PRIOR = 20.0   # shoppers a group's share of an item is smoothed with


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass
class Grouping:
    """How shoppers fall into groups by the attributes imported with them. An attribute
    that most shoppers have is used as it is when it has 2 to MAX_GROUPS values (a
    segment, a country, a gender), cut into quintiles when all its many values are
    numbers (an age), and ignored otherwise (an id, a zip code)."""

    names: list[str]
    values: list[list[str]]    # per attribute: its values (categorical) or [] (numeric)
    edges: list[list[float]]   # per attribute: quintile edges (numeric) or []

    def __post_init__(self) -> None:
        self._codes = [{v: j for j, v in enumerate(vals)} for vals in self.values]

    @classmethod
    def learn(cls, attrs: Iterable[Mapping[str, Any]]) -> "Grouping | None":
        rows = list(attrs)
        seen: dict[str, list] = {}
        for a in rows:
            for key, value in a.items():
                if value is not None and not isinstance(value, (dict, list)):
                    seen.setdefault(key, []).append(value)
        names, values, edges = [], [], []
        for key in sorted(seen):
            vals = seen[key]
            distinct = sorted({str(v) for v in vals})
            if len(vals) * 2 < len(rows) or len(distinct) < 2:
                continue
            nums = [_number(v) for v in vals]
            if len(distinct) <= MAX_GROUPS:
                cut = []
            elif all(x is not None for x in nums):
                cut, distinct = sorted(set(np.quantile(nums, BANDS).tolist())), []
            else:
                continue
            names.append(key)
            values.append(distinct)
            edges.append(cut)
        return cls(names, values, edges) if names else None

    def codes(self, attrs: Mapping[str, Any]) -> np.ndarray:
        """The shopper's group for each attribute (-1: unknown)."""
        out = np.full(len(self.names), -1, np.int16)
        for j, key in enumerate(self.names):
            value = attrs.get(key)
            if value is None:
                continue
            if self.values[j]:
                out[j] = self._codes[j].get(str(value), -1)
            elif (x := _number(value)) is not None:
                out[j] = int(np.searchsorted(self.edges[j], x, side="right"))
        return out

    def to_meta(self) -> dict:
        return {"names": self.names, "values": self.values, "edges": self.edges}

    @classmethod
    def from_meta(cls, meta: Mapping | None) -> "Grouping | None":
        return cls(list(meta["names"]), [list(v) for v in meta["values"]],
                   [list(e) for e in meta["edges"]]) if meta else None


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
    ratings: np.ndarray | None = None  # float32 beside `times`: that shopper's rating, nan if none
    tags: sp.csr_matrix | None = None  # (n_items, n_tags) 0/1: each item's tags and category
    groups: np.ndarray | None = None   # int16 (len(times), n_attributes): that shopper's groups
    grouping: Grouping | None = None

    def __post_init__(self) -> None:
        import scipy.sparse as sp

        n = len(self.ptr) - 1
        counts = np.diff(self.ptr)
        self._base = float(self.times.min()) if len(self.times) else 0.0
        self._span = (float(self.times.max()) - self._base if len(self.times) else 0.0) + 2 * DAY
        owner = np.repeat(np.arange(max(n, 0)), counts)
        self._keys = owner * self._span + (self.times - self._base)  # ascending: one search for all
        r = self.ratings if self.ratings is not None else np.full(len(self.times), np.nan)
        rated = ~np.isnan(r)
        self._rating_sum = np.concatenate([[0.0], np.cumsum(np.where(rated, r, 0.0))])
        self._rating_count = np.concatenate([[0], np.cumsum(rated)])
        self.rating_mean = float(r[rated].mean()) if rated.any() else 0.0
        self.rating_scale = float(r[rated].std()) if rated.sum() > 1 and r[rated].std() > 0 else 1.0
        if self.tags is not None:
            self.tags = sp.csr_matrix(self.tags, dtype=np.float32)
            self._tag_count = np.asarray(self.tags.sum(axis=1)).ravel()
        if self.grouping is None or self.groups is None or not len(self.times):
            self.groups = self.grouping = None
        self._group_runs: dict[tuple[int, int], np.ndarray] = {}
        names, codes = np.unique(np.asarray(self.category, dtype=str), return_inverse=True) \
            if len(self.category) else (np.zeros(0, str), np.zeros(0, np.int64))
        blank = np.flatnonzero(names == "")
        # each item's category as a number (-1: none), for counting a shopper's categories
        self.category_code = np.where(codes == (blank[0] if len(blank) else -1), -1, codes).astype(np.int64)
        self.n_categories = len(names)
        # a small catalogue's tags as a dense matrix: a product with it is 10x faster than
        # indexing the sparse one per request
        self._dense_tags = self.tags.toarray() if self.tags is not None \
            and self.tags.shape[0] * self.tags.shape[1] <= 4_000_000 else None

    @classmethod
    def empty(cls) -> "ItemStats":
        return cls({}, [], np.zeros(1, np.int64), np.zeros(0))

    @classmethod
    def from_dataset(cls, data) -> "ItemStats":
        n = data.n_items
        rating = data.kind_names.index("rating") if "rating" in data.kind_names else -1
        if data.n_events:
            order = np.lexsort((data.ts, data.users, data.items))
            items, users, ts = data.items[order], data.users[order], data.ts[order]
            first = np.ones(len(order), bool)
            first[1:] = (items[1:] != items[:-1]) | (users[1:] != users[:-1])
            # the pair's first rating (nan: none), counted from the pair's first event
            starts = np.flatnonzero(first)
            if rating >= 0:
                values = np.where(data.kinds[order] == rating, data.values[order], np.nan)
                at = np.where(np.isnan(values), len(values), np.arange(len(values)))
                first_rated = np.minimum.reduceat(at, starts) if len(starts) else at[:0]
                ratings = np.append(values, np.nan)[first_rated]
                del values, at
            else:  # no ratings in this shop: skip four event-sized arrays (1.2 GB at 20M events)
                ratings = np.full(len(starts), np.nan)
            del order
            items, users, ts = items[first], users[first], ts[first]
            by_time = np.lexsort((ts, items))
            items, users, ts, ratings = items[by_time], users[by_time], ts[by_time], ratings[by_time]
        else:
            items, users, ts, ratings = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(items, minlength=n))]).astype(np.int64)
        cats = data.catalogue.categories.tolist()
        grouping, groups = shopper_groups(data, users)
        return cls(data.item_index, [str(c) for c in cats], ptr, ts.astype(np.float64), data.now,
                   ratings.astype(np.float32), item_tags(data, [str(c) for c in cats]), groups, grouping)

    def without(self, history: Sequence, attrs: Mapping[str, Any]) -> "ItemStats":
        """These statistics without one shopper's rows (an erasure): for each item of their
        `history` (oldest first) met by `now`, the row of their first event — the one with
        their rating and groups where several shoppers came at the same moment. Returns
        self when none of their rows is here."""
        first: dict[int, float] = {}
        rated: dict[int, float] = {}
        for step in history:
            k = self.index.get(step.item_id)
            if k is None or step.ts > self.now:
                continue
            first.setdefault(k, step.ts)
            if step.kind == "rating" and step.value is not None:
                rated.setdefault(k, step.value)
        codes = self.grouping.codes(attrs) if self.grouping is not None else None
        drop = []
        for k, t in first.items():
            lo, hi = int(self.ptr[k]), int(self.ptr[k + 1])
            rows = lo + np.flatnonzero(self.times[lo:hi] == t)
            if not len(rows):
                continue
            score = np.zeros(len(rows))
            if codes is not None and self.groups is not None:
                score += (self.groups[rows] == codes).all(axis=1)
            if self.ratings is not None:
                mine = rated.get(k, np.nan)
                score += (self.ratings[rows] == mine) | (np.isnan(self.ratings[rows]) & np.isnan(mine))
            drop.append(int(rows[np.argmax(score)]))
        if not drop:
            return self
        keep = np.ones(len(self.times), bool)
        keep[drop] = False
        owner = np.repeat(np.arange(len(self.ptr) - 1), np.diff(self.ptr))[keep]
        ptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(self.ptr) - 1))]).astype(np.int64)
        return ItemStats(self.index, self.category, ptr, self.times[keep], self.now,
                         None if self.ratings is None else self.ratings[keep], self.tags,
                         None if self.groups is None else self.groups[keep], self.grouping)

    def _count(self, k: np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """Shoppers of items k whose first event was at or before t."""
        rel = np.clip(t - self._base, -DAY, self._span - DAY)  # t: one time, or one per item
        return np.searchsorted(self._keys, k * self._span + rel, side="right") - self.ptr[k]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """What a stored model keeps (numeric arrays and JSON), for `from_arrays`."""
        arrays = {"stats.ptr": self.ptr, "stats.times": self.times}
        if self.ratings is not None and not np.isnan(self.ratings).all():  # a shop with ratings
            arrays["stats.ratings"] = np.asarray(self.ratings, np.float32)
        if self.tags is not None:
            arrays["stats.tag_ptr"] = self.tags.indptr.astype(np.int64)
            arrays["stats.tag_cols"] = self.tags.indices.astype(np.int32)
        if self.groups is not None:
            arrays["stats.groups"] = self.groups
        meta = {"stats_items": sorted(self.index, key=self.index.get), "stats_categories": list(self.category),
                "stats_now": self.now, "stats_tags": self.tags.shape[1] if self.tags is not None else 0,
                "stats_grouping": self.grouping.to_meta() if self.grouping is not None else None}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping) -> "ItemStats":
        import scipy.sparse as sp

        ids = list(meta.get("stats_items", []))
        tags = None
        if "stats.tag_ptr" in arrays:
            cols = arrays["stats.tag_cols"]
            tags = sp.csr_matrix((np.ones(len(cols), np.float32), cols, arrays["stats.tag_ptr"]),
                                 shape=(len(ids), int(meta["stats_tags"])))
        return cls({i: j for j, i in enumerate(ids)}, list(meta.get("stats_categories", [""] * len(ids))),
                   arrays["stats.ptr"], arrays["stats.times"], float(meta.get("stats_now", 0.0)),
                   arrays.get("stats.ratings"), tags, arrays.get("stats.groups"),
                   Grouping.from_meta(meta.get("stats_grouping")))

    def group_lift(self, k: np.ndarray, users: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(len(k), n_attributes): for items k over their first `users` shoppers (those as of
        the moment), log of how much more often than among all shoppers they were in the
        shopper's group of each attribute (`codes`, -1 unknown: 0), smoothed towards 0 for
        items with few shoppers."""
        out = np.zeros((len(k), len(codes)))
        if self.groups is None:
            return out
        start, end = self.ptr[k], self.ptr[k] + users
        for a, g in enumerate(codes.tolist()):
            if g < 0:
                continue
            run = self._group_runs.get((a, g))
            if run is None:  # members of group g among the first j shoppers, over all items
                # (int32: one such array per attribute value and per cut's statistics)
                run = np.zeros(len(self.groups) + 1, np.int32)
                np.cumsum(self.groups[:, a] == g, out=run[1:])
                self._group_runs[(a, g)] = run
            share = run[-1] / len(self.groups)
            if share <= 0:
                continue
            n_g = run[end] - run[start]
            out[:, a] = np.log((n_g + GROUP_PRIOR * share) / (users + GROUP_PRIOR) / share)
        return out

    def rating(self, k: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Items k's Bayesian mean rating over their first `users` shoppers (those as of
        the moment), relative to the shop's mean, in standard deviations (0: no ratings)."""
        start, end = self.ptr[k], self.ptr[k] + users
        total = self._rating_sum[end] - self._rating_sum[start]
        count = self._rating_count[end] - self._rating_count[start]
        mean = (total + RATING_PRIOR * self.rating_mean) / (count + RATING_PRIOR)
        return (mean - self.rating_mean) / self.rating_scale

    def tag_overlap(self, k: np.ndarray, past: np.ndarray) -> np.ndarray:
        """Mean Jaccard similarity of each item k's tags with those of the items `past`."""
        if self.tags is None or not len(past) or not len(k):
            return np.zeros(len(k))
        if self._dense_tags is not None:
            inter = self._dense_tags[k] @ self._dense_tags[past].T
        else:
            inter = (self.tags[k] @ self.tags[past].T).toarray()
        union = self._tag_count[k][:, None] + self._tag_count[past][None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0).mean(axis=1)

    def at(self, k: np.ndarray, now: float | np.ndarray) -> tuple[np.ndarray, ...]:
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


def item_tags(data, categories: Sequence[str]) -> sp.csr_matrix | None:
    """(n_items, n_tags) 0/1 matrix of each item's tags and category (`Dataset.catalogue`),
    or None when no item has any."""
    import scipy.sparse as sp

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for k, tags in enumerate(data.catalogue.tags):
        words = set(tags)
        if categories[k]:
            words.add(categories[k])
        for w in sorted(words):  # columns in a fixed order, whatever the hash seed
            rows.append(k)
            cols.append(vocab.setdefault(w, len(vocab)))
    if not vocab:
        return None
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(data.n_items, len(vocab)))


def shopper_groups(data, users: np.ndarray) -> tuple[Grouping | None, np.ndarray | None]:
    """The grouping of the dataset's shoppers by their attributes (`Dataset.user_attrs`), and
    the groups of the shopper of each (item, shopper) pair `users` (int16, -1 unknown)."""
    attrs = data.user_attrs
    grouping = Grouping.learn(attrs.values())
    if grouping is None:
        return None, None
    unknown = np.full(len(grouping.names), -1, np.int16)
    per_user = np.stack([grouping.codes(attrs[str(u)]) if str(u) in attrs else unknown
                         for u in data.user_ids]) if len(data.user_ids) else unknown[None, :0]
    return grouping, per_user[users] if len(users) else np.zeros((0, len(grouping.names)), np.int16)


def shopper_ratings(history: Sequence) -> list[float]:
    """The ratings among a shopper's newest steps (`Query.history`, oldest first)."""
    return [s.value for s in list(history)[-RECENT:] if s.kind == "rating" and s.value is not None]


def candidate_features(candidates: Sequence, history_items: Sequence[str], now: float | None,
                       recallers: Sequence[str], stats: ItemStats,
                       ratings: Sequence[float] = (), groups: np.ndarray | None = None) -> np.ndarray:
    """Feature matrix (len(candidates), len(feature_names(recallers))), float32. `ratings`:
    the shopper's recent ratings (`shopper_ratings(query.history)`); `groups`: the shopper's
    groups (`stats.grouping.codes(attrs)`)."""
    return batch_features([(candidates, history_items, now, ratings, groups)], recallers, stats)


def batch_features(entries: Sequence[tuple], recallers: Sequence[str], stats: ItemStats) -> np.ndarray:
    """`candidate_features` of several queries at once, their rows stacked in order: each
    entry is (candidates, history_items, now, ratings, groups). The per-candidate features
    are computed over all rows together (a request batch of 250 shoppers is one pass, not
    250); the per-shopper ones (taste, categories, tags, groups) a shopper at a time."""
    sets = [CandidateSet.of(e[0]) for e in entries]
    sizes = np.array([len(c) for c in sets], dtype=np.int64)
    total, r_count = int(sizes.sum()), len(recallers)
    out = np.zeros((total, r_count * len(PER_RECALLER) + len(GLOBAL)), dtype=np.float32)
    if total == 0:
        return out
    starts = np.cumsum(sizes) - sizes
    owner = np.repeat(np.arange(len(sets)), sizes)
    filled = sizes > 0
    # "now" is never later than the newest event known: a shop whose data stopped last year
    # looks to the model as it did when the training moments were cut
    nows = np.array([stats.now if e[2] is None else (min(e[2], stats.now) if stats.now else e[2])
                     for e in entries], dtype=np.float64)
    now = nows[owner]
    answered = np.zeros(total)
    for j, name in enumerate(recallers):
        scores, ranks = _stacked_column(sets, name, total)
        present = ranks > 0
        if not present.any():
            continue
        answered += present
        vals = scores.astype(np.float64)
        # each query's lowest and highest score of this recaller, over the items it proposed
        lo = np.minimum.reduceat(np.where(present, vals, np.inf), starts[filled])
        hi = np.maximum.reduceat(np.where(present, vals, -np.inf), starts[filled])
        span = np.zeros(len(sets))
        low = np.zeros(len(sets))
        span[filled], low[filled] = hi - lo, lo
        rows = np.flatnonzero(present)
        r, v, q = ranks[rows].astype(np.float64), vals[rows], owner[rows]
        base = j * len(PER_RECALLER)
        out[rows, base] = 1.0
        out[rows, base + 1] = 1.0 / r
        out[rows, base + 2] = np.log1p(r) / 6.0
        out[rows, base + 3] = np.where(span[q] > 0, (v - low[q]) / np.where(span[q] > 0, span[q], 1.0), 1.0)
    g = r_count * len(PER_RECALLER)
    lookup = stats.index.get
    index = np.fromiter((lookup(item, -1) for c in sets for item in c.items), np.int64, total)
    known = np.flatnonzero(index >= 0)
    users = np.zeros(total)
    week, month, first, last = users.copy(), users.copy(), np.full(total, np.nan), np.full(total, np.nan)
    if len(known):
        users[known], week[known], month[known], first[known], last[known] = stats.at(index[known], now[known])
    touched = users > 0
    scale = POP_SCALE
    out[:, g] = answered / max(r_count, 1)
    out[:, g + 1] = (np.arange(total) - starts[owner]) / np.maximum(sizes[owner], 1)
    out[:, g + 2] = np.log1p(users) / scale
    out[:, g + 3] = np.log1p(week) / scale
    out[:, g + 4] = np.log1p(month) / scale
    out[touched, g + 5] = np.log1p(np.maximum(now[touched] - first[touched], 0) / DAY) / 8.0
    out[touched, g + 6] = np.log1p(np.maximum(now[touched] - last[touched], 0) / DAY) / 8.0
    out[~touched, g + 7] = 1.0  # nobody has touched it yet: a new item
    if len(known):
        out[known, g + 15] = stats.rating(index[known], users[known].astype(np.int64))
    code = stats.category_code
    for e, (entry, at, n) in enumerate(zip(entries, starts.tolist(), sizes.tolist())):
        if n:
            _shopper_features(out[at:at + n], g, entry, float(nows[e]), index[at:at + n],
                              users[at:at + n], touched[at:at + n], code, stats)
    return out


def _stacked_column(sets: Sequence[CandidateSet], name: str, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Recaller `name`'s (scores, ranks) over the rows of all sets, in order."""
    if sets and all(c.names == sets[0].names for c in sets) and name in sets[0].names:
        r = sets[0].names.index(name)  # one pipeline's sets share their columns
        return (np.concatenate([c.scores[:, r] for c in sets]) if len(sets) > 1 else sets[0].scores[:, r],
                np.concatenate([c.ranks[:, r] for c in sets]) if len(sets) > 1 else sets[0].ranks[:, r])
    parts = [c.column(name) for c in sets]
    if not parts:
        return np.zeros(total), np.zeros(total, np.int32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _shopper_features(out: np.ndarray, g: int, entry: tuple, now: float, index: np.ndarray,
                      users: np.ndarray, touched: np.ndarray, code: np.ndarray, stats: ItemStats) -> None:
    """The features that depend on the shopper: their taste for popular and for new things,
    their categories and tags, their ratings and their groups (rows of one query)."""
    _, history_items, _, ratings, groups = entry
    recent = list(history_items)[:RECENT]
    # the shopper's taste for popular and for new things: their recent items as of now
    past = np.array([k for k in (stats.index.get(i, -1) for i in recent) if k >= 0], dtype=np.int64)
    taste_pop = taste_age = 0.0
    if len(past):
        p_users, _, _, p_first, _ = stats.at(past, now)
        seen = p_users > 0
        if seen.any():
            taste_pop = float(np.mean(np.log1p(p_users[seen]))) / POP_SCALE
            taste_age = float(np.mean(np.log1p(np.maximum(now - p_first[seen], 0) / DAY))) / 8.0
    if recent and stats.n_categories:
        # the share of the shopper's recent items in the candidate's category
        mine = code[past] if len(past) else past
        per_category = np.bincount(mine[mine >= 0], minlength=stats.n_categories)
        cand = np.where(index >= 0, code[np.maximum(index, 0)], -1)
        out[:, g + 8] = np.where(cand >= 0, per_category[np.maximum(cand, 0)], 0) / len(recent)
    out[:, g + 9] = math.log1p(len(history_items)) / 6.0
    if taste_pop or taste_age:
        out[:, g + 10] = taste_pop
        out[:, g + 11] = taste_age
        out[:, g + 12] = np.abs(out[:, g + 2] - taste_pop)
        out[touched, g + 13] = np.abs(out[touched, g + 5] - taste_age)
    known = np.flatnonzero(index >= 0)
    if len(known):
        out[known, g + 14] = stats.tag_overlap(index[known], past)
        if groups is not None and len(groups) and (groups >= 0).any():
            lift = stats.group_lift(index[known], users[known].astype(np.int64), groups)[:, groups >= 0]
            out[known, g + 17] = lift.mean(axis=1) / 2.0
            out[known, g + 18] = lift.max(axis=1) / 2.0
    if len(ratings):
        out[:, g + 16] = (float(np.mean(ratings)) - stats.rating_mean) / stats.rating_scale
