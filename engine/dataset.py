"""Dataset: the events and catalogue as numpy arrays, the one thing recallers fit on.

Built from the store by the engine (the whole history for `train`, a chronological split
for `evaluate`). Users and items are integer indices into `user_ids` / `item_ids`; every
split of one dataset shares the same indices, and the same `catalogue` (category, brand,
price, tags, attributes, stock and text of each item) and `user_attrs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:  # scipy costs 0.1 s to import; `shelfwise --help` should not pay it
    import scipy.sparse as sp

from .helpers import TEXT_FIELDS, item_text
from .types import Interaction, Item

DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "view": 1.0, "click": 1.0, "cart": 4.0, "purchase": 8.0, "rating": 4.0,
}

@dataclass(frozen=True)
class Catalogue:
    """The catalogue fields a recaller may use, one row per item of a `Dataset`: row i
    describes `Dataset.item_ids[i]`, and the arrays are aligned the same way.

    `data.catalogue[i]` is that item as an `Item` (title, description, category, brand,
    price, tags, in_stock, attrs); `data.catalogue.brands[i]` the same field of every item
    at once. An item that occurs only in events (`known[i]` False) has an empty row: no
    category, brand, price or tags, and out of stock."""

    rows: tuple[Item, ...]
    known: np.ndarray  # (n_items,) bool: the item is in the catalogue

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Item:
        return self.rows[i]

    @cached_property
    def index(self) -> dict[str, int]:
        return {item.item_id: i for i, item in enumerate(self.rows)}

    def get(self, item_id: str) -> Item | None:
        """The catalogue's item of that id; None when it is not in the catalogue."""
        i = self.index.get(item_id)
        return self.rows[i] if i is not None and self.known[i] else None

    def text(self, i: int, fields: Iterable[str] = TEXT_FIELDS) -> str:
        """Row i's text (`engine.item_text`): its non-empty fields joined by ". "."""
        return item_text(self.rows[i], fields)

    @cached_property
    def categories(self) -> np.ndarray:
        """(n_items,) str, "" when none."""
        return np.array([item.category for item in self.rows], dtype=str)

    @cached_property
    def brands(self) -> np.ndarray:
        """(n_items,) str, "" when none."""
        return np.array([item.brand for item in self.rows], dtype=str)

    @cached_property
    def prices(self) -> np.ndarray:
        """(n_items,) float64, nan when none."""
        return np.array([np.nan if item.price is None else item.price for item in self.rows], np.float64)

    @cached_property
    def in_stock(self) -> np.ndarray:
        """(n_items,) bool."""
        return np.array([item.in_stock for item in self.rows], dtype=bool)

    @property
    def tags(self) -> list[tuple[str, ...]]:
        return [item.tags for item in self.rows]

    @property
    def attrs(self) -> list[Mapping[str, Any]]:
        return [item.attrs for item in self.rows]


