"""Top-K ranking metrics with binary relevance. Pure functions; tests check them by hand."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

METRICS = ("ndcg", "recall", "hit", "mrr", "precision")

@lru_cache(maxsize=64)
def _tables(k: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """1 / log2(rank + 1) of ranks 1..k, and the DCG of 0..k hits at the top (summed in
    rank order, as a DCG is)."""
    discounts = tuple(1.0 / math.log2(i + 2) for i in range(k))
    ideal = [0.0]
    for d in discounts:
        ideal.append(ideal[-1] + d)
    return discounts, tuple(ideal)


def ndcg_at(hits, n_relevant, k: int = 10):
    """NDCG@k with binary relevance.

    `hits`: whether the item at each rank is relevant, best first — one list, or a 2-D array
    with one list per row (a list shorter than k counts its own length). `n_relevant`: how
    many relevant items the list's shopper has (an int, or one per row); the ideal list puts
    min(n_relevant, k) of them first. Returns a float for one list, an array for rows; 0
    where nothing is relevant."""
    discounts, ideal = _tables(k)
    if np.ndim(hits) == 1:
        dcg = sum(discounts[i] for i, hit in enumerate(hits[:k]) if hit)
        best = ideal[min(int(n_relevant), k)]
        return dcg / best if best else 0.0
    h = np.asarray(hits, dtype=bool)[:, :k]
    dcg = np.zeros(len(h))
    for j in range(h.shape[1]):  # rank by rank: the same sums as one list at a time
        dcg += h[:, j] * discounts[j]
    best = np.asarray(ideal)[np.minimum(np.asarray(n_relevant, dtype=np.int64), k)]
    return np.divide(dcg, best, out=np.zeros(len(h)), where=best > 0)


def user_metrics(ranked: Sequence[str], relevant: Iterable[str], k: int) -> dict[str, float]:
    """Metrics of one ranked list against the set of relevant items."""
    rel = set(relevant)
    if not rel:
        raise ValueError("a user without relevant items cannot be scored")
    top = list(ranked[:k])
    hits = [i for i, item in enumerate(top) if item in rel]
    return {
        "ndcg": ndcg_at([item in rel for item in top], len(rel), k),
        "recall": len(hits) / len(rel),
        "hit": 1.0 if hits else 0.0,
        "mrr": 1.0 / (hits[0] + 1) if hits else 0.0,
        "precision": len(hits) / k,
    }


def aggregate(ranked_lists: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]],
              k: int, n_items: int) -> dict[str, float]:
    """Mean of each metric over users, plus coverage@k: distinct recommended items / catalogue."""
    if len(ranked_lists) != len(relevant):
        raise ValueError("one ranked list per user is needed")
    totals = dict.fromkeys(METRICS, 0.0)
    shown: set[str] = set()
    for ranked, rel in zip(ranked_lists, relevant):
        for name, value in user_metrics(ranked, rel, k).items():
            totals[name] += value
        shown.update(ranked[:k])
    n = max(len(ranked_lists), 1)
    out = {f"{name}@{k}": totals[name] / n for name in METRICS}
    out[f"coverage@{k}"] = len(shown) / n_items if n_items else 0.0
    out["users"] = len(ranked_lists)
    return out
