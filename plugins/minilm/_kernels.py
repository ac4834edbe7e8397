"""MiniLM's forward pass in numpy: a 6-layer BERT encoder, mean pooling, unit length.

The encoder needs no torch, transformers or sentence-transformers: a cold `shelfwise
search` pays about 0.3 s of imports (numpy, tokenizers, safetensors) instead of 10-20 s.
tests/test_minilm.py checks the vectors against sentence-transformers on the same weights
(the slow reference: they agree to 1e-6), and benchmarks/bench_encoder.py measures both.
Every matrix product is 2-D so that BLAS does it; everything stays float32.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from engine import gelu

def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x (..., in) · weight (out, in)ᵀ + bias, as one 2-D product."""
    shape = x.shape
    out = np.ascontiguousarray(x).reshape(-1, shape[-1]) @ weight.T
    out += bias
    return out.reshape(*shape[:-1], weight.shape[0])


def bert_states(w: Mapping[str, np.ndarray], ids: np.ndarray, mask: np.ndarray,
                heads: int, layers: int, eps: float = 1e-12) -> np.ndarray:
    """The last layer's states (b, s, h) of a BERT encoder (Hugging Face weight names) for
    padded token ids (b, s) and their attention mask (1 = token, 0 = padding)."""
    b, s = ids.shape
    h = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:s][None]
         + w["embeddings.token_type_embeddings.weight"][0])
    h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    hidden = h.shape[-1]
    d = hidden // heads
    scale = np.float32(1 / np.sqrt(d))
    padding = np.where(mask[:, None, None, :] > 0, 0, np.finfo(np.float32).min).astype(np.float32)
    for i in range(layers):
        p = f"encoder.layer.{i}."

        def dense(name: str, x: np.ndarray) -> np.ndarray:
            return linear(x, w[f"{p}{name}.weight"], w[f"{p}{name}.bias"])

        def split(x: np.ndarray) -> np.ndarray:  # (b, s, h) -> (b, heads, s, d)
            return x.reshape(b, s, heads, d).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(f"attention.self.{n}", h)) for n in ("query", "key", "value"))
        scores = (q * scale) @ k.transpose(0, 1, 3, 2) + padding
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
        a = layer_norm(dense("attention.output.dense", context) + h,
                       w[f"{p}attention.output.LayerNorm.weight"],
                       w[f"{p}attention.output.LayerNorm.bias"], eps)
        h = layer_norm(dense("output.dense", gelu(dense("intermediate.dense", a))) + a,
                       w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], eps)
    return h


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of each text's token states (padding left out), scaled to unit length."""
    m = mask[..., None].astype(np.float32)
    v = (states * m).sum(1) / np.maximum(m.sum(1), np.float32(1e-9))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.float32(1e-12))
