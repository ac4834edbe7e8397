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


PAIR_CHUNK = 4_000_000  # entries summed at a time (each ~40 bytes while being summed)


def pair_counts(users, items, strength, n_items, window, strong_at, chunk=PAIR_CHUNK):
    """Symmetric co-occurrence counts from per-user item sequences, as one CSR structure.

    Each distinct interaction pairs with the previous `window` distinct items of the same
    user. C[a, b] adds min(strength_a, strength_b); S[a, b] counts pairs where both
    strengths are >= strong_at ("bought together"). Returns (indptr, indices, [C, S]).

    Summed a block of rows at a time (`blocked_parts`): all pairs at once took 2.9 GB on a
    shop of 2 million events. A block reads only the interactions of its own items
    (`positions_by_item`): scanning every interaction for every block took 25 minutes on
    20 million events."""
    return joined_csr(*pair_blocks(users, items, strength, n_items, window, strong_at, chunk))


def pair_blocks(users, items, strength, n_items, window, strong_at, chunk=PAIR_CHUNK):
    """`pair_counts`' blocks (`blocked_parts`), not yet joined: the caller lets go of the
    interactions first (the join is the fit's peak). The padded copies and the positions
    made here are gone by then."""
    dists = _distances(users, window)
    per_row = np.zeros(n_items, np.int64)
    for d in dists:
        same = users[d:] == users[:-d]
        per_row += np.bincount(items[:-d][same], minlength=n_items)
        per_row += np.bincount(items[d:][same], minlength=n_items)
    w = max(dists, default=0)
    # padded with `w` entries of no user at each end: p ± d never leaves the arrays
    users_p, items_p, strength_p = (padded(a, w, fill, dt) for a, fill, dt in (
        (users, -1, np.int32), (items, 0, np.int32), (strength, 0.0, np.float64)))
    positions = positions_by_item(items, n_items)

    def entries(lo, hi):
        p = positions(lo, hi) + w  # the block's interactions, in time order
        up, ip, sp = users_p[p], items_p[p], strength_p[p]
        sp_strong = sp >= strong_at
        rows, cols, vals, strong = [], [], [], []
        for sign in (1, -1):  # a -> b for every distance, then b -> a
            for d in dists:
                same = np.flatnonzero(users_p[p + sign * d] == up)
                q = p[same] + sign * d
                sb = strength_p[q]
                rows.append(ip[same])
                cols.append(items_p[q])
                vals.append(np.minimum(sp[same], sb))
                strong.append((sp_strong[same] & (sb >= strong_at)).astype(np.float32))
        return _cat(rows, np.int64), _cat(cols, np.int64), [_cat(vals, np.float64), _cat(strong, np.float32)]

    return blocked_parts(entries, per_row, 2, n_items, chunk)


def positions_by_item(items, n_items):
    """A function (lo, hi) -> the positions in `items` holding an item lo..hi-1, ascending:
    each block of `blocked_parts` finds its own interactions without a pass over all of them."""
    by_item = np.argsort(items, kind="stable")
    starts = np.searchsorted(items[by_item], np.arange(n_items + 1))

    def positions(lo, hi):
        return np.sort(by_item[starts[lo]:starts[hi]])
    return positions


def padded(a, w: int, fill, dtype) -> np.ndarray:
    out = np.full(len(a) + 2 * w, fill, dtype)
    out[w:w + len(a)] = a
    return out


def _distances(users, window) -> list[int]:
    """1..window, up to the first distance at which no user has two items."""
    out = []
    for d in range(1, window + 1):
        if d >= len(users) or not (users[d:] == users[:-d]).any():
            break
        out.append(d)
    return out


def _cat(parts, dtype):
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def blocked_parts(entries, per_row, n_values, n, chunk=PAIR_CHUNK):
    """`summed_csr` of a big set of (row, col, values) entries, a block of rows at a time so
    that only about `chunk` entries are held at once. `entries(lo, hi)` returns (rows, cols,
    [values...]) of the rows lo..hi-1, in the order in which all entries would come at once
    (then every row holds the same sequence and sums the same floats in the same order: the
    joined result equals `summed_csr` of everything); `per_row`: how many entries each row
    has. Returns the blocks for `joined_csr`: a caller lets go of what `entries` reads before
    they are joined into one structure (the join is the fit's peak)."""
    bounds = [0]
    if n:
        total = np.cumsum(per_row)
        cuts = np.searchsorted(total, np.arange(chunk, int(total[-1]), chunk), side="right")
        bounds += sorted(set(int(c) for c in cuts if 0 < c < n))
    bounds.append(n)
    indptr, indices, sums, at = [np.zeros(1, np.int64)], [], [[] for _ in range(n_values)], 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows, cols, values = entries(lo, hi)
        p, idx, vals = summed_csr(rows - lo, cols, values, hi - lo, n)
        indptr.append(p[1:] + at)
        indices.append(idx)
        for acc, v in zip(sums, vals):
            acc.append(v)
        at += len(idx)
    return indptr, indices, sums


def joined_csr(indptr, indices, sums):
    """The blocks of `blocked_parts` as one CSR structure (indptr, indices, sums), joined one
    array at a time, each block's parts let go as soon as they are copied: the blocks of all
    three at once and their joined copies took 2.8 GB at 120M pairs."""
    indices_all = _cat(indices, np.int32)
    indices.clear()
    joined = []
    for acc in sums:
        joined.append(_cat(acc, np.float32))
        acc.clear()
    return np.concatenate(indptr), indices_all, joined


def summed_csr(rows, cols, values, n, n_cols=None):
    """CSR structure (indptr, indices) of the distinct (row, col) pairs and, for each array in
    `values`, its sums aligned with that structure. All arrays share one sparsity pattern
    (scipy keeps explicit zeros when it sums duplicates, so the patterns are identical).
    `n` rows and `n_cols` columns (default: n). Two value arrays are summed as the real and
    imaginary parts of one complex64 matrix: one sort of the entries instead of two (the
    sort is most of the time), and each part's float32 sums are those of its own matrix."""
    import scipy.sparse as sp  # here, not at the top: `shelfwise --help` loads every plugin

    n_cols = n if n_cols is None else n_cols
    indptr = indices = None
    sums = []
    for k in range(0, len(values), 2):
        pair = values[k:k + 2]
        data = np.asarray(pair[0], dtype=np.float32)
        if len(pair) == 2:
            data = data + 1j * np.asarray(pair[1], dtype=np.float32)  # complex64
        m = sp.coo_matrix((data, (rows, cols)), shape=(n, n_cols)).tocsr()
        m.sort_indices()
        if indptr is None:
            indptr, indices = m.indptr.astype(np.int64), m.indices.astype(np.int32)
        elif not (np.array_equal(indptr, m.indptr) and np.array_equal(indices, m.indices)):
            raise AssertionError("co-occurrence matrices lost their common structure")
        if len(pair) == 2:
            sums += [m.data.real.astype(np.float32), m.data.imag.astype(np.float32)]
        else:
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
