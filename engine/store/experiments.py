"""The A/B experiments' table (engine.experiments) and the per-shopper counts their report
is computed from. Impressions record their experiment and arm (attribution.log_impressions);
clicks, carts, purchases and revenue are those of engine.store.attribution."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlite_utils

from .attribution import CLICK_KINDS

COLUMNS = ("name", "placement", "arms", "split", "started_at", "stopped_at", "winner")


def _row(values: tuple) -> dict[str, Any]:
    row = dict(zip(COLUMNS, values))
    row["arms"] = json.loads(row["arms"])
    return row


def add_experiment(db: sqlite_utils.Database, name: str, placement: str, arms: list[dict[str, Any]],
                   split: str) -> dict[str, Any]:
    """Store a running experiment; returns its row. The caller checks names and placements
    (engine.experiments.start) inside the same transaction, via `running` and `experiment`."""
    now = time.time()
    db.conn.execute(f"INSERT INTO experiments ({', '.join(COLUMNS[:5])}) VALUES (?, ?, ?, ?, ?)",
                    [name, placement, json.dumps(arms), split, now])
    return experiment(db, name)


def experiment(db: sqlite_utils.Database, name: str) -> dict[str, Any] | None:
    found = db.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM experiments WHERE name = ?",
                            [name]).fetchone()
    return _row(found) if found else None


def experiments(db: sqlite_utils.Database, running_only: bool = False) -> list[dict[str, Any]]:
    """Every experiment (or only those running), newest first."""
    where = " WHERE stopped_at IS NULL" if running_only else ""
    cur = db.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM experiments{where} "
                          f"ORDER BY started_at DESC, name")
    return [_row(r) for r in cur.fetchall()]


def stop_experiment(db: sqlite_utils.Database, name: str, winner: str | None) -> None:
    db.conn.execute("UPDATE experiments SET stopped_at = ?, winner = ? WHERE name = ?",
                    [time.time(), winner, name])


def experiments_mark(db: sqlite_utils.Database) -> tuple:
    """Moves whenever an experiment starts or stops (in any connection)."""
    return tuple(db.conn.execute(
        "SELECT count(*), coalesce(max(started_at), 0), count(stopped_at), "
        "coalesce(max(stopped_at), 0) FROM experiments").fetchone())


def shopper_counts(db: sqlite_utils.Database, name: str) -> list[tuple]:
    """Per arm and identified shopper of experiment `name`: (arm, user_id, impressions,
    lists, clicked impressions, carted, converted, revenue). An impression counts as clicked
    (carted, converted) once however many such events came back for it."""
    conn = db.conn
    shown = conn.execute(
        "SELECT arm, user_id, count(*), count(DISTINCT recommendation_id) FROM impressions "
        "WHERE experiment = ? AND user_id IS NOT NULL GROUP BY arm, user_id", [name]).fetchall()
    outcomes = {(r[0], r[1]): r[2:] for r in conn.execute(f"""
        SELECT arm, user_id, sum(clicked), sum(carted), sum(bought), total(revenue) FROM (
            SELECT i.arm AS arm, i.user_id AS user_id,
                   max(a.kind IN {CLICK_KINDS!r}) AS clicked, max(a.kind = 'cart') AS carted,
                   max(a.kind = 'purchase') AS bought,
                   total(CASE WHEN a.kind = 'purchase' THEN a.value END) AS revenue
            FROM impressions i
            JOIN attributed_events a ON a.recommendation_id = i.recommendation_id
                                    AND a.item_id = i.item_id
            WHERE i.experiment = ? AND i.user_id IS NOT NULL
            GROUP BY i.recommendation_id, i.position)
        GROUP BY arm, user_id""", [name]).fetchall()}
    return [(arm, user, n, lists, *outcomes.get((arm, user), (0, 0, 0, 0.0)))
            for arm, user, n, lists in shown]
