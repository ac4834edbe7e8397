"""Merchandising rules: what a shop owner asks of the lists beyond the model's order.

    pin ITEM at P      the item takes position P (unless stock, the request's category, the
                       shopper's purchases or a filter rule exclude it: those win)
    boost WHERE by W   matching items move W places up in the ranker's order
    bury WHERE by W    matching items move W places down
    filter WHERE       matching items are never shown

Each rule may be limited to one placement (the API's `placement`, the CLI's
`--placement`; a rule without one applies everywhere) and may end at a time (`until`:
expired rules stop applying and are listed as expired). WHERE is a condition over the
catalogue fields (engine.conditions).

Where they act in the pipeline (engine.pipeline): filter rules remove items with the
other filters, so the ranker never scores them (the list is the one a removal after it
would leave); after the ranker, boosts and burials reorder the ranked list, then the
pipeline's own re-rank (diversity: maximal marginal relevance over the item vectors, the new-product slot) makes the top n, then
pins take their positions. Each move is recorded in the pipeline's trace and in the
recommendation ("boosted by rule 2", "pinned by rule 3").

`Merchandising` keeps the stored rules of one Engine, compiled per placement (each
condition evaluated once over the catalogue, again when the catalogue changes), and drops
the cached recommendation lists when rules change — also when another process changed
them, and when a rule expires."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time as clock
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .candidates import CandidateSet, item_ids
from .conditions import parse_condition
from .errors import EngineError
from .types import Candidate, Query

if TYPE_CHECKING:  # pragma: no cover
    from .serving import Serving
    from .store import Store

__all__ = ["KINDS", "Merchandising", "Rule", "RuleSet", "check_rule", "until_time"]

KINDS = ("pin", "boost", "bury", "filter")
PLACEMENT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_POSITION = 1000
MAX_WEIGHT = 1000.0
PIN_REASON = "featured by the shop"  # a pinned item no recaller proposed: what a shopper reads


@dataclass(frozen=True)
class Rule:
    """One stored rule. `status` and `note` are filled in by `Merchandising.listed`:
    "active", "expired" or "not shown" (a pin whose item cannot be shown now), and why."""

    id: int
    kind: str
    item_id: str | None = None
    position: int | None = None
    where: str | None = None
    weight: float | None = None
    placement: str = ""
    category: str | None = None
    until: float | None = None
    created_at: float = 0.0
    status: str = ""
    note: str = ""

    @classmethod
    def of(cls, row: dict[str, Any]) -> "Rule":
        return cls(id=row["id"], kind=row["kind"], item_id=row["item_id"], position=row["position"],
                   where=row["condition"], weight=row["weight"], placement=row["placement"] or "",
                   category=row["category"] or None, until=row["until"], created_at=row["created_at"])

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def applies_to(self, placement: str) -> bool:
        return not self.placement or self.placement == placement

    @property
    def until_date(self) -> str | None:
        """The last day the rule applies (the machine's local time)."""
        if self.until is None:
            return None
        try:
            return time.strftime("%Y-%m-%d", time.localtime(self.until - 1e-3))
        except (OverflowError, OSError, ValueError):
            return "9999-12-31" if self.until > 0 else "1970-01-01"

    def describe(self) -> str:
        """The rule in a few words: 'pin p00042 at 3', 'boost brand = "Acme" by 5'."""
        if self.kind == "pin":
            return f"pin {self.item_id} at {self.position}"
        if self.kind == "filter":
            return f"filter {self.where}"
        return f"{self.kind} {self.where} by {self.weight:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "item_id": self.item_id, "position": self.position,
                "where": self.where, "weight": self.weight, "placement": self.placement or None,
                "category": self.category, "until": self.until_date, "until_ts": self.until,
                "created_at": self.created_at, "status": self.status, "note": self.note,
                "description": self.describe()}


