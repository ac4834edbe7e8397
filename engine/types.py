"""Plain data types that flow between sources, the store, recallers, rankers and the views."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

# Event kinds Shelfwise knows by name. Sources may emit others; they get weight 1.0 unless
# configured in [events.weights].
EVENT_KINDS = ("view", "click", "cart", "purchase", "rating")
# what a public API key (one in a shop's web page) may send; the rest needs a secret key
PUBLIC_EVENT_KINDS = frozenset({"view", "click", "cart"})

# When an event may have happened: imports and the API refuse times outside this window
# (an import may opt out with --allow-any-time). Earlier is a unit mix-up or a missing value
# read as 0; later than a day ahead is a clock or unit error (clocks differ by hours).
EARLIEST_EVENT = 631152000.0  # 1990-01-01T00:00:00Z
EVENT_AHEAD = 86400.0


def event_time_window(now: float | None = None) -> tuple[float, float]:
    """(earliest, latest) epoch seconds an event time may have, as of `now`."""
    return EARLIEST_EVENT, (time.time() if now is None else now) + EVENT_AHEAD


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    title: str = ""
    description: str = ""
    category: str = ""
    brand: str = ""
    price: float | None = None
    tags: tuple[str, ...] = ()
    in_stock: bool = True
    attrs: Mapping[str, Any] = field(default_factory=dict)
    origin: str = field(default="", compare=False)  # "items.csv line 14", for error messages

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, "description": self.description,
                "category": self.category, "brand": self.brand, "price": self.price,
                "tags": list(self.tags), "in_stock": self.in_stock, "attrs": dict(self.attrs)}


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    origin: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    kind: str
    ts: float  # epoch seconds, UTC
    value: float | None = None
    event_id: str | None = None  # None: the store derives a stable id from the payload
    origin: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Triple:
    head: str
    relation: str
    tail: str
    origin: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class ItemEntity:
    item_id: str
    entity: str
    origin: str = field(default="", compare=False)


Record = Item | User | Event | Triple | ItemEntity


@dataclass(frozen=True, slots=True)
class Interaction:
    """One step of a user's history as recallers see it (newest last)."""

    item_id: str
    kind: str
    ts: float
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """What a recaller or ranker is asked about: a user (maybe unknown), their history, and
    the request's constraints. `exclude` items must never be returned."""

    user_id: str | None = None
    history: tuple[Interaction, ...] = ()
    text: str | None = None
    item_id: str | None = None  # set for "similar to this item" requests
    exclude: frozenset[str] = frozenset()
    category: str | None = None
    now: float | None = None

    @property
    def history_items(self) -> list[str]:
        """Distinct items of the history, newest first."""
        seen: dict[str, None] = {}
        for step in reversed(self.history):
            seen.setdefault(step.item_id, None)
        return list(seen)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An item proposed by a recaller, carried through merging and ranking.

    `source` is the recaller that put it there (the one that ranked it best), `reason` a
    sentence a shop owner can read. `scores`, `ranks` and `reasons` keep every recaller's
    opinion (recaller name -> score / 1-based rank / reason) so rankers can fuse them and
    say which recaller mattered most."""

    item_id: str
    score: float
    source: str
    reason: str
    scores: Mapping[str, float] = field(default_factory=dict)
    ranks: Mapping[str, int] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)

    def led_by(self, source: str, score: float) -> "Candidate":
        """This candidate re-scored, credited to `source` with that recaller's reason."""
        return Candidate(self.item_id, score, source, self.reasons.get(source, self.reason),
                         self.scores, self.ranks, self.reasons)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One line of an answer, as the CLI, TUI and HTTP show it."""

    item_id: str
    title: str
    score: float
    rank: int
    source: str
    reason: str
    sources: tuple[str, ...] = ()
    ranker: str = ""
    category: str = ""
    price: float | None = None
    fallback: str = ""  # why this is the cold-start answer ("unknown user"); "" when personal
    rules: tuple[str, ...] = ()  # the merchandising rules that placed it ("pinned by rule 3")
    experiment: str = ""  # the A/B experiment this list was served under ("": none)
    arm: str = ""  # and its arm

    def to_dict(self) -> dict[str, Any]:
        arm = {"experiment": self.experiment, "arm": self.arm} if self.experiment else {}
        return {
            "item_id": self.item_id,
            "title": self.title,
            "score": round(float(self.score), 6),
            "rank": self.rank,
            "source": self.source,
            "reason": self.reason,
            "sources": list(self.sources),
            "ranker": self.ranker,
            "category": self.category,
            "price": self.price,
            "fallback": self.fallback or None,
            "rules": list(self.rules),
        } | arm
