"""Request and response bodies of the HTTP API (they make up the OpenAPI document)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import EVENT_KINDS, Event, Item, Recommendation, event_time_window

# Ids: letters, digits and . _ : @ + - (no spaces, slashes or control characters), 1-128 long.
_ID = r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}"
ID_PATTERN = rf"^{_ID}$"
ID_LIST_PATTERN = rf"^{_ID}(,{_ID})*$"  # a query parameter may carry several, comma-separated
DURATION_PATTERN = r"^(all|[0-9]{1,9}(\.[0-9]{1,6})?[smhdwSMHDW])$"  # 30m, 12h, 7d, 2w, all
PATTERN_WORDS = {
    ID_PATTERN: "an id (1-128 letters, digits and . _ : @ + -, starting with a letter or digit)",
    ID_LIST_PATTERN: "a list of ids separated by commas (each 1-128 letters, digits and . _ : @ + -)",
    DURATION_PATTERN: "a duration: a number and a unit s, m, h, d or w (30m, 12h, 7d, 2w), or 'all'",
    r"\S": "any text but spaces",
}
Number = Annotated[float, Field(strict=True)]  # a JSON number: true/false and "3" are refused
RECOMMENDATION_ID_PATTERN = r"^r_[0-9a-f]{20}$"
MAX_EVENTS = 500
MAX_ITEMS = 1000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventIn(Strict):
    event_id: str = Field(pattern=ID_PATTERN, description="your id for this event; a resend with the same id is a duplicate")
    user_id: str = Field(pattern=ID_PATTERN)
    item_id: str = Field(pattern=ID_PATTERN)
    kind: Literal[EVENT_KINDS] = Field(description="view, click, cart, purchase or rating")  # type: ignore[valid-type]
    timestamp: Annotated[float, Field(strict=True, ge=0)] | datetime = Field(
        description="epoch seconds (UTC; milliseconds such as Date.now() are recognised) or an ISO 8601 "
                    "time with zone, from 1990-01-01 to a day ahead of the server's clock")
    value: Number | None = Field(None, ge=-1e12, le=1e12,
                                 description="purchase: the amount paid (revenue); rating: the rating")
    recommendation_id: str | None = Field(
        None, pattern=RECOMMENDATION_ID_PATTERN,
        description="the recommendation_id of the response the shopper acted on (attribution)")

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("timestamp")
    @classmethod
    def _epoch(cls, v: float | datetime) -> float:
        if isinstance(v, datetime):
            if v.tzinfo is None:
                raise ValueError("an ISO time needs a zone, e.g. 2026-11-25T17:00:00Z")
            v = v.timestamp()
        if not math.isfinite(v) or v < 0:
            raise ValueError("must be a finite, non-negative epoch time")
        if v > 1e11:  # milliseconds (JavaScript's Date.now()), micro- or nanoseconds, as imports
            v /= 1e3 if v < 1e14 else 1e6 if v < 1e17 else 1e9
        earliest, latest = event_time_window()
        if not earliest <= v <= latest:
            when = (datetime.fromtimestamp(v, timezone.utc).isoformat(timespec="seconds")
                    if v < 253402300799 else f"{v:g} s")  # after year 9999: say the number
            raise ValueError(f"{when} is {'before 1990' if v < earliest else 'more than a day ahead'}; "
                             f"send the time the event happened, in seconds or milliseconds")
        return float(v)

    def to_event(self) -> Event:
        return Event(self.user_id, self.item_id, self.kind, float(self.timestamp), self.value,
                     self.event_id, origin=f"POST /events event_id {self.event_id}")


class EventsIn(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsOut(BaseModel):
    accepted: int = Field(description="events stored by this request")
    duplicates: int = Field(description="events already stored (resends), not stored again")


class RecItem(BaseModel):
    position: int = Field(description="1-based position in this response")
    item_id: str
    title: str
    score: float
    source: str = Field(description="the recaller that put the item here")
    reason: str = Field(description="why, in words a shopper can read")
    sources: list[str]
    ranker: str
    category: str
    price: float | None

    @classmethod
    def of(cls, rec: Recommendation) -> "RecItem":
        d = rec.to_dict()
        d["position"] = d.pop("rank")
        return cls(**d)


class RecList(BaseModel):
    recommendation_id: str = Field(description="send it back with events to attribute them")
    placement: str = ""
    cached: bool = Field(False, description="served from the per-user cache")
    fallback: str | None = Field(None, description="why this is the cold-start answer: \"unknown user\", "
                                                  "\"no history yet\", \"unknown item\" (null: personal)")
    items: list[RecItem]


class ItemIn(Strict):
    item_id: str = Field(pattern=ID_PATTERN)
    title: str = Field("", max_length=500)
    description: str = Field("", max_length=20_000)
    category: str = Field("", max_length=200)
    brand: str = Field("", max_length=200)
    price: Number | None = Field(None, ge=0, le=1e12)
    tags: list[str] = Field(default_factory=list, max_length=100)
    in_stock: bool = Field(True, strict=True)
    attrs: dict[str, Any] = Field(default_factory=dict)

    def to_item(self) -> Item:
        return Item(self.item_id, self.title, self.description, self.category, self.brand,
                    self.price, tuple(self.tags), self.in_stock, self.attrs,
                    origin=f"PUT /items item_id {self.item_id}")


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS)


class ItemOut(BaseModel):
    item_id: str
    title: str
    description: str
    category: str
    brand: str
    price: float | None
    tags: list[str]
    in_stock: bool
    attrs: dict[str, Any]

    @classmethod
    def of(cls, item: Item) -> "ItemOut":
        return cls(item_id=item.item_id, title=item.title, description=item.description,
                   category=item.category, brand=item.brand, price=item.price,
                   tags=list(item.tags), in_stock=item.in_stock, attrs=dict(item.attrs))


class ItemsChanged(BaseModel):
    changed: int = Field(description="items added or changed")
    vectors: dict[str, Any] = Field(description="vector index refresh (new products encoded)")


class Removed(BaseModel):
    removed: int


class Erased(BaseModel):
    user_id: str
    events: int
    impressions: int
    attributed_events: int
    cached_lists: int
    models_rewritten: list[str] = Field(description="stored models that kept rows of this "
                                                    "shopper and were rewritten without them")
    log_emptied: bool = Field(description="the write-ahead log was checkpointed and emptied: "
                                          "no older copy of the erased rows is left on disk")


class TrainStarted(BaseModel):
    started: bool
    training: dict[str, Any]


class Rates(BaseModel):
    impressions: int
    recommendations: int
    clicks: int
    carts: int
    purchases: int
    revenue: float
    ctr: float = Field(description="clicks / impressions")
    cart_rate: float = Field(description="carts / impressions")
    conversion_rate: float = Field(description="purchases / impressions")


class NamedRates(Rates):
    name: str | int | None


class Report(BaseModel):
    since: float | None
    placement: str | None
    overall: Rates
    by_recaller: list[NamedRates]
    by_ranker: list[NamedRates]
    by_placement: list[NamedRates]
    by_position: list[NamedRates]


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[dict[str, str]]
    ok: bool = False
    error: str
