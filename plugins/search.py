"""`search`: a text query → catalogue items, lexical and semantic together.

Lexical: SQLite FTS5 BM25 over id, title, category, brand, tags and description, so exact
names and SKUs win. Semantic: the query's sentence vector against the item vector index,
so "something to brew coffee at home" finds espresso machines. The two are fused by a
convex combination of per-query min-max normalised scores (weights measured in README)."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from engine import ModelState, Query, Recaller, hookimpl


class SearchConfig(BaseModel):
    mode: str = Field("hybrid", pattern="^(hybrid|lexical|semantic)$",
                      description="hybrid, lexical (BM25 only) or semantic (vectors only)")
    lexical_weight: float = Field(0.35, ge=0, le=1, description="share of BM25 in the hybrid score (tuned: benchmarks/bench_search.py)")
    depth: int = Field(200, ge=10, description="candidates taken from each signal before fusion")


def _normalise(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    span = hi - lo
    return {k: (v - lo) / span if span > 0 else 1.0 for k, v in scores.items()}


class SearchRecaller(Recaller):
    name = "search"
    description = "Text search: FTS5 BM25 fused with sentence-vector similarity"
    Config = SearchConfig
    default_quota = 50
    similar_items = False
    text_queries = True

    def fit(self, data, progress=None) -> None:
        self._fitted = True

    def state(self) -> ModelState:
        return ModelState()

    def load(self, state: ModelState) -> None:
        self._fitted = True

    def _lexical(self, text: str) -> dict[str, float]:
        store = self.resources.store
        return dict(store.text_search(text, self.config.depth)) if store is not None else {}

    def _semantic(self, texts: list[str]) -> list[dict[str, float]]:
        index, encoder = self.resources.vectors, self.resources.encoder
        if index is None or encoder is None or not len(index) or not texts:
            return [{} for _ in texts]
        hits = index.query(encoder.encode(texts).astype(np.float32), self.config.depth)
        return [dict(h) for h in hits]

    def recall(self, queries: Sequence[Query], n: int):
        cfg = self.config
        texts = [q.text for q in queries if q.text]
        semantic = iter(self._semantic(texts) if cfg.mode != "lexical" else [{} for _ in texts])
        out = []
        for q in queries:
            if not q.text:
                out.append([])
                continue
            lex = self._lexical(q.text) if cfg.mode != "semantic" else {}
            sem = next(semantic)
            w = {"hybrid": cfg.lexical_weight, "lexical": 1.0, "semantic": 0.0}[cfg.mode]
            nl, ns = _normalise(lex), _normalise(sem)
            fused = {item: w * nl.get(item, 0.0) + (1 - w) * ns.get(item, 0.0)
                     for item in set(nl) | set(ns)}
            exact = q.text.strip()
            if exact in fused or (lex and exact in lex):  # a SKU or id typed verbatim
                fused[exact] = 2.0
            ranked = sorted((i for i in fused if i not in q.exclude), key=lambda i: (-fused[i], i))[:n]
            words = " ".join(re.findall(r"\w+", q.text))
            out.append(self.candidates([
                (item, fused[item], f"matches “{words}”" if item in lex else f"close in meaning to “{q.text}”")
                for item in ranked]))
        return out


@hookimpl
def register_recallers(register):
    register(SearchRecaller)
