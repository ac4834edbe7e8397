"""The store's read-only questions for the views (engine.inspect): who the shoppers are,
what happened to an item, how events spread over time and over the catalogue, what the
knowledge graph links. Part of `Store` (a mixin): every SQL statement lives in the store
layer."""

from __future__ import annotations

import json
from typing import Any


class ViewQueries:
    conn: Any  # sqlite3.Connection, from Store

    def find_users(self, text: str = "", limit: int = 50) -> list[dict[str, Any]]:
        """Users whose id or attributes contain `text`, exact id first, with their number of
        events; an empty text: the most active users."""
        if text:
            like = f"%{text}%"
            rows = self.conn.execute(
                "SELECT u.user_id, u.attrs, (SELECT count(*) FROM events e WHERE e.user_id = u.user_id) "
                "FROM users u WHERE u.user_id LIKE ? OR u.attrs LIKE ? "
                "ORDER BY u.user_id = ? DESC, u.user_id LIMIT ?", [like, like, text, limit]).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT u.user_id, u.attrs, count(e.id) AS n FROM users u JOIN events e "
                "ON e.user_id = u.user_id GROUP BY u.user_id ORDER BY n DESC, u.user_id LIMIT ?",
                [limit]).fetchall()
        return [{"user_id": r[0], "attrs": json.loads(r[1] or "{}"), "events": r[2]} for r in rows]

    def events_by_kind(self, user_id: str | None = None, item_id: str | None = None) -> dict[str, int]:
        """Event counts by kind, most frequent first, of one user or one item."""
        column, value = ("user_id", user_id) if user_id is not None else ("item_id", item_id)
        return dict(self.conn.execute(
            f"SELECT kind, count(*) FROM events WHERE {column} = ? GROUP BY kind ORDER BY 2 DESC",
            [value]).fetchall())

    def item_users(self, item_id: str) -> int:
        return self.conn.execute("SELECT count(DISTINCT user_id) FROM events WHERE item_id = ?",
                                 [item_id]).fetchone()[0]

    def event_span(self) -> tuple[float | None, float | None]:
        return tuple(self.conn.execute("SELECT min(ts), max(ts) FROM events").fetchone())

    def events_per_bucket(self, start: float, width: float, buckets: int) -> list[tuple[str, int, int]]:
        """(kind, bucket, count) with bucket = (ts - start) // width, at most buckets - 1."""
        return self.conn.execute(
            "SELECT kind, min(CAST((ts - ?) / ? AS INTEGER), ?), count(*) FROM events "
            "GROUP BY kind, 2 ORDER BY kind", [start, width, buckets - 1]).fetchall()

    def item_event_counts(self) -> list[int]:
        """Events per catalogue item, most first (items never touched count 0)."""
        return [r[0] for r in self.conn.execute(
            "SELECT count(e.id) AS n FROM items i LEFT JOIN events e ON e.item_id = i.item_id "
            "GROUP BY i.item_id ORDER BY n DESC")]

    def item_links(self, item_id: str, limit: int) -> list[tuple[str, str, str]]:
        """(relation, node, "out"|"in") of every triple touching an entity the item is linked to."""
        return self.conn.execute(
            "SELECT t.relation, t.tail AS node, 'out' FROM item_entities ie "
            "JOIN triples t ON t.head = ie.entity WHERE ie.item_id = ? "
            "UNION SELECT t.relation, t.head AS node, 'in' FROM item_entities ie "
            "JOIN triples t ON t.tail = ie.entity WHERE ie.item_id = ? LIMIT ?",
            [item_id, item_id, limit]).fetchall()

    def items_sharing(self, node: str, relation: str, direction: str, but: str) -> list[str]:
        """The other items that reach `node` by `relation` in the same direction."""
        near, far = ("head", "tail") if direction == "out" else ("tail", "head")
        return [r[0] for r in self.conn.execute(
            f"SELECT DISTINCT ie.item_id FROM triples t JOIN item_entities ie ON ie.entity = t.{near} "
            f"WHERE t.{far} = ? AND t.relation = ? AND ie.item_id != ?", [node, relation, but])]

    def entity_item(self, entity: str) -> str | None:
        """The product an entity stands for, if any."""
        row = self.conn.execute("SELECT item_id FROM item_entities WHERE entity = ? LIMIT 1",
                                [entity]).fetchone()
        return row[0] if row else None
