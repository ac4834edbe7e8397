"""Online measurement: which recommendations were shown, and what shoppers did with them.

Every list the HTTP server answers is logged as impressions under a fresh
`recommendation_id` (one row per position, with the recaller that put the item there, the
ranker and the placement). Events sent back with that id are attributed to it when their
item was in that list. `report` turns both into impressions, click-through rate,
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

from .errors import EngineError
from .types import Event, Recommendation

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
    rows = [(rid, r.rank, r.item_id, r.source, r.ranker, placement or "", user_id, now)
            for r in recs]
    with db.atomic():
        db.conn.executemany(
            "INSERT INTO impressions (recommendation_id, position, item_id, source, ranker, "
            "placement, user_id, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
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


def _rates(row: Mapping[str, Any]) -> dict[str, Any]:
    n = row["impressions"] or 0
    out = {"impressions": n, "recommendations": row["recommendations"],
           "clicks": row["clicks"], "carts": row["carts"], "purchases": row["purchases"],
           "revenue": round(float(row["revenue"] or 0.0), 2)}
    for name, count in (("ctr", "clicks"), ("cart_rate", "carts"),
                        ("conversion_rate", "purchases")):
        out[name] = (row[count] / n) if n else 0.0
    return out


def report(db: sqlite_utils.Database, since: float | None = None,
           placement: str | None = None) -> dict[str, Any]:
    """Impressions and what came of them since `since` (epoch seconds; None: all time),
    optionally for one placement: overall and per recaller, ranker, placement, position."""
    where, params = ["1 = 1"], []
    if since is not None:
        where.append("i.ts >= ?")
        params.append(since)
    if placement is not None:
        where.append("i.placement = ?")
        params.append(placement)
    outcome = f"""
        WITH outcome AS (
          SELECT i.recommendation_id, i.position, i.source, i.ranker, i.placement,
                 coalesce(max(a.kind IN {CLICK_KINDS!r}), 0) AS clicked,
                 coalesce(max(a.kind = 'cart'), 0) AS carted,
                 coalesce(max(a.kind = 'purchase'), 0) AS bought,
                 total(CASE WHEN a.kind = 'purchase' THEN a.value END) AS revenue
          FROM impressions i
          LEFT JOIN attributed_events a
            ON a.recommendation_id = i.recommendation_id AND a.item_id = i.item_id
          WHERE {' AND '.join(where)}
          GROUP BY i.recommendation_id, i.position)"""
    totals = """count(*) AS impressions, count(DISTINCT recommendation_id) AS recommendations,
                total(clicked) AS clicks, total(carted) AS carts, total(bought) AS purchases,
                total(revenue) AS revenue"""

    def run(group: str | None) -> list[dict[str, Any]]:
        sql = f"{outcome} SELECT {group + ' AS name, ' if group else ''}{totals} FROM outcome"
        if group:
            sql += f" GROUP BY {group} ORDER BY {group}"
        rows = db.conn.execute(sql, params)
        cols = [d[0] for d in rows.description]
        out = []
        for values in rows.fetchall():
            row = dict(zip(cols, values))
            for k in ("clicks", "carts", "purchases"):
                row[k] = int(row[k] or 0)
            out.append(({"name": row["name"]} if group else {}) | _rates(row))
        return out

    return {"since": since, "placement": placement, "overall": run(None)[0],
            **{f"by_{name}": run(col) for name, col in GROUPS.items()}}
