"""Offline evaluation: per-user chronological hold-out, full ranking, top-K metrics.

Protocol: each user's distinct items in order of first interaction; users with at least
`min_interactions` of them have their newest share held out (at least one item). Every
event from the first held-out item on is hidden; the relevant items are those first met
in the hidden part. Candidates are ranked over the whole catalogue minus the user's
visible items. The same split, applied again to the visible part, gives the validation
examples that tune the ranker (train / validation / test = 80 / 10 / 10 per user)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Dataset
from .metrics import aggregate
from .types import Query


@dataclass
class Holdout:
    visible: Dataset                 # every event before each user's cut
    users: np.ndarray                # held-out users (indices)
    relevant: list[frozenset[str]]   # items each of them first met after the cut
    queries: list[Query]             # what the recommender knows at the cut


def holdout(data: Dataset, share: float = 0.1, min_interactions: int = 5,
            history: int | None = None, max_users: int | None = None, seed: int = 0) -> Holdout:
    keep = np.ones(data.n_events, dtype=bool)
    names = data.item_names
    users, relevant, cuts = [], [], []
    for u in range(data.n_users):
        idx = data.user_events(u)
        if len(idx) < min_interactions:
            continue
        seq = data.items[idx]
        _, first = np.unique(seq, return_index=True)
        m = len(first)
        if m < min_interactions:
            continue
        n_hold = max(1, int(round(share * m)))
        cut = np.sort(first)[m - n_hold]
        before = set(seq[:cut].tolist())
        rel = frozenset(names[i] for i in set(seq[cut:].tolist()) - before)
        keep[idx[cut:]] = False
        users.append(u)
        relevant.append(rel)
        cuts.append(float(data.ts[idx[cut]]))
    visible = data.subset(keep)
    chosen = np.arange(len(users))
    if max_users is not None and len(users) > max_users:
        chosen = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
    queries = []
    for j in chosen:
        u = users[j]
        seen = frozenset(names[i] for i in visible.items[visible.user_events(u)].tolist())
        queries.append(Query(user_id=str(data.user_ids[u]), history=visible.history(u, history),
                             exclude=seen, now=cuts[j]))
    return Holdout(visible, np.asarray(users)[chosen] if users else np.zeros(0, np.int64),
                   [relevant[j] for j in chosen], queries)


def score_lists(ranked: list[list[str]], split: Holdout, k: int, n_items: int) -> dict[str, float]:
    return aggregate(ranked, split.relevant, k, n_items)
