"""`recently_viewed`: "pick up where you left off" — the items a customer looked at
lately but has not bought, freshest and most looked-at first.

It learns nothing: every request reads the customer's history from the query, so an item
viewed a minute ago (sent to the HTTP /events endpoint) is proposed at once, without
retraining. `fit` only remembers the shop's event weights (a cart counts more than a view).

Score of an item = Σ over the customer's recent looks at it of
weight(kind) · 0.5 ^ (age_days / half_life_days), looks older than `max_age_days` ignored.

Stock and the catalogue are the pipeline's business: it drops items that are out of stock
or unknown, so this recaller need not keep a copy of the catalogue that would go stale.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine import (
    DEFAULT_KIND_WEIGHTS, Candidate, Dataset, ModelState, Query, Recaller, hookimpl, mention,
)

__version__ = "0.1.0"

DAY = 86_400.0
HOUR = 3_600.0

# How a reason names what the customer did; other kinds fall back to "looked at".
VERBS = {
    "view": "viewed {item}",
    "click": "clicked on {item}",
    "cart": "added {item} to your cart",
    "wishlist": "saved {item} to your wishlist",
}


class RecentlyViewedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_age_days: float = Field(30.0, gt=0, description="looks older than this are forgotten")
    half_life_days: float = Field(
        3.0, gt=0, description="a look this old counts half as much as one made just now")
    kinds: list[str] = Field(
        ["view", "click", "cart"], min_length=1,
        description="event kinds that count as looking at an item")
    bought_kinds: list[str] = Field(
        ["purchase", "rating"],
        description="event kinds that mean the customer already has the item: never proposed")

    @model_validator(mode="after")
    def _kinds_apart(self) -> "RecentlyViewedConfig":
        both = sorted(set(self.kinds) & set(self.bought_kinds))
        if both:
            raise ValueError(f"{', '.join(both)} cannot be both a look (kinds) and a "
                             f"purchase (bought_kinds)")
        return self


def ago(seconds: float) -> str:
    """'just now', '5 hours ago', 'yesterday', '12 days ago'."""
    if seconds < HOUR:
        return "just now"
    if seconds < DAY:
        hours = int(seconds // HOUR)
        return "an hour ago" if hours == 1 else f"{hours} hours ago"
    days = int(seconds // DAY)
    return "yesterday" if days == 1 else f"{days} days ago"


class RecentlyViewedRecaller(Recaller):
    name = "recently_viewed"
    description = "Items the customer looked at lately but has not bought (pick up where you left off)"
    Config = RecentlyViewedConfig
    default_quota = 0       # only when [pipeline] recallers or --recallers names it
    similar_items = False   # it knows people, not item-to-item similarity

    def __init__(self, config=None):
        super().__init__(config)
        self.kind_weights: dict[str, float] = dict(DEFAULT_KIND_WEIGHTS)

    def fit(self, data: Dataset, progress=None) -> None:
        self.kind_weights = {kind: data.kind_weight(kind) for kind in self.config.kinds}
        self._fitted = True

    def state(self) -> ModelState:
        return ModelState(meta={"kind_weights": self.kind_weights})

    def load(self, state: ModelState) -> None:
        self.kind_weights = {k: float(v) for k, v in state.meta.get("kind_weights", {}).items()}
        self._fitted = True

    def recall(self, queries: Sequence[Query], n: int) -> list[list[Candidate]]:
        return [self.candidates(self._scored(q)[:n]) for q in queries]

    def _scored(self, query: Query) -> list[tuple[str, float, str]]:
        """(item, score, reason) for one query, best first."""
        cfg = self.config
        if not query.history:
            return []
        # "Now" is the request's time; without one, the customer's latest activity.
        now = query.now if query.now is not None else max(step.ts for step in query.history)
        bought = {step.item_id for step in query.history if step.kind in cfg.bought_kinds}
        kinds = set(cfg.kinds)
        score: dict[str, float] = {}
        looks: dict[str, dict[str, list[float]]] = {}  # item -> kind -> timestamps
        for step in query.history:
            age = max(now - step.ts, 0.0)
            if (step.kind not in kinds or age > cfg.max_age_days * DAY
                    or step.item_id in bought or step.item_id in query.exclude):
                continue
            weight = self.kind_weights.get(step.kind, 1.0)
            score[step.item_id] = score.get(step.item_id, 0.0) + \
                weight * 0.5 ** (age / DAY / cfg.half_life_days)
            looks.setdefault(step.item_id, {}).setdefault(step.kind, []).append(step.ts)
        # Ties (equal scores) go to the most recent look, then the item id, so answers are stable.
        last = {item: max(max(ts) for ts in by_kind.values()) for item, by_kind in looks.items()}
        order = sorted(score, key=lambda item: (-score[item], -last[item], item))
        return [(item, score[item], self._reason(item, looks[item], now)) for item in order]

    def _reason(self, item: str, by_kind: dict[str, list[float]], now: float) -> str:
        """Name the strongest thing the customer did: a cart beats a view."""
        kind = max(by_kind, key=lambda k: (self.kind_weights.get(k, 1.0), len(by_kind[k]), k))
        stamps = by_kind[kind]
        did = VERBS.get(kind, "looked at {item}").format(item=mention(item))
        when = ago(max(now - max(stamps), 0.0))
        if len(stamps) > 1:
            return f"you {did} {len(stamps)} times, most recently {when}"
        return f"you {did} {when}"


@hookimpl
def register_recallers(register):
    register(RecentlyViewedRecaller)
