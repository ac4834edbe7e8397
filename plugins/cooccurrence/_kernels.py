"""Co-occurrence counting and similarity. Pure numpy/scipy, no I/O."""

from __future__ import annotations

import numpy as np


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
    """Symmetric co-occurrence counts from per-user item sequences, as one CSR structure.

    Each distinct interaction pairs with the previous `window` distinct items of the same
    user. C[a, b] adds min(strength_a, strength_b); S[a, b] counts pairs where both
    strengths are >= strong_at ("bought together"). Returns (indptr, indices, [C, S])."""
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
        return summed_csr(np.zeros(0, np.int64), np.zeros(0, np.int64), [np.zeros(0), np.zeros(0)], n_items)
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts, strongs = np.concatenate(vals), np.concatenate(strong)
    return summed_csr(np.concatenate([r, c]), np.concatenate([c, r]),
                      [np.concatenate([counts, counts]), np.concatenate([strongs, strongs])], n_items)


def summed_csr(rows, cols, values, n):
    """CSR structure (indptr, indices) of the distinct (row, col) pairs and, for each array in
    `values`, its sums aligned with that structure. All arrays share one sparsity pattern
    (scipy keeps explicit zeros when it sums duplicates, so the patterns are identical)."""
    import scipy.sparse as sp  # here, not at the top: `shelfwise --help` loads every plugin

    indptr = indices = None
    sums = []
    for v in values:
        m = sp.coo_matrix((np.asarray(v, dtype=np.float32), (rows, cols)), shape=(n, n)).tocsr()
        m.sort_indices()
        if indptr is None:
            indptr, indices = m.indptr.astype(np.int64), m.indices.astype(np.int32)
        elif not (np.array_equal(indptr, m.indptr) and np.array_equal(indices, m.indices)):
            raise AssertionError("co-occurrence matrices lost their common structure")
        sums.append(m.data.astype(np.float32))
    if indptr is None:
        indptr, indices = np.zeros(n + 1, np.int64), np.zeros(0, np.int32)
    return indptr, indices, sums


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
