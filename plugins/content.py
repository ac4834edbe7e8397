"""`content`: items whose text is close to what the shopper looked at — works from the
moment a product is imported and encoded, before anyone has interacted with it.

The shopper's profile is the weighted mean of the vectors of their recent items (weight:
event kind × recency), plus the request's search text when there is one; the nearest
catalogue items in the vector index are the candidates."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from engine import Anchor, Dataset, ModelState, Query, Recaller, hookimpl, kind_verb, mention, recent_anchors


class ContentConfig(BaseModel):
    history: int = Field(10, ge=1, description="recent distinct items that make the profile")
    decay: float = Field(0.8, gt=0, le=1, description="weight factor per step back in the history")
    text_weight: float = Field(1.0, ge=0, description="weight of the request's text in the profile")
    new_items: int = Field(20, ge=0, description="nearest items without any interaction yet that "
                           "are always considered (new arrivals), besides the nearest overall")
    new_item_boost: float = Field(0.1, ge=0, description="added to the similarity of an item "
                                  "nobody has interacted with, so new arrivals get seen")


class ContentRecaller(Recaller):
    name = "content"
    description = "Items similar in text to the shopper's recent items (cold-start ready)"
    Config = ContentConfig
    default_quota = 100

    def fit(self, data: Dataset, progress=None) -> None:
        self.kind_weights = dict(data.kind_weights)
        counts = np.bincount(data.items, minlength=data.n_items)
        self.seen = set(data.item_ids[counts > 0].tolist())  # items anyone interacted with
        self._fitted = True

    def state(self) -> ModelState:
        return ModelState(arrays={"seen": np.array(sorted(self.seen), dtype=str)},
                          meta={"kind_weights": self.kind_weights})

    def load(self, state: ModelState) -> None:
        self.kind_weights = dict(state.meta["kind_weights"])
        self.seen = set(state.arrays["seen"].tolist())
        self._fitted = True

    def _nearest(self, index, profile: np.ndarray, n: int, skip: set[str],
                 fresh: set[str]) -> dict[str, float]:
        """The n nearest items plus the nearest never-interacted ones (`fresh`), boosted."""
        hits = dict(index.query(profile[None, :], n, exclude=skip)[0])
        if self.config.new_items and fresh:
            hits.update(index.query(profile[None, :], self.config.new_items, exclude=skip,
                                    allowed=fresh)[0])
        boost = self.config.new_item_boost
        return {item: score + (boost if item not in self.seen else 0.0) for item, score in hits.items()}

    def _anchors(self, q: Query, index) -> list[Anchor]:
        """(item, weight, kind) of the recent distinct items that have vectors."""
        return [a for a in recent_anchors(q, self.kind_weights, limit=self.config.history,
                                          decay=self.config.decay)
                if a.item_id in index]

    def recall(self, queries: Sequence[Query], n: int):
        index, encoder = self.resources.vectors, self.resources.encoder
        if index is None or not len(index):
            return [[] for _ in queries]
        fresh = {item for item in index.ids if item not in self.seen} if self.config.new_items else set()
        texts = [q.text for q in queries if q.text]
        text_vectors = iter(encoder.encode(texts) if texts and encoder is not None else [])
        out = []
        for q in queries:
            anchors = self._anchors(q, index)
            text_vec = next(text_vectors) if q.text and encoder is not None else None
            if not anchors and text_vec is None:
                out.append([])
                continue
            vecs = np.array([index.vector(item) for item, _, _ in anchors]).reshape(-1, index.dim)
            weights = np.array([w for _, w, _ in anchors])
            profile = weights @ vecs if len(anchors) else np.zeros(index.dim, np.float32)
            if text_vec is not None:
                total = weights.sum() if len(anchors) else 1.0
                profile = profile + self.config.text_weight * total * text_vec
            profile = profile / max(float(np.linalg.norm(profile)), 1e-9)
            skip = set(q.exclude) | {item for item, _, _ in anchors}
            nearest = self._nearest(index, profile.astype(np.float32), n, skip, fresh)
            hits = sorted(nearest.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
            out.append(self.recalled([item for item, _ in hits], [score for _, score in hits],
                                     self._explainer(q, index, anchors, vecs, weights, text_vec, hits)))
        return out

    def _explainer(self, q: Query, index, anchors, vecs, weights, text_vec, hits):
        """Reason for the j-th recalled item, made when it is shown: the history item it is
        most like, or the query text when that is closer."""
        def explain(j: int) -> str:
            item = hits[j][0]
            vec = index.vector(item)
            sims = vecs @ vec if len(anchors) else None
            if sims is not None and (text_vec is None or sims.max() >= float(text_vec @ vec)):
                anchor, _, kind = anchors[int(np.argmax(sims * weights))]
                if q.item_id is not None:
                    reason = f"described like {mention(anchor)}"
                else:
                    reason = f"similar to {mention(anchor)}, which you {kind_verb(kind, 'you', 'viewed')}"
            else:
                reason = f"close in meaning to “{q.text}”"
            return f"new arrival, {reason}" if item not in self.seen else reason
        return explain


@hookimpl
def register_recallers(register):
    register(ContentRecaller)
