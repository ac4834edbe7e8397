"""Dataset: the events and catalogue as numpy arrays, the one thing recallers fit on.

Built from the store by the engine (the whole history for `train`, a chronological split
for `evaluate`). Users and items are integer indices into `user_ids` / `item_ids`; every
split of one dataset shares the same indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:  # scipy costs 0.1 s to import; `shelfwise --help` should not pay it
    import scipy.sparse as sp

from .types import Interaction

DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "view": 1.0, "click": 1.0, "cart": 4.0, "purchase": 8.0, "rating": 4.0,
}


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
    store: object | None = None           # engine.store.Store, for plugins reading more tables

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
            categories=self.categories, store=self.store,
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
    def from_arrays(cls, user_ids, item_ids, kinds, ts, values=None, catalogue=(),
                    kind_weights=None, **extra) -> "Dataset":
        """Build from parallel sequences of ids (used by the store and by tests)."""
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
        return cls(
            item_ids=i_names, user_ids=u_names.astype(str),
            users=users.astype(np.int32), items=items.astype(np.int32),
            kinds=kinds_idx.astype(np.int16), values=vals, ts=ts[order],
            kind_names=tuple(k_names.tolist()),
            kind_weights=dict(kind_weights or DEFAULT_KIND_WEIGHTS), known=known, **extra,
        )
