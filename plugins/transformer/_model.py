"""The network: a causal self-attentive sequence model (SASRec, Kang & McAuley 2018) trained
with a full softmax over the catalogue (cross-entropy, as Klenitskiy & Vasilev 2023 found
SASRec+CE to beat both the original's sampled binary loss and BERT4Rec).

An item's vector is its own learned embedding plus, when the catalogue is encoded, a learned
projection of its text vector (MiniLM): items share what their texts say, and a product that
arrives after training has a vector at once (its projection) instead of none. The same item
vectors embed the input steps and score the output (tied weights)."""

from __future__ import annotations

import torch
from torch import nn


class SequenceModel(nn.Module):
    def __init__(self, n_items: int, dim: int, max_len: int, layers: int, heads: int,
                 dropout: float, text: torch.Tensor | None = None):
        super().__init__()
        self.n_items, self.dim, self.max_len = n_items, dim, max_len
        # row 0 is padding: item i is row i + 1
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.item.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.position = nn.Embedding(max_len, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        if text is not None:  # (n_items, text_dim), fixed: the projection learns
            self.register_buffer("text", torch.cat([torch.zeros(1, text.shape[1]), text]), persistent=False)
            self.project = nn.Linear(text.shape[1], dim, bias=False)
            nn.init.normal_(self.project.weight, std=0.02)
        else:
            self.text, self.project = None, None
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, dim): every item's vector, row 0 the padding."""
        v = self.item.weight
        if self.project is not None:
            v = v + self.project(self.text)
        return v

    def hidden(self, seqs: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """seqs: (batch, L) item rows, 0 = padding, right-aligned (newest last) ->
        (batch, L, dim): the state after each step."""
        vectors = self.item_vectors() if vectors is None else vectors
        length = seqs.shape[1]
        x = vectors[seqs] * (self.dim ** 0.5)
        x = x + self.position.weight[self.max_len - length:][None]
        x = self.drop(x)
        # a step sees itself and the real steps before it; a padding step sees only itself
        # (a row with nothing to attend to would be NaN, and NaN * 0 spreads)
        pad = seqs == 0
        mask = self.causal[:length, :length][None] | pad[:, None, :]
        mask &= ~torch.eye(length, dtype=torch.bool, device=seqs.device)[None]
        heads = self.encoder.layers[0].self_attn.num_heads
        x = self.encoder(x, mask=mask.repeat_interleave(heads, dim=0))
        return self.norm(x)

    def last_scores(self, seqs: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n_items): the score of every item as the next step after each sequence."""
        vectors = self.item_vectors() if vectors is None else vectors
        h = self.hidden(seqs, vectors)[:, -1]
        return h @ vectors[1:].T
