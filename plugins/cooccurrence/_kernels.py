"""Co-occurrence counting and similarity. Pure numpy/scipy, no I/O."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def distinct_interactions(users, items, weights, n_items):
    """Collapse events (in time order) to distinct user-item pairs.

    Returns (users, items, strength) ordered by user, then first interaction time;
    strength is the pair's strongest event weight."""
    key = users.astype(np.int64) * n_items + items
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    strength = np.zeros(len(uniq), dtype=np.float64)
    np.maximum.at(strength, inverse, weights)
    order = np.lexsort((first, uniq // n_items))
    return (uniq[order] // n_items).astype(np.int64), (uniq[order] % n_items).astype(np.int64), strength[order]


def pair_counts(users, items, strength, n_items, window, strong_at):
    """Symmetric co-occurrence matrices from per-user item sequences.

    Each distinct interaction pairs with the previous `window` distinct items of the same
    user. C[a, b] adds min(strength_a, strength_b); S[a, b] counts pairs where both
    strengths are >= strong_at ("bought together")."""
    rows, cols, vals, strong = [], [], [], []
    for d in range(1, window + 1):
        same = users[d:] == users[:-d]
        if not same.any():
            break
        a, b = items[:-d][same], items[d:][same]
        sa, sb = strength[:-d][same], strength[d:][same]
        rows.append(a)
        cols.append(b)
        vals.append(np.minimum(sa, sb))
        strong.append(((sa >= strong_at) & (sb >= strong_at)).astype(np.float32))
    if not rows:
        empty = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        return empty, empty.copy()
    r, c = np.concatenate(rows), np.concatenate(cols)
    both_r, both_c = np.concatenate([r, c]), np.concatenate([c, r])
    C = sp.csr_matrix((np.concatenate(vals * 2).astype(np.float32), (both_r, both_c)),
                      shape=(n_items, n_items))
    S = sp.csr_matrix((np.concatenate(strong * 2), (both_r, both_c)), shape=(n_items, n_items))
    C.sum_duplicates()
    S.sum_duplicates()
    return C, S


def pair_counts_reference(sequences, n_items, window, strong_at):
    """Slow version of pair_counts over {user: [(item, strength), ...]} in time order."""
    C = np.zeros((n_items, n_items))
    S = np.zeros((n_items, n_items))
    for seq in sequences.values():
        for k, (b, sb) in enumerate(seq):
            for a, sa in seq[max(0, k - window):k]:
                C[a, b] += min(sa, sb)
                C[b, a] += min(sa, sb)
                if sa >= strong_at and sb >= strong_at:
                    S[a, b] += 1
                    S[b, a] += 1
    return C, S


def similarity(counts: np.ndarray, degree_a: float, degree_b: np.ndarray, shrinkage: float) -> np.ndarray:
    """Cosine-normalised co-occurrence, shrunk towards 0 when the count is small."""
    return counts / np.sqrt(np.maximum(degree_a * degree_b, 1e-12)) * counts / (counts + shrinkage)
