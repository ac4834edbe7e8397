"""The per-user chronological 80/10/10 split of `bench_sequence.py`, and its metric.

Needs only the standard library and numpy, so the RecBole peer (in its own virtualenv,
`benchmarks/peers/sasrec_recbole.py`) reads exactly the same split as Shelfwise.

Each user's interactions are ordered by time, ties by item id; the oldest 80% (rounded
down, at least one) are train, the next 10% validation, the newest 10% test (rounded so
that a user with 10 or more interactions has at least one of each). A model is trained on
the train part and chooses its settings (epochs, early stopping) on the validation part;
at test time it sees each user's train + validation history and ranks every item except
those, scored with NDCG@10 against the user's test items (binary relevance)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

K = 10


@dataclass
class Split:
    """Interactions as (user, item, rating, timestamp) rows, time-ordered within a user."""

    train: list[tuple[str, str, float, float]] = field(default_factory=list)
    valid: list[tuple[str, str, float, float]] = field(default_factory=list)
    test: list[tuple[str, str, float, float]] = field(default_factory=list)

    def users(self) -> list[str]:
        """Users with at least one test item, in a fixed order."""
        return sorted({u for u, *_ in self.test}, key=_natural)

    def items(self) -> list[str]:
        return sorted({i for part in (self.train, self.valid, self.test) for _, i, *_ in part}, key=_natural)

    def relevant(self, part: str = "test") -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for u, i, *_ in getattr(self, part):
            out.setdefault(u, set()).add(i)
        return out

    def history(self, upto: str = "valid") -> dict[str, list[str]]:
        """Each user's items, oldest first: train (upto="train") or train + validation."""
        parts = [self.train] + ([self.valid] if upto == "valid" else [])
        out: dict[str, list[str]] = {}
        for part in parts:
            for u, i, *_ in part:
                out.setdefault(u, []).append(i)
        return out


def _natural(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def read_ml100k_inter(path: str | Path) -> list[tuple[str, str, float, float]]:
    """RecBole's ml-100k.inter: user_id, item_id, rating, timestamp (tab separated, typed header)."""
    with open(path, encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        return [(u, i, float(r), float(t)) for u, i, r, t in rows]


def chronological_split(rows, train: float = 0.8, valid: float = 0.1) -> Split:
    by_user: dict[str, list[tuple[str, str, float, float]]] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    out = Split()
    for user in sorted(by_user, key=_natural):
        seq = sorted(by_user[user], key=lambda r: (r[3], _natural(r[1])))
        n = len(seq)
        n_test = max(1, round(n * (1 - train - valid))) if n >= 3 else 0
        n_valid = max(1, round(n * valid)) if n >= 3 else 0
        n_train = n - n_valid - n_test
        out.train += seq[:n_train]
        out.valid += seq[n_train:n_train + n_valid]
        out.test += seq[n_train + n_valid:]
    return out


def ndcg(ranked: list[str], relevant: set[str], k: int = K) -> float:
    """NDCG@k with binary relevance; the ideal list puts min(k, |relevant|) hits first."""
    dcg = sum(1.0 / math.log2(p + 2) for p, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(p + 2) for p in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def per_user_ndcg(top: dict[str, list[str]], relevant: dict[str, set[str]], k: int = K) -> np.ndarray:
    """NDCG@k of every user of `relevant` (sorted), 0 for a user without a list."""
    return np.array([ndcg(top.get(u, []), relevant[u], k) for u in sorted(relevant, key=_natural)])


def paired_interval(a: np.ndarray, b: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """Mean of a − b over the same users and its normal-approximation 95% interval."""
    d = np.asarray(a, float) - np.asarray(b, float)
    half = z * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def ratio_interval(a: np.ndarray, b: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """mean(a) / mean(b) over the same users with a delta-method 95% interval (paired)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ma, mb, n = a.mean(), b.mean(), len(a)
    r = ma / mb
    var = (a.var(ddof=1) - 2 * r * np.cov(a, b)[0, 1] + r * r * b.var(ddof=1)) / (n * mb * mb)
    half = z * math.sqrt(max(var, 0.0))
    return float(r), float(r - half), float(r + half)