def until_time(value: str | date | datetime | float | None) -> float | None:
    """When a rule stops applying, in epoch seconds: a date means the end of that day (the
    machine's local time), a time with a zone that moment, a number itself."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise EngineError(f"until must be a date, not {value!r}.", title="Invalid rule")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) <= 10 else datetime.fromisoformat(text)
        except ValueError:
            raise EngineError(f"until {value!r} is not a date: write it as YYYY-MM-DD "
                              f"(e.g. 2026-12-24) or YYYY-MM-DDTHH:MM.", title="Invalid rule") from None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, clock.max)
    else:
        raise EngineError(f"until must be a date, not {value!r}.", title="Invalid rule")
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):  # years the platform's clock cannot hold
        return 0.0 if moment.year < 1970 else 253402300799.0


@dataclass
class RuleSet:
    """The rules that apply to one placement now, compiled: filters with the items they
    remove, each item's net shift (places up: boosts minus burials) with the rules behind
    it, and the pins in the order they take places (position, then the older rule)."""

    filters: list[tuple[int, frozenset[str]]] = field(default_factory=list)
    shifts: dict[str, float] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    pins: list[Rule] = field(default_factory=list)

    def removals(self, present: set[str]) -> dict[str, set[str]]:
        """What each filter rule removes of `present`: {"rule 4": {...}}."""
        out = {}
        for rule_id, matched in self.filters:
            found = present & matched
            if found:
                out[f"rule {rule_id}"] = found
        return out

    def reorder(self, ranked: Sequence[Candidate]) -> Sequence[Candidate]:
        """The ranked list after the boosts and burials: an item at place j with net shift s
        sorts as if at place j - s (a boost of 3 takes the item from 8 to 5, the item that
        was 5th becomes 6th); ties go to the item that moved up most, then the ranker's order."""
        if not self.shifts:
            return ranked
        items = item_ids(ranked)
        shift = np.fromiter((self.shifts.get(i, 0.0) for i in items), np.float64, len(items))
        if not shift.any():
            return ranked
        order = np.lexsort((-shift, np.arange(len(items)) - shift))
        if isinstance(ranked, CandidateSet):
            return ranked.take(order)
        return [ranked[j] for j in order.tolist()]

    def pin(self, query: Query, top: list[Candidate], ranked: Sequence[Candidate], n: int,
            allowed: Callable[[str], bool]) -> tuple[list[Candidate], dict[str, list[str]]]:
        """`top` with the pinned items at their positions (each only if `allowed`: not
        excluded by stock, category, the shopper's purchases or a filter), and the notes."""
        pins = [p for p in self.pins if p.position <= n and (not p.category or p.category == query.category)]
        if not pins:
            return top, {}
        placed: dict[int, Candidate] = {}
        notes: dict[str, list[str]] = {}
        for rule in pins:
            item = rule.item_id
            if item in notes or not allowed(item):
                continue
            slot = rule.position - 1
            while slot in placed:
                slot += 1
            if slot >= n:
                continue
            placed[slot] = self._candidate(item, top, ranked)
            notes[item] = [f"pinned by rule {rule.id}"]
        if not placed:
            return top, {}
        rest = iter([c for c in top if c.item_id not in notes])
        out: list[Candidate] = []
        for slot in range(n):
            if slot in placed:
                out.append(placed.pop(slot))
                continue
            found = next(rest, None)
            if found is None:
                break
            out.append(found)
        out.extend(placed[s] for s in sorted(placed))  # a short list: pins follow what there is
        return out[:n], notes

    @staticmethod
    def _candidate(item: str, top: list[Candidate], ranked: Sequence[Candidate]) -> Candidate:
        for c in top:
            if c.item_id == item:
                return c
        ids = item_ids(ranked)
        if item in ids:
            return ranked[ids.index(item)]
        return Candidate(item, 0.0, "pin", PIN_REASON)


