"""Top-K ranking metrics with binary relevance. Pure functions; tests check them by hand."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

METRICS = ("ndcg", "recall", "hit", "mrr", "precision")


def user_metrics(ranked: Sequence[str], relevant: Iterable[str], k: int) -> dict[str, float]:
    """Metrics of one ranked list against the set of relevant items."""
    rel = set(relevant)
    if not rel:
        raise ValueError("a user without relevant items cannot be scored")
    top = list(ranked[:k])
    hits = [i for i, item in enumerate(top) if item in rel]
    dcg = sum(1.0 / math.log2(i + 2) for i in hits)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
    return {
        "ndcg": dcg / idcg,
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
