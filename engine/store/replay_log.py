"""What offline replay reads: the logged impressions of a window, each with whether it was
clicked (a `view` or `click` event came back with its recommendation id, as
store.attribution defines a click)."""

from __future__ import annotations

import sqlite_utils

from .attribution import CLICK_KINDS, impressions_where


def clicked_impressions(db: sqlite_utils.Database, since: float | None = None,
                        placement: str | None = None) -> list[tuple]:
    """(recommendation_id, position, item_id, source, placement, user_id, ts, clicked) per logged
    impression since `since` (epoch seconds; None: all), optionally of one placement, in
    list order."""
    cond, params = impressions_where(since, placement)
    return db.conn.execute(f"""
        SELECT i.recommendation_id, i.position, i.item_id, i.source, i.placement, i.user_id, i.ts,
               EXISTS (SELECT 1 FROM attributed_events a
                       WHERE a.recommendation_id = i.recommendation_id AND a.item_id = i.item_id
                         AND a.kind IN {CLICK_KINDS!r})
        FROM impressions i WHERE {cond}
        ORDER BY i.recommendation_id, i.position""", params).fetchall()
