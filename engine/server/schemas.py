"""Request and response bodies of the HTTP API (they make up the OpenAPI document)."""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .. import EVENT_KINDS, EngineError, Event, Item, Recommendation, event_time_window
from ..conditions import parse_condition  # the rules' language: a pure function, no engine state

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
PLACEMENT_PATTERN = r"^[A-Za-z0-9_.\-]*$"


def condition_pattern(depth: int = 1) -> str:
    """The merchandising rules' condition language (engine.conditions) as a regular
    expression, so that the schema states it: up to `depth` levels of parentheses, words and
    symbols separated by one or two plain spaces, at most two `not`s in a row. Every text it
    accepts parses (tests/test_rules.py checks generated examples); the command line reads
    the language without these limits. Counted repetitions are kept to single characters:
    regex engines that unroll them (Rust's, in pydantic and jsonschema-rs) would refuse the
    pattern as too large."""
    gap, space = " {0,2}", " {1,2}"
    text = r"""(?:"[^"]*"|'[^']*')"""
    number = r"-?[0-9]+(?:\.[0-9]+)?"
    value = rf"(?:{text}|{number}|true|false)"

    def listed(v: str) -> str:
        return rf"\[{gap}{v}(?:{gap},{gap}{v})*{gap}\]"

    order = r"(?:[<>!]?=|[<>])"
    comparison = "(?:" + "|".join([
        rf"(?:item_id|title|category|brand)(?:{gap}!?={gap}{text}|{space}in{gap}{listed(text)}"
        rf"|{space}contains{gap}{text})",
        rf"price(?:{gap}{order}{gap}{number}|{space}in{gap}{listed(number)})",
        rf"in_stock{gap}!?={gap}(?:true|false)",
        rf"tags(?:{space}contains{gap}{text}|{space}in{gap}{listed(text)})",
        rf"attrs\.[A-Za-z0-9_][A-Za-z0-9_-]*(?:{gap}{order}{gap}{value}|{space}in{gap}{listed(value)}"
        rf"|{space}contains{space}{value})",
    ]) + ")"
    expression = ""
    for level in range(depth + 1):
        unit = rf"(?:not{space}){{0,2}}(?:{comparison}" + (rf"|\({gap}{expression}{gap}\))" if level else ")")
        expression = rf"{unit}(?:{space}(?:and|or){space}{unit})*"
    return rf"^{gap}{expression}{gap}$"


CONDITION_PATTERN = condition_pattern()
PATTERN_WORDS.update({
    PLACEMENT_PATTERN: "a placement (letters, digits and . _ -)",
    CONDITION_PATTERN: "a condition the rules can read, such as brand = \"Acme\" or price > 200 "
                       "and not tags contains \"sale\" (words separated by spaces)",
})
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
    rules: list[str] = Field(default_factory=list, description="the merchandising rules that placed "
                             "it: \"pinned by rule 3\", \"boosted by rule 2\" (for the shop, not the shopper)")

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
    experiment: str | None = Field(None, description="the A/B experiment this shopper's list was "
                                   "served under (null: none)")
    arm: str | None = Field(None, description="the experiment's arm this shopper sees")
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


# -- merchandising rules ------------------------------------------------------------------

Placement = Annotated[str, Field(max_length=64, pattern=PLACEMENT_PATTERN,
                                 description="only lists of this placement (home, product-page, …); "
                                             "\"\": every list")]
def _a_date_text(value: Any) -> Any:
    """A date as JSON carries it: "YYYY-MM-DD" text only (no number, no time of day)."""
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value)):
        raise ValueError("must be a date written YYYY-MM-DD, e.g. 2026-12-24")
    return value


def _whole_number(value: Any) -> Any:
    """A JSON integer: 3 or 3.0 (JSON Schema's integer), never "3" or true."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


Until = Annotated[date | None, BeforeValidator(_a_date_text), Field(
    description="the last day the rule applies (YYYY-MM-DD, the server's local time); null: until removed")]
def _readable(value: Any) -> Any:
    """A condition the rules cannot read is refused with the parser's words (the position and
    what was expected there), before the pattern's more general ones."""
    if isinstance(value, str) and len(value) <= 1000:
        try:
            parse_condition(value)
        except EngineError as exc:
            raise ValueError(str(exc)) from None
    return value


