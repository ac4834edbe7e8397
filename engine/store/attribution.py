"""Online measurement: which recommendations were shown, and what shoppers did with them.

Every list the HTTP server answers is logged as impressions under a fresh
`recommendation_id` (one row per position, with the recaller that put the item there, the
ranker, the placement, and the A/B experiment and arm it was served under, if any). Events
sent back with that id are attributed to it when their item was in that list. `report` turns both into impressions, click-through rate,
add-to-cart rate, conversion rate and attributed revenue, per recaller, ranker, placement
and position.

Definitions (per impression, i.e. per item shown at one position of one response):
- clicked: a `view` or `click` event for that item came back with the response's id;
- carted: a `cart` event did; converted: a `purchase` event did;
- revenue: the sum over attributed purchases of the event's `value` (the order line's
  amount), or the item's catalogue price when the purchase came without one.
A resent event is stored once, so it counts once; several clicks on one impression count
as one click."""

from __future__ import annotations

import secrets
import time
from typing import Any, Mapping, Sequence

import sqlite_utils

from ..errors import EngineError
from ..types import Event, Recommendation

CLICK_KINDS = ("view", "click")
GROUPS = {"recaller": "source", "ranker": "ranker", "placement": "placement",
          "position": "position"}


def new_recommendation_id() -> str:
    return "r_" + secrets.token_hex(10)


def log_impressions(db: sqlite_utils.Database, recs: Sequence[Recommendation],
                    user_id: str | None, placement: str = "", now: float | None = None) -> str:
    """Store what one response showed; returns its recommendation_id."""
    rid = new_recommendation_id()
    now = time.time() if now is None else now
    rows = [(rid, r.rank, r.item_id, r.source, r.ranker, placement or "", user_id, now,
             r.experiment, r.arm) for r in recs]
    with db.atomic():
        db.conn.executemany(
            "INSERT INTO impressions (recommendation_id, position, item_id, source, ranker, "
            "placement, user_id, ts, experiment, arm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return rid


def attribute(db: sqlite_utils.Database, events: Sequence[Event],
              recommendation_ids: Mapping[str, str]) -> int:
    """Link newly stored events to the response they came from (call inside the transaction
    that stores them, so an event is attributed exactly when it is stored). `events` must
    carry their event_id; `recommendation_ids` maps event_id -> recommendation_id.
    Purchases without a value are valued at the item's current catalogue price."""
    rows = []
    prices: dict[str, float | None] = {}
    for e in events:
        rid = recommendation_ids.get(e.event_id or "")
        if not rid:
            continue
        value = e.value
        if e.kind == "purchase" and value is None:
            if e.item_id not in prices:
                found = db.conn.execute("SELECT price FROM items WHERE item_id = ?",
                                        [e.item_id]).fetchone()
                prices[e.item_id] = found[0] if found else None
            value = prices[e.item_id]
        rows.append((e.event_id, rid, e.item_id, e.user_id, e.kind, value, e.ts))
    if rows:
        db.conn.executemany(
            "INSERT OR IGNORE INTO attributed_events (event_id, recommendation_id, item_id, "
            "user_id, kind, value, ts) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows)


def erase_user(db: sqlite_utils.Database, user_id: str) -> dict[str, int]:
    """Forget a user's impressions and attributed events (call inside the erasure's
    transaction). The anonymous totals of past reports lose that user's share."""
    conn = db.conn
    return {
        "impressions": conn.execute("DELETE FROM impressions WHERE user_id = ?",
                                    [user_id]).rowcount,
        "attributed_events": conn.execute("DELETE FROM attributed_events WHERE user_id = ?",
                                          [user_id]).rowcount,
    }


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """'7d', '12h', '30m', '90s' (or None / 'all') -> the epoch time that far back."""
    if text is None or text in ("", "all"):
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    number, unit = text[:-1], text[-1:].lower()
    try:
        amount = float(number)
    except ValueError:
        amount = -1
    if unit not in units or amount < 0:
        raise EngineError(f"since {text!r} is not a duration. Use a number and a unit: "
                          f"30m, 12h, 7d, 2w (or 'all').", title="Invalid duration")
    return (time.time() if now is None else now) - amount * units[unit]


def _rates(n: int, recommendations: int, outcome: Mapping[str, float]) -> dict[str, Any]:
    clicks, carts, purchases = (int(outcome.get(k, 0)) for k in ("clicks", "carts", "purchases"))
    return {"impressions": n, "recommendations": recommendations, "clicks": clicks,
            "carts": carts, "purchases": purchases,
            "revenue": round(float(outcome.get("revenue", 0.0)), 2),
            "ctr": clicks / n if n else 0.0, "cart_rate": carts / n if n else 0.0,
            "conversion_rate": purchases / n if n else 0.0}


def impressions_where(since: float | None, placement: str | None) -> tuple[str, list]:
    """The SQL condition (over `impressions i`) and parameters for impressions logged since
    `since` (epoch seconds; None: all time), optionally of one placement."""
    where, params = ["1 = 1"], []
    if since is not None:
        where.append("i.ts >= ?")
        params.append(since)
    if placement is not None:
        where.append("i.placement = ?")
        params.append(placement)
    return " AND ".join(where), params


def report(db: sqlite_utils.Database, since: float | None = None,
           placement: str | None = None) -> dict[str, Any]:
    """Impressions and what came of them since `since` (epoch seconds; None: all time),
    optionally for one placement: overall and per recaller, ranker, placement, position.

    Impressions are counted per group in SQL; outcomes exist only for the few impressions
    that events came back for, so they are gathered once and summed here."""
    cond, params = impressions_where(since, placement)
    conn = db.conn
    outcomes = conn.execute(f"""
        SELECT i.source, i.ranker, i.placement, i.position,
               max(a.kind IN {CLICK_KINDS!r}), max(a.kind = 'cart'), max(a.kind = 'purchase'),
               total(CASE WHEN a.kind = 'purchase' THEN a.value END)
        FROM attributed_events a
        JOIN impressions i ON i.recommendation_id = a.recommendation_id AND i.item_id = a.item_id
        WHERE {cond}
        GROUP BY i.recommendation_id, i.position""", params).fetchall()
    columns = {"source": 0, "ranker": 1, "placement": 2, "position": 3}

    def summed(column: str | None) -> dict[Any, dict[str, float]]:
        out: dict[Any, dict[str, float]] = {}
        for row in outcomes:
            acc = out.setdefault(row[columns[column]] if column else None,
                                 {"clicks": 0, "carts": 0, "purchases": 0, "revenue": 0.0})
            acc["clicks"] += row[4]
            acc["carts"] += row[5]
            acc["purchases"] += row[6]
            acc["revenue"] += row[7]
        return out

    def run(column: str | None) -> list[dict[str, Any]]:
        group = f"{column}, " if column else ""
        sql = (f"SELECT {group}count(*), count(DISTINCT recommendation_id) FROM impressions i "
               f"WHERE {cond}" + (f" GROUP BY {column} ORDER BY {column}" if column else ""))
        sums = summed(column)
        out = []
        for row in conn.execute(sql, params).fetchall():
            name = row[0] if column else None
            rates = _rates(row[-2], row[-1], sums.get(name, {}))
            out.append(({"name": name} if column else {}) | rates)
        return out

    return {"since": since, "placement": placement, "overall": run(None)[0],
            **{f"by_{name}": run(col) for name, col in GROUPS.items()}}
