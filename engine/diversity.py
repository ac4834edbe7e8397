"""Maximal marginal relevance (Carbonell & Goldstein, 1998): the re-rank that trades a
little of the ranker's order for lists that are not ten of a kind.

Greedily, each next place goes to the candidate with the highest

    (1 - λ) · relevance(i) - λ · max over the items already placed j of sim(i, j)

where relevance is the ranker's order as a score in [0, 1] and sim is the cosine of the
item vectors (category equality for an item without one). λ = 0 is the ranker's order.

Pure numpy, no I/O: `mmr` works on whole arrays (one pass over the pool per place), and
`mmr_reference` is the plain loop it is tested against."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["rank_relevance", "score_relevance", "similarity", "mmr", "mmr_reference"]


def rank_relevance(count: int) -> np.ndarray:
    """The ranker's order as relevance: 1 for the first of `count`, falling evenly."""
    return 1.0 - np.arange(count, dtype=np.float64) / max(count, 1)


def score_relevance(scores: Sequence[float]) -> np.ndarray:
    """The ranker's scores scaled to [0, 1] over the pool (min-max). Scores that are not
    finite, or all equal, fall back to the order (`rank_relevance`)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0 or not np.isfinite(s).all():
        return rank_relevance(len(s))
    span = s.max() - s.min()
    if span <= 0:
        return rank_relevance(len(s))
    return (s - s.min()) / span


def similarity(vectors: np.ndarray, has_vector: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Pairwise similarity of a pool: the cosine of the (unit-length) `vectors` where both
    items have one (`has_vector`), else 1 when both are in the same named category
    (`categories`: an integer code per item, -1 for none) and 0 otherwise."""
    sim = (vectors @ vectors.T).astype(np.float64) if len(vectors) else np.zeros((0, 0))
    if has_vector.all():
        return sim
    both = has_vector[:, None] & has_vector[None, :]
    same = (categories[:, None] == categories[None, :]) & (categories[:, None] >= 0)
    return np.where(both, sim, same)


def mmr(relevance: np.ndarray, sim: np.ndarray, n: int, weight: float) -> tuple[list[int], list[bool]]:
    """The first `n` of the pool in MMR order: (indices into the pool, whether each was
    chosen over a candidate the ranker placed higher). Ties go to the ranker's order."""
    count = len(relevance)
    n = min(n, count)
    if n <= 0:
        return [], []
    gain = (1.0 - weight) * np.asarray(relevance, dtype=np.float64)  # -inf once placed
    penalty = weight * np.asarray(sim, dtype=np.float64)
    nearest = np.full(count, -np.inf)   # λ x the highest similarity to what is placed so far
    value = gain.copy()                 # what each candidate is worth at this step
    placed = [False] * count
    order, jumped = [], []
    first = 0                           # the ranker's best candidate not yet placed
    for _ in range(n):
        best = int(np.argmax(value))    # the first of equal values: the ranker's order
        order.append(best)
        jumped.append(best != first)
        placed[best] = True
        while first < count and placed[first]:
            first += 1
        gain[best] = -np.inf
        np.maximum(nearest, penalty[best], out=nearest)
        np.subtract(gain, nearest, out=value)
    return order, jumped


def mmr_reference(relevance: Sequence[float], sim, n: int, weight: float) -> tuple[list[int], list[bool]]:
    """`mmr` as the textbook loop, one candidate at a time (for tests)."""
    left = list(range(len(relevance)))
    order: list[int] = []
    jumped: list[bool] = []
    while left and len(order) < n:
        def value(i: int) -> float:
            penalty = max((float(sim[i][j]) for j in order), default=0.0)
            return (1.0 - weight) * float(relevance[i]) - weight * penalty
        best = max(left, key=value)
        jumped.append(best != left[0])
        left.remove(best)
        order.append(best)
    return order, jumped