Condition = Annotated[str, Field(max_length=1000, pattern=CONDITION_PATTERN, description=(
    "which products: a condition over item_id, title, category, brand (texts), price (a number), "
    "in_stock (true/false), tags (a list of texts) and attrs.NAME, with = != < <= > >=, "
    "in [\"a\", \"b\"], contains, and, or, not and parentheses (not nested: one level); texts in "
    "\"double\" or 'single' quotes; words separated by spaces. Text comparisons ignore case.")),
    BeforeValidator(_readable)]
Weight = Annotated[float, Field(strict=True, gt=0, le=1000, description="places to move matching products")]


class PinIn(Strict):
    kind: Literal["pin"]
    item_id: str = Field(pattern=ID_PATTERN, description="the product to show (it must be in the catalogue)")
    position: Annotated[int, BeforeValidator(_whole_number)] = Field(
        ge=1, le=1000, description="its place in the list, 1 = first")
    placement: Placement = ""
    category: str | None = Field(None, min_length=1, max_length=200,
                                 description="only lists of this category (requests with category=)")
    until: Until = None


class BoostIn(Strict):
    kind: Literal["boost", "bury"] = Field(description="boost: move up; bury: move down")
    where: Condition
    weight: Weight
    placement: Placement = ""
    until: Until = None


class FilterIn(Strict):
    kind: Literal["filter"]
    where: Condition
    placement: Placement = ""
    until: Until = None


RuleIn = Annotated[Union[PinIn, BoostIn, FilterIn], Field(discriminator="kind")]


class RuleOut(BaseModel):
    id: int
    kind: Literal["pin", "boost", "bury", "filter"]
    item_id: str | None
    position: int | None
    where: str | None
    weight: float | None
    placement: str | None = Field(description="null: every list")
    category: str | None
    until: str | None = Field(description="the last day it applies (YYYY-MM-DD), null: until removed")
    created_at: float
    status: Literal["active", "expired", "not shown", "removed"] = Field(
        description="not shown: a pin whose item is out of stock, not in the catalogue or of "
                    "another category than its lists")
    note: str = Field(description="why, when not active")
    description: str


# -- A/B experiments ----------------------------------------------------------------------

class EstimateOut(BaseModel):
    value: float
    low: float = Field(description="95% interval, lower end")
    high: float = Field(description="95% interval, upper end")
    se: float = Field(description="standard error")


class ComparisonOut(BaseModel):
    difference: EstimateOut = Field(description="this arm minus control, with its 95% interval")
    lift: float | None = Field(description="difference / control's value (null when that is 0)")
    prob_better: float = Field(description="probability that this arm's true value is higher "
                                           "than control's (normal approximation)")


class ArmReportOut(BaseModel):
    arm: str
    share: float = Field(description="share of shoppers assigned, 0-1")
    config: str = Field(description="the arm's settings in words")
    shoppers: int = Field(description="identified shoppers shown at least one list")
    impressions: int
    lists: int
    clicks: int
    carts: int
    purchases: int
    revenue: float
    metrics: dict[str, EstimateOut] = Field(description="ctr, cart_rate, conversion_rate (per "
                                            "impression) and revenue_per_shopper")
    vs_control: dict[str, ComparisonOut] | None = Field(description="null for control (the first arm)")


class ExperimentArmOut(BaseModel):
    name: str
    share: float
    file: str | None = Field(description="the arm file (null: the shop's configuration)")
    pipeline: dict[str, Any] = Field(description="the [pipeline] fields the arm sets over the shop's")
    rules_placement: str | None = Field(description="the placement whose rules apply (null: the request's)")


class ExperimentOut(BaseModel):
    name: str
    placement: str = Field(description="\"\": every placement")
    split: str
    started_at: float
    stopped_at: float | None
    running: bool
    winner: str | None
    arms: list[ExperimentArmOut]


class ExperimentReportOut(BaseModel):
    experiment: ExperimentOut
    arms: list[ArmReportOut]
    method: str = Field(description="how the intervals and probabilities are computed")
    notes: list[str]