class Merchandising:
    """The rules of one Engine: stored, listed, compiled per placement, kept in step with
    the database (see the module's text)."""

    def __init__(self, store: Store, serving: Serving):
        self.store, self.serving = store, serving
        self._rules: list[Rule] | None = None
        self._mark: tuple | None = None
        self._version: int | None = None
        self._next_change = math.inf  # the next time a rule expires
        self._matched: dict[int, frozenset[str]] = {}
        self._matched_for: object | None = None  # the catalogue view they were computed on
        self._sets: dict[tuple[int, ...], RuleSet] = {}  # by the ids of the rules that apply

    # -- staying in step ---------------------------------------------------------------

    def sync(self, now: float | None = None) -> None:
        """Notice rules another connection added or removed (PRAGMA data_version moves, then
        the rules' mark), and rules that expired: the cached recommendation lists go."""
        version = self.store.data_version()
        if version != self._version:
            self._version = version
            mark = self.store.rules_mark()
            if mark != self._mark:
                self._changed(mark)
                return
        if (time.time() if now is None else now) >= self._next_change:
            self._changed(self._mark)

    def _changed(self, mark: tuple | None) -> None:
        self._mark = mark
        self._rules = None
        self._sets.clear()
        self._next_change = math.inf
        self.serving.cache.clear()

    def rules(self) -> list[Rule]:
        """Every stored rule (removed ones aside), oldest first."""
        if self._rules is None:
            self._rules = [Rule.of(row) for row in self.store.rules()]
            now = time.time()
            self._next_change = min((r.until for r in self._rules if r.until is not None and r.until > now),
                                    default=math.inf)
        return self._rules

    # -- serving ---------------------------------------------------------------------

    def for_request(self, placement: str = "", now: float | None = None) -> RuleSet | None:
        """The rules that apply to lists of `placement` now (None when none does)."""
        now = time.time() if now is None else now
        view = self.serving.catalogue()
        if view is not self._matched_for:  # the catalogue changed: conditions hold for other items
            self._matched.clear()
            self._sets.clear()
            self._matched_for = view
        rules = [r for r in self.rules() if r.applies_to(placement) and not r.expired(now)]
        if not rules:
            return None
        key = tuple(r.id for r in rules)  # placements without rules of their own share one set
        if key not in self._sets:
            self._sets[key] = self._compile(rules)
        return self._sets[key]

    def _compile(self, rules: list[Rule]) -> RuleSet:
        missing = [r for r in rules if r.where is not None and r.id not in self._matched]
        if missing:
            conditions = [(r.id, parse_condition(r.where)) for r in missing]
            found: dict[int, set[str]] = {rule_id: set() for rule_id, _ in conditions}
            for item in self.store.catalogue():
                for rule_id, condition in conditions:
                    if condition.test(item):
                        found[rule_id].add(item.item_id)
            self._matched.update({k: frozenset(v) for k, v in found.items()})
        out = RuleSet()
        for r in rules:
            if r.kind == "filter":
                out.filters.append((r.id, self._matched[r.id]))
            elif r.kind in ("boost", "bury"):
                sign, verb = (1.0, "boosted") if r.kind == "boost" else (-1.0, "buried")
                for item in self._matched[r.id]:
                    out.shifts[item] = out.shifts.get(item, 0.0) + sign * r.weight
                    out.notes.setdefault(item, []).append(f"{verb} by rule {r.id}")
            elif r.kind == "pin":
                out.pins.append(r)
        out.pins.sort(key=lambda r: (r.position, r.id))
        return out

    # -- the owner's commands ------------------------------------------------------------

    def add(self, kind: str, item_id: str | None = None, position: int | None = None,
            where: str | None = None, weight: float | None = None, placement: str | None = "",
            category: str | None = None, until: Any = None) -> Rule:
        """Check and store a rule; it applies from the next request."""
        row = check_rule(kind, item_id, position, where, weight, placement or "", category)
        if kind == "pin" and self.store.item(item_id) is None:
            raise EngineError(f"Unknown item {item_id!r}: a pin needs a product of the catalogue. "
                              f"Find ids with \"shelfwise items QUERY\".", title="Unknown item")
        row["until"] = until_time(until)
        rule_id = self.store.add_rule(row)
        self._changed(self.store.rules_mark())
        return self.listed(rule_id)

    def remove(self, rule_id: int) -> Rule:
        found = self.store.remove_rule(rule_id)
        if found is None:
            known = ", ".join(str(r.id) for r in self.rules()) or "none"
            raise EngineError(f"There is no rule {rule_id}. Rules: {known} (\"shelfwise rules list\").",
                              title="Unknown rule")
        self._changed(self.store.rules_mark())
        return replace(Rule.of(found), status="removed")

    def listed(self, rule_id: int | None = None, placement: str | None = None,
               now: float | None = None) -> Any:
        """Every rule with its status now (or the one with `rule_id`); `placement`: only the
        rules that apply to lists of that placement."""
        now = time.time() if now is None else now
        rules = [r for r in self.rules() if (rule_id is None or r.id == rule_id)
                 and (placement is None or r.applies_to(placement))]
        items = self.store.items(r.item_id for r in rules if r.kind == "pin")
        out = []
        for r in rules:
            status, note = "active", ""
            if r.expired(now):
                status, note = "expired", f"ended {r.until_date}"
            elif r.kind == "pin":
                item = items.get(r.item_id)
                if item is None:
                    status, note = "not shown", "the item is not in the catalogue"
                elif not item.in_stock:
                    status, note = "not shown", "the item is out of stock (stock wins over a pin)"
                elif r.category and item.category != r.category:
                    status, note = "not shown", (f"the item is in category {item.category!r}, "
                                                 f"the pin is for {r.category!r} lists")
            out.append(replace(r, status=status, note=note))
        if rule_id is not None:
            return out[0]
        return out


