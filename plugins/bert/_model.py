"""The cross-encoder: MiniLM's lower layers per text, its top layer across both, a small head.

all-MiniLM-L6-v2 has six BERT layers. Layers 1..L-1 stay frozen and run on the shopper's
context and on each item's text separately, so an item's states are computed once and
cached (the precomputed-term-representation idea of PreTTR, MacAvaney et al., SIGIR 2020).
The top layer is fine-tuned and joins the two texts: the context's [CLS] attends over the
context tokens and the item tokens together. Only the [CLS] output is needed, so the top
layer's queries and feed-forward run for one position per candidate, and the item tokens'
keys and values are a linear map of cached states: re-ranking 100 candidates costs about
one short forward pass of the context, not 100 full ones.

The [CLS] output, projected to a few dimensions, joins the recall features in a small MLP
that gives the score. The projection starts at zero, so the untrained model is the
feature model and the text has to earn its weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CrossEncoderRanker(nn.Module):
    def __init__(self, bert, n_features: int, hidden: int = 64, text_dim: int = 16,
                 use_text: bool = True):
        super().__init__()
        self.bert = bert  # transformers BertModel; only its top layer is trained
        self.use_text = use_text
        for p in self.bert.parameters():
            p.requires_grad_(False)
        self.top = self.bert.encoder.layer[-1]
        for p in self.top.parameters():
            p.requires_grad_(use_text)
        h = bert.config.hidden_size
        self.heads = bert.config.num_attention_heads
        self.text_proj = nn.Linear(h, text_dim)
        nn.init.zeros_(self.text_proj.weight)
        nn.init.zeros_(self.text_proj.bias)
        self.mlp = nn.Sequential(nn.Linear(n_features + text_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    # -- frozen lower layers ---------------------------------------------------------

    @torch.no_grad()
    def lower(self, input_ids: torch.Tensor, mask: torch.Tensor, token_type: int) -> torch.Tensor:
        """States after the frozen layers (all but the top one) for a padded batch."""
        types = torch.full_like(input_ids, token_type)
        h = self.bert.embeddings(input_ids=input_ids, token_type_ids=types)
        additive = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.bert.encoder.layer[:-1]:
            h = layer(h, attention_mask=additive)
            if isinstance(h, tuple):
                h = h[0]
        return h

    # -- trainable top layer, [CLS] position only --------------------------------------

    def key_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att = self.top.attention.self
        return att.key(states), att.value(states)

    def cls_top(self, cls: torch.Tensor, user_kv, user_mask: torch.Tensor, item_kv,
                item_mask: torch.Tensor, owner: torch.Tensor | None) -> torch.Tensor:
        """The top layer's output at the context's [CLS] for b (context, item) pairs.

        cls (Bu, H) and user_kv / user_mask (Bu, Su, H) / (Bu, Su) per context; item_kv /
        item_mask (b, Si, H) / (b, Si) per pair; owner (b,) the context of each pair, or None
        when there is one context (serving) and it is broadcast instead of copied."""
        att = self.top.attention
        heads = self.heads
        b, si, h = item_kv[0].shape
        d = h // heads
        bu, su, _ = user_kv[0].shape

        def split(x, n, s):
            return x.view(n, s, heads, d).transpose(1, 2)

        uk, uv = split(user_kv[0], bu, su), split(user_kv[1], bu, su)
        umask = user_mask
        if owner is not None:
            uk, uv, umask, cls = uk[owner], uv[owner], umask[owner], cls[owner]
        else:
            cls = cls.expand(b, -1)
        ik, iv = split(item_kv[0], b, si), split(item_kv[1], b, si)
        q = att.self.query(cls).view(b, heads, 1, d) / math.sqrt(d)
        low = torch.finfo(q.dtype).min
        lu = (q @ uk.transpose(-1, -2)).masked_fill(~umask[:, None, None, :].bool(), low)
        li = (q @ ik.transpose(-1, -2)).masked_fill(~item_mask[:, None, None, :].bool(), low)
        p = torch.cat([lu, li], dim=-1).softmax(-1)
        ctx = (p[..., :su] @ uv + p[..., su:] @ iv).reshape(b, h)
        a = att.output.LayerNorm(att.output.dense(ctx) + cls)
        inter = self.top.intermediate.intermediate_act_fn(self.top.intermediate.dense(a))
        return self.top.output.LayerNorm(self.top.output.dense(inter) + a)

    def score(self, features: torch.Tensor, cls=None, user_kv=None, user_mask=None,
              item_kv=None, item_mask=None, owner=None) -> torch.Tensor:
        """Scores (b,) of b (context, item) pairs from their recall features and, with text,
        the contexts' [CLS] lower-layer state, keys/values of context and item tokens."""
        if not self.use_text:
            text = features.new_zeros(features.shape[0], self.text_proj.out_features)
        else:
            text = self.text_proj(self.cls_top(cls, user_kv, user_mask, item_kv, item_mask, owner))
        return self.mlp(torch.cat([features, text], dim=1)).squeeze(1)

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters that are fine-tuned (and stored): top layer and head."""
        out = {}
        if self.use_text:
            out.update({f"top.{k}": p for k, p in self.top.named_parameters()})
        out.update({f"text_proj.{k}": p for k, p in self.text_proj.named_parameters()})
        out.update({f"mlp.{k}": p for k, p in self.mlp.named_parameters()})
        return out
