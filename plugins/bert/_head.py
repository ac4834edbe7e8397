"""The scoring head in numpy, for serving a model whose text was not kept.

When the text stage does not beat the recall features beyond chance (the usual outcome on
the demo shop and MovieLens), the stored model is the MLP of `_model.py` over the recall
features, with the text's inputs at zero. Scoring it needs no torch and no transformers:
a cold `shelfwise recommend` then costs well under a second instead of 5 s of imports,
and `recommend --all` scores a whole batch of candidate lists in three matrix products.
tests/test_bert.py checks the scores against the torch module.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from engine import gelu

LAYERS = ("mlp.0", "mlp.2", "mlp.4")  # Linear, GELU, Linear, GELU, Linear (see _model.py)


class FeatureHead:
    use_text = False

    def __init__(self, arrays: Mapping[str, np.ndarray], n_features: int):
        missing = [f"{name}.{p}" for name in LAYERS for p in ("weight", "bias")
                   if f"{name}.{p}" not in arrays]
        if missing:
            raise KeyError(f"missing weights {', '.join(missing[:3])}")
        w = {k: np.asarray(arrays[k], dtype=np.float32) for name in LAYERS
             for k in (f"{name}.weight", f"{name}.bias")}
        first = w["mlp.0.weight"]
        if first.shape[1] < n_features:
            raise ValueError(f"weight mlp.0.weight has {first.shape[1]} inputs, expected at "
                             f"least {n_features} recall features")
        # the text's inputs are zero without the text: only the feature columns matter
        self.layers = [(np.ascontiguousarray(first[:, :n_features].T), w["mlp.0.bias"]),
                       (np.ascontiguousarray(w["mlp.2.weight"].T), w["mlp.2.bias"]),
                       (np.ascontiguousarray(w["mlp.4.weight"].T), w["mlp.4.bias"])]

    def score(self, features: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Scores (b,) of b candidates from their recall features (b, n_features), in
        chunks of rows whose activations stay in the CPU's cache (a `recommend --all` batch
        has a few hundred thousand rows)."""
        x = np.asarray(features, dtype=np.float32)
        out = np.empty(len(x), np.float32)
        for start in range(0, len(x), chunk):
            h = x[start:start + chunk]
            for j, (weight, bias) in enumerate(self.layers):
                h = h @ weight + bias
                if j < len(self.layers) - 1:
                    h = gelu(h)
            out[start:start + chunk] = h[:, 0]
        return out