@dataclass
class Dataset:
    item_ids: np.ndarray            # (n_items,) str
    user_ids: np.ndarray            # (n_users,) str
    users: np.ndarray               # (n_events,) int32 index into user_ids
    items: np.ndarray               # (n_events,) int32 index into item_ids
    kinds: np.ndarray               # (n_events,) int16 index into kind_names
    values: np.ndarray              # (n_events,) float32, nan when absent
    ts: np.ndarray                  # (n_events,) float64 epoch seconds, non-decreasing
    kind_names: tuple[str, ...]
    kind_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    in_stock: np.ndarray | None = None    # (n_items,) bool; None: all in stock
    known: np.ndarray | None = None       # (n_items,) bool: item is in the catalogue
    categories: np.ndarray | None = None  # (n_items,) str
    store: object | None = None           # engine.store.Store: where `catalogue` and `user_attrs` come from
    items_by_id: Mapping[str, Item] | None = None  # the catalogue's items (None: the store's)
    _shared: dict = field(default_factory=dict, repr=False, compare=False)  # what every split shares

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        return len(self.users)

    @property
    def now(self) -> float:
        return float(self.ts[-1]) if len(self.ts) else 0.0

    @cached_property
    def item_names(self) -> list[str]:
        """`item_ids` as one list of Python strings, shared by every history and query built
        from this dataset (a str made per event took 60 bytes each time)."""
        return self.item_ids.tolist()

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_names)}

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {user: i for i, user in enumerate(self.user_ids.tolist())}

    @property
    def catalogue(self) -> Catalogue:
        """Each item's catalogue fields (category, brand, price, tags, attributes, stock and
        text), aligned to `item_ids`: `data.catalogue.brands[i]`, or `data.item(id).brand`.
        Read once, when first asked for, and shared by every split of this dataset."""
        if "catalogue" not in self._shared:
            self._shared["catalogue"] = self._read_catalogue()
        return self._shared["catalogue"]

    def item(self, item_id: str) -> Item | None:
        """The catalogue's item of that id (None when it is not in the catalogue)."""
        return self.catalogue.get(item_id)

    def _read_catalogue(self) -> Catalogue:
        given = self.items_by_id
        if given is None and self.store is not None:
            given = {item.item_id: item for item in self.store.catalogue()}
        known = self.known if self.known is not None else np.ones(self.n_items, bool)
        rows = []
        for i, item_id in enumerate(self.item_names):
            item = given.get(item_id) if given else None
            if item is None:  # in events only, or a dataset built without the fields
                stock = bool(self.in_stock[i]) if self.in_stock is not None else bool(known[i])
                category = str(self.categories[i]) if self.categories is not None else ""
                item = Item(item_id, category=category, in_stock=stock)
            rows.append(item)
        return Catalogue(tuple(rows), np.asarray(known, dtype=bool))

    @property
    def user_attrs(self) -> Mapping[str, Mapping[str, Any]]:
        """The attributes imported with the dataset's shoppers (segment, country, …), by
        user id; shoppers without any are left out. Shared by every split."""
        if "user_attrs" not in self._shared:
            ids = [str(u) for u in self.user_ids]
            self._shared["user_attrs"] = self.store.user_attrs(ids) if self.store is not None and ids else {}
        return self._shared["user_attrs"]

    def kind_weight(self, kind: str) -> float:
        return float(self.kind_weights.get(kind, 1.0))

    def event_weights(self) -> np.ndarray:
        """Weight of each event by its kind (purchase > cart > view)."""
        table = np.array([self.kind_weight(k) for k in self.kind_names], dtype=np.float32)
        return table[self.kinds] if len(self.kind_names) else np.zeros(0, np.float32)

    def matrix(self, weights: np.ndarray | None = None) -> sp.csr_matrix:
        """Users x items, summed event weights (duplicates added)."""
        import scipy.sparse as sp

        w = self.event_weights() if weights is None else weights
        m = sp.csr_matrix((w.astype(np.float32), (self.users, self.items)),
                          shape=(self.n_users, self.n_items), dtype=np.float32)
        m.sum_duplicates()
        return m

    def subset(self, mask: np.ndarray) -> "Dataset":
        """The same catalogue and indices, only the events where mask is True."""
        return Dataset(
            item_ids=self.item_ids, user_ids=self.user_ids,
            users=self.users[mask], items=self.items[mask], kinds=self.kinds[mask],
            values=self.values[mask], ts=self.ts[mask], kind_names=self.kind_names,
            kind_weights=self.kind_weights, in_stock=self.in_stock, known=self.known,
            categories=self.categories, store=self.store, items_by_id=self.items_by_id,
            _shared=self._shared,
        )

    @cached_property
    def _by_user(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.users, kind="stable")  # ts order kept within a user
        bounds = np.searchsorted(self.users[order], np.arange(self.n_users + 1))
        return order, bounds

    def user_events(self, user: int) -> np.ndarray:
        """Indices of a user's events, oldest first."""
        order, bounds = self._by_user
        return order[bounds[user]:bounds[user + 1]]

    def history(self, user: int, limit: int | None = None) -> tuple[Interaction, ...]:
        idx = self.user_events(user)
        if limit is not None:
            idx = idx[-limit:]
        names, kinds = self.item_names, self.kind_names
        values = self.values[idx].tolist()
        return tuple(
            Interaction(names[i], kinds[k], t, None if v != v else v)  # v != v: nan
            for i, k, t, v in zip(self.items[idx].tolist(), self.kinds[idx].tolist(),
                                  self.ts[idx].tolist(), values)
        )

    def item_popularity(self) -> np.ndarray:
        """Distinct users per item."""
        m = self.matrix()
        return np.asarray((m > 0).sum(axis=0)).ravel()

    @classmethod
    def from_rows(cls, rows, catalogue: Iterable[str] = (), kind_weights=None,
                  chunk: int = 500_000, **extra) -> "Dataset":
        """Build from a cursor of (user_id, item_id, kind, value, ts) rows in time order, as
        the store reads them, `chunk` rows at a time: ids become integer codes as they come,
        so no Python object per event outlives its chunk (20 million events as tuples and
        strings took over 10 GB). Gives the same Dataset as `from_arrays` of the same rows
        (ids, kinds and catalogue sorted; equal times keep the rows' order)."""
        codes: tuple[dict, dict, dict] = ({}, {}, {})  # user, item, kind -> first-seen code
        parts: list[list[np.ndarray]] = [[], [], [], [], []]
        nan = float("nan")
        while block := rows.fetchmany(chunk):
            users, items, kinds, values, ts = zip(*block)
            del block
            for column, code, out in zip((users, items, kinds), codes, parts):
                out.append(np.fromiter((code.setdefault(x, len(code)) for x in column),
                                       np.int32, len(column)))
            parts[3].append(np.array([nan if v is None else v for v in values], np.float32))
            parts[4].append(np.array(ts, np.float64))
        cat = list(catalogue)
        for item in cat:
            codes[1].setdefault(item, len(codes[1]))
        (u_names, u_rank), (i_names, i_rank), (k_names, k_rank) = (_sorted_names(c) for c in codes)
        users, items, kinds, values, ts = (np.concatenate(p) if p else np.zeros(0, dt) for p, dt in
                                           zip(parts, (np.int32, np.int32, np.int32, np.float32, np.float64)))
        order = np.argsort(ts, kind="stable") if np.any(ts[1:] < ts[:-1]) else slice(None)
        known = np.isin(i_names, np.asarray(cat, dtype=str)) if cat else np.ones(len(i_names), bool)
        return cls(
            item_ids=i_names, user_ids=u_names, users=u_rank[users[order]],
            items=i_rank[items[order]], kinds=k_rank[kinds[order]].astype(np.int16),
            values=values[order], ts=ts[order], kind_names=tuple(k_names.tolist()),
            kind_weights=dict(kind_weights or DEFAULT_KIND_WEIGHTS), known=known, **extra,
        )

    @classmethod
    def from_arrays(cls, user_ids, item_ids, kinds, ts, values=None, catalogue=(),
                    kind_weights=None, **extra) -> "Dataset":
        """Build from parallel sequences of ids (used by the store and by tests).
        `catalogue`: the catalogue's item ids, or its `Item`s (which then fill `catalogue`,
        `in_stock` and `categories`)."""
        catalogue = list(catalogue)
        given = {it.item_id: it for it in catalogue if isinstance(it, Item)}
        catalogue = [it.item_id if isinstance(it, Item) else it for it in catalogue]
        ts = np.asarray(ts, dtype=np.float64)
        order = np.argsort(ts, kind="stable")
        u_names, users = np.unique(np.asarray(user_ids, dtype=str)[order], return_inverse=True)
        all_items = np.asarray(item_ids, dtype=str)[order]
        cat = np.asarray(list(catalogue), dtype=str)
        i_names = np.unique(np.concatenate([cat, all_items])) if len(cat) or len(all_items) \
            else np.zeros(0, dtype=str)
        items = np.searchsorted(i_names, all_items)
        k_names, kinds_idx = np.unique(np.asarray(kinds, dtype=str)[order], return_inverse=True)
        vals = (np.full(len(ts), np.nan, np.float32) if values is None
                else np.asarray([np.nan if v is None else v for v in values], np.float32)[order])
        known = np.isin(i_names, cat) if len(cat) else np.ones(len(i_names), bool)
        if given:
            rows = [given.get(i) for i in i_names.tolist()]
            extra = {"items_by_id": given,
                     "in_stock": np.array([it is not None and it.in_stock for it in rows], bool),
                     "categories": np.array([it.category if it else "" for it in rows], dtype=str),
                     **extra}
        return cls(
            item_ids=i_names, user_ids=u_names.astype(str),
            users=users.astype(np.int32), items=items.astype(np.int32),
            kinds=kinds_idx.astype(np.int16), values=vals, ts=ts[order],
            kind_names=tuple(k_names.tolist()),
            kind_weights=dict(kind_weights or DEFAULT_KIND_WEIGHTS), known=known, **extra,
        )


def _sorted_names(code: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(the names in sorted order, each first-seen code's index in it) of a name -> code
    mapping whose codes are 0, 1, 2, ... in insertion order."""
    names = np.array(list(code), dtype=str)
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(names), np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    return names[order], rank
