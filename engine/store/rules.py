"""The merchandising rules' table (engine.merchandising): written by `rules add` and
`rules remove`, read by every engine that serves. Part of `Store` (a mixin)."""

from __future__ import annotations

import time
from typing import Any

COLUMNS = ("id", "kind", "item_id", "position", "condition", "weight", "placement", "category",
           "until", "created_at")


class RuleStore:
    conn: Any  # sqlite3.Connection, from Store
    db: Any

    def add_rule(self, row: dict[str, Any]) -> int:
        """Store a rule (the columns of COLUMNS but the id); returns its id."""
        with self.db.atomic():
            cur = self.conn.execute(
                "INSERT INTO rules (kind, item_id, position, condition, weight, placement, category, "
                "until, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row.get(c) for c in COLUMNS[1:-1]] + [time.time()])
            return cur.lastrowid

    def rules(self) -> list[dict[str, Any]]:
        """Every rule not removed, oldest first."""
        cur = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM rules WHERE removed_at IS NULL "
                                f"ORDER BY id")
        return [dict(zip(COLUMNS, r)) for r in cur.fetchall()]

    def remove_rule(self, rule_id: int) -> dict[str, Any] | None:
        """Mark a rule removed; returns it as it was (None: no such rule, or removed already)."""
        with self.db.atomic():
            row = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM rules WHERE id = ? AND "
                                    f"removed_at IS NULL", [rule_id]).fetchone()
            if row is None:
                return None
            self.conn.execute("UPDATE rules SET removed_at = ? WHERE id = ?", [time.time(), rule_id])
        return dict(zip(COLUMNS, row))

    def rules_mark(self) -> tuple:
        """Moves whenever a rule is added or removed (by any connection)."""
        return tuple(self.conn.execute(
            "SELECT count(*), coalesce(max(id), 0), coalesce(max(removed_at), 0) FROM rules").fetchone())
