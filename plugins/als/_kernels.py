"""Numeric kernels of implicit-feedback ALS (Hu, Koren, Volinsky 2008). Pure numpy."""

from __future__ import annotations

import numpy as np


def confidence(weights: np.ndarray, alpha: float) -> np.ndarray:
    """Confidence of a positive observation from its summed event weight: 1 + alpha*log1p(w)."""
    return 1.0 + alpha * np.log1p(weights)


def fold_in(item_factors: np.ndarray, gram: np.ndarray, rows: list[tuple[np.ndarray, np.ndarray]],
            regularization: float) -> np.ndarray:
    """User factors for histories unseen at training time: one exact ALS half-step.

    x_u = (YᵀY + Yᵀ(C_u − I)Y + λI)⁻¹ Yᵀ C_u p_u, with `rows[u] = (item indices, confidences)`.
    `gram` is YᵀY. Solved for all users at once."""
    n, f = len(rows), item_factors.shape[1]
    a = np.broadcast_to(gram + regularization * np.eye(f, dtype=gram.dtype), (n, f, f)).copy()
    b = np.zeros((n, f), dtype=np.float64)
    for u, (items, conf) in enumerate(rows):
        if len(items) == 0:
            continue
        y = item_factors[items].astype(np.float64)
        a[u] += (y * (conf - 1.0)[:, None]).T @ y
        b[u] = conf @ y
    return np.linalg.solve(a, b[..., None])[..., 0].astype(np.float32)


def fold_in_reference(item_factors, gram, rows, regularization):
    """Slow, obvious version of fold_in (one user, one outer product at a time)."""
    f = item_factors.shape[1]
    out = np.zeros((len(rows), f), dtype=np.float32)
    for u, (items, conf) in enumerate(rows):
        a = gram + regularization * np.eye(f)
        b = np.zeros(f)
        for i, c in zip(items, conf):
            y = item_factors[i].astype(np.float64)
            a = a + (c - 1.0) * np.outer(y, y)
            b = b + c * y
        out[u] = np.linalg.solve(a, b)
    return out