def check_rule(kind: str, item_id: str | None, position: int | None, where: str | None,
               weight: float | None, placement: str, category: str | None) -> dict[str, Any]:
    """The row of a well-formed rule, or an EngineError saying what is wrong."""
    def bad(message: str) -> EngineError:
        return EngineError(message, title="Invalid rule")

    if kind not in KINDS:
        raise bad(f"Unknown rule kind {kind!r}. Kinds: {', '.join(KINDS)}.")
    if placement and not PLACEMENT.match(placement):
        raise bad(f"placement {placement!r} must be 1-64 letters, digits and . _ - (e.g. home, product-page).")
    if kind == "pin":
        if not item_id:
            raise bad("A pin needs the item: shelfwise rules add pin ITEM --position P.")
        if position is None or isinstance(position, bool) or not 1 <= position <= MAX_POSITION:
            raise bad(f"A pin needs --position P, from 1 to {MAX_POSITION} (got {position}).")
        if where is not None or weight is not None:
            raise bad("A pin takes ITEM and --position; --where and --weight are for boost, bury and filter.")
        return {"kind": kind, "item_id": item_id, "position": int(position), "placement": placement,
                "category": category or None}
    if item_id is not None or position is not None:
        raise bad(f"A {kind} rule takes --where, not an item or a position (those are for pins).")
    if category:
        raise bad(f"--category is for pins; a {kind} rule says it in its condition: "
                  f"--where 'category = \"{category}\"'.")
    if not where or not where.strip():
        raise bad(f"A {kind} rule needs --where CONDITION, e.g. --where 'brand = \"Acme\"'.")
    parse_condition(where)  # a ConditionError points at the position
    if kind == "filter":
        if weight is not None:
            raise bad("A filter removes what matches: it takes no --weight.")
        return {"kind": kind, "condition": where, "placement": placement}
    if weight is None or isinstance(weight, bool) or not (0 < weight <= MAX_WEIGHT):
        raise bad(f"A {kind} rule needs --weight W: how many places matching items move "
                  f"{'up' if kind == 'boost' else 'down'}, more than 0 and at most {MAX_WEIGHT:g} "
                  f"(got {weight}).")
    return {"kind": kind, "condition": where, "weight": float(weight), "placement": placement}

