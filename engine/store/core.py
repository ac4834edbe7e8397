"""Store: every table of the shop's SQLite file behind small, transactional methods.

Imports and model swaps are all-or-nothing: `write` runs one transaction for a whole
import, `activate` switches every artifact of a training run at once."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import sqlite_utils

from ..dataset import DEFAULT_KIND_WEIGHTS, Dataset
from ..errors import ImportDataError
from ..catalogue import CatalogueView
from .models import ModelStore
from .rules import RuleStore
from .views import ViewQueries
from ..types import Event, Interaction, Item, ItemEntity, Record, Triple, User

CHUNK = 20_000


def event_id_for(e: Event) -> str:
    """A stable id for an event that came without one, so re-imports add nothing."""
    value = None if e.value is None else float(e.value)  # 5 and 5.0 are the same event
    raw = f"{e.user_id}\x1f{e.item_id}\x1f{e.kind}\x1f{float(e.ts)!r}\x1f{value!r}".encode()
    return "h:" + hashlib.blake2b(raw, digest_size=10).hexdigest()


@dataclass
class ImportReport:
    items: int = 0
    users: int = 0
    events: int = 0
    duplicates: int = 0
    triples: int = 0
    links: int = 0
    seconds: float = 0.0
    conflicts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("items", "users", "events", "duplicates", "triples", "links", "seconds")}


def _item_row(item: Item, now: float) -> tuple:
    return (item.item_id, item.title, item.description, item.category, item.brand, item.price,
            json.dumps(list(item.tags)) if item.tags else "[]", 1 if item.in_stock else 0,
            json.dumps(dict(item.attrs), sort_keys=True) if item.attrs else "{}", now, now)


def row_to_item(row: Mapping[str, Any]) -> Item:
    return Item(
        item_id=row["item_id"], title=row["title"] or "", description=row["description"] or "",
        category=row["category"] or "", brand=row["brand"] or "", price=row["price"],
        tags=tuple(json.loads(row["tags"] or "[]")), in_stock=bool(row["in_stock"]),
        attrs=json.loads(row["attrs"] or "{}"),
    )


class Store(ViewQueries, ModelStore, RuleStore):
    def __init__(self, db: sqlite_utils.Database):
        self.db = db
        self.conn = db.conn
        self._users_written: set[str] | None = None

    # -- writing -----------------------------------------------------------------------

    def write(self, records: Iterable[Record], progress=None) -> ImportReport:
        """Write a whole import in one transaction: every record or none of them."""
        started = time.perf_counter()
        report = ImportReport()
        buffers: dict[type, list] = {Item: [], User: [], Event: [], Triple: [], ItemEntity: []}
        seen = 0
        deferred: list[str] = []
        # while importing, up to 2 GiB of pages (taken only as used): the unique index of
        # 20 million event ids is ~0.9 GB of random inserts; with 256 MiB an import of 20M
        # events slowed to 8,000 events/s past 11M (on a busy machine)
        self.conn.execute("PRAGMA cache_size = -2097152")
        self._users_written = set()
        try:
            with self.db.atomic():
                for record in records:
                    buf = buffers.get(type(record))
                    if buf is None:
                        raise ImportDataError(getattr(record, "origin", "") or "source", None, None,
                                              f"unsupported record type {type(record).__name__}")
                    buf.append(record)
                    if len(buf) >= CHUNK:
                        if type(record) is Event and not deferred:
                            deferred = self._defer_event_indexes()
                        self._flush(type(record), buf, report)
                    seen += 1
                    if progress and seen % CHUNK == 0:
                        progress("import", seen, None, f"{seen:,} records")
                for kind, buf in buffers.items():
                    if buf:
                        self._flush(kind, buf, report)
                if deferred:
                    if progress:
                        progress("index", 0, 1, "rebuilding event indexes")
                    for sql in deferred:
                        self.conn.execute(sql)
        finally:
            self.conn.execute("PRAGMA cache_size = -65536")
            self._users_written = None
        if progress:
            progress("import", seen, seen, f"{seen:,} records")
        report.seconds = time.perf_counter() - started
        return report

    def _defer_event_indexes(self) -> list[str]:
        """For a big import into a small table: drop the secondary event indexes now and
        return the SQL that rebuilds them at the end (same transaction, so a failed
        import rolls the drop back too). Sorting once beats updating B-trees per row."""
        if self.conn.execute("SELECT count(*) FROM events").fetchone()[0] > 2_000_000:
            return []
        rows = self.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
            "AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%'").fetchall()
        for name, _ in rows:
            self.conn.execute(f'DROP INDEX "{name}"')
        return [sql for _, sql in rows]

    def _flush(self, kind: type, buf: list, report: ImportReport) -> None:
        if kind is Item:
            report.items += self._write_items(buf)
        elif kind is User:
            report.users += self._write_users(buf)
        elif kind is Event:
            added, dups, conflicts = self.add_events(buf)
            report.events += len(added)
            report.duplicates += dups
            if conflicts:
                e = conflicts[0]
                raise ImportDataError(e.origin or "events", None, "event_id",
                                      f"{e.event_id!r} was already stored with a different "
                                      f"payload (user, item, kind, value or timestamp differ)")
        elif kind is Triple:
            report.triples += self._insert_ignore(
                "INSERT OR IGNORE INTO triples (head, relation, tail) VALUES (?, ?, ?)",
                [(t.head, t.relation, t.tail) for t in buf])
        elif kind is ItemEntity:
            report.links += self._insert_ignore(
                "INSERT OR IGNORE INTO item_entities (item_id, entity) VALUES (?, ?)",
                [(link.item_id, link.entity) for link in buf])
        buf.clear()

    def _insert_ignore(self, sql: str, rows: list[tuple]) -> int:
        """Run `sql` for every row; return the rows it changed (trigger work not counted)."""
        return max(self.conn.executemany(sql, rows).rowcount, 0) if rows else 0

    def _write_items(self, items: Sequence[Item]) -> int:
        """Insert new items, update changed ones. Returns how many rows changed."""
        now = time.time()
        return self._insert_ignore(
            """INSERT INTO items (item_id, title, description, category, brand, price, tags,
                                  in_stock, attrs, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(item_id) DO UPDATE SET
                 title=excluded.title, description=excluded.description,
                 category=excluded.category, brand=excluded.brand, price=excluded.price,
                 tags=excluded.tags, in_stock=excluded.in_stock, attrs=excluded.attrs,
                 updated_at=excluded.updated_at
               WHERE (title, description, category, brand, price, tags, in_stock, attrs)
                     IS NOT (excluded.title, excluded.description, excluded.category,
                             excluded.brand, excluded.price, excluded.tags,
                             excluded.in_stock, excluded.attrs)""",
            [_item_row(i, now) for i in items])

    def _write_users(self, users: Sequence[User]) -> int:
        now = time.time()
        return self._insert_ignore(
            """INSERT INTO users (user_id, attrs, created_at) VALUES (?, ?, ?)
               ON CONFLICT(user_id) DO UPDATE SET attrs=excluded.attrs
               WHERE attrs IS NOT excluded.attrs""",
            [(u.user_id, json.dumps(dict(u.attrs), sort_keys=True), now) for u in users])

    def add_events(self, events: Sequence[Event]) -> tuple[list[Event], int, list[Event]]:
        """Store events idempotently. Returns (added, duplicates, conflicts): a duplicate
        resends a stored id with the same payload and is skipped; a conflict reuses an id
        for different data and is not stored (the caller decides whether that is fatal)."""
        rows = []
        for e in events:
            if not e.user_id or not e.item_id:
                raise ImportDataError(e.origin or "events", None,
                                      "user_id" if not e.user_id else "item_id", "is empty")
            if not math.isfinite(e.ts):
                raise ImportDataError(e.origin or "events", None, "timestamp",
                                      f"{e.ts!r} is not a finite time")
            rows.append((e.event_id or event_id_for(e), e.user_id, e.item_id, e.kind,
                         e.value, float(e.ts)))
        # Fast path: insert, and only look closer if some ids were already there.
        inserted = self._insert_ignore(
            "INSERT OR IGNORE INTO events (event_id, user_id, item_id, kind, value, ts) "
            "VALUES (?, ?, ?, ?, ?, ?)", rows)
        if inserted == len(rows):
            added, duplicates, conflicts = list(events), 0, []
        else:
            added, duplicates, conflicts = self._sort_out(events, rows, inserted)
        if inserted:
            users = {r[1] for r in rows}
            if self._users_written is not None:  # inside write(): each user once per import
                users -= self._users_written
                self._users_written |= users
            now = time.time()
            self.conn.executemany(
                "INSERT OR IGNORE INTO users (user_id, attrs, created_at) VALUES (?, '{}', ?)",
                [(u, now) for u in users])
        return added, duplicates, conflicts

    def _sort_out(self, events, rows, inserted):
        """After a partial insert: which rows are new, which resend a stored event, and
        which reuse an id for different data. New rows got rowids above the old maximum."""
        stored = self._stored_events([r[0] for r in rows])
        first_new = self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0] \
            - inserted + 1
        new_ids = {r[0] for r in self.conn.execute(
            "SELECT event_id FROM events WHERE id >= ?", [first_new])}
        added, conflicts, duplicates, taken = [], [], 0, set()
        for e, row in zip(events, rows):
            if row[0] in new_ids and row[0] not in taken and stored.get(row[0]) == row:
                added.append(e)
                taken.add(row[0])
            elif stored.get(row[0]) == row:
                duplicates += 1
            else:
                conflicts.append(e)
        return added, duplicates, conflicts

    def _rows_in(self, sql: str, ids: Sequence[str]) -> Iterator[tuple]:
        """Rows of `sql`, whose "{marks}" is filled with placeholders for ids, 500 at a time
        (SQLite limits the parameters of one statement)."""
        for start in range(0, len(ids), 500):
            part = list(ids[start:start + 500])
            yield from self.conn.execute(sql.replace("{marks}", ",".join("?" * len(part))), part)

    def _stored_events(self, ids: list[str]) -> dict[str, tuple]:
        return {row[0]: row for row in self._rows_in(
            "SELECT event_id, user_id, item_id, kind, value, ts FROM events WHERE event_id IN ({marks})",
            ids)}

    def consumed(self, user_id: str, kinds: Sequence[str]) -> set[str]:
        """Items the user did one of `kinds` to (by default: bought or rated)."""
        if not kinds:
            return set()
        marks = ",".join("?" * len(kinds))
        return {r[0] for r in self.conn.execute(
            f"SELECT DISTINCT item_id FROM events WHERE user_id = ? AND kind IN ({marks})",
            [user_id, *kinds])}

    def delete_items(self, ids: Iterable[str]) -> int:
        """Remove products from the catalogue (their events stay: history is history)."""
        with self.db.atomic():
            return sum(self.conn.execute("DELETE FROM items WHERE item_id = ?", [i]).rowcount
                       for i in ids)

    def delete_user(self, user_id: str) -> int:
        with self.db.atomic():
            n = self.conn.execute("DELETE FROM events WHERE user_id = ?", [user_id]).rowcount
            self.conn.execute("DELETE FROM users WHERE user_id = ?", [user_id])
        return n

    def most_chosen(self, n: int, category: str | None = None) -> list[tuple[str, int]]:
        """In-stock catalogue items by how many shoppers chose them, most first, as
        (item_id, shoppers): the popular list without a trained model."""
        where, params = ("AND i.category = ?", [category]) if category else ("", [])
        return [(r[0], r[1]) for r in self.conn.execute(
            f"SELECT e.item_id, count(DISTINCT e.user_id) AS people FROM events e "
            f"JOIN items i ON i.item_id = e.item_id WHERE i.in_stock {where} "
            f"GROUP BY e.item_id ORDER BY people DESC, e.item_id LIMIT ?", [*params, n])]

    def checkpoint(self, attempts: int = 20) -> bool:
        """Copy the write-ahead log into the database file and empty it (TRUNCATE), so that
        pages a deletion replaced are gone from the disk. Another connection reading an
        older snapshot blocks it for a moment: tried `attempts` times, 0.1 s apart. Returns
        whether the log was emptied."""
        for _ in range(attempts):
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(0.1)
        return False

    def user_data(self, user_id: str) -> dict[str, Any] | None:
        """Everything stored about a shopper, by table (None: nothing at all)."""
        def rows(sql: str) -> list[dict[str, Any]]:
            cur = self.conn.execute(sql, [user_id])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

        profile = self.conn.execute("SELECT attrs, created_at FROM users WHERE user_id = ?",
                                    [user_id]).fetchone()
        out = {
            "user_id": user_id,
            "profile": {"attrs": json.loads(profile[0] or "{}"), "created_at": profile[1]} if profile else None,
            "events": rows("SELECT event_id, item_id, kind, value, ts FROM events WHERE user_id = ? ORDER BY ts, id"),
            "impressions": rows("SELECT recommendation_id, position, item_id, source, ranker, placement, ts "
                                "FROM impressions WHERE user_id = ? ORDER BY ts, position"),
            "attributed_events": rows("SELECT event_id, recommendation_id, item_id, kind, value, ts "
                                      "FROM attributed_events WHERE user_id = ? ORDER BY ts"),
        }
        if profile is None and not any(out[k] for k in ("events", "impressions", "attributed_events")):
            return None
        return out

    # -- reading -----------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        q = self.conn.execute
        by_kind = dict(q("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY 2 DESC"))
        return {
            "items": q("SELECT count(*) FROM items").fetchone()[0],
            "users": q("SELECT count(*) FROM users").fetchone()[0],
            "events": sum(by_kind.values()),
            "events_by_kind": by_kind,
            "triples": q("SELECT count(*) FROM triples").fetchone()[0],
            "links": q("SELECT count(*) FROM item_entities").fetchone()[0],
        }

    def items(self, ids: Iterable[str]) -> dict[str, Item]:
        ids = list(dict.fromkeys(ids))
        out: dict[str, Item] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for row in self.db.query(f"SELECT * FROM items WHERE item_id IN ({marks})", part):
                out[row["item_id"]] = row_to_item(row)
        return out

    def item(self, item_id: str) -> Item | None:
        return self.items([item_id]).get(item_id)

    def catalogue(self) -> Iterator[Item]:
        for row in self.db.query("SELECT * FROM items ORDER BY item_id"):
            yield row_to_item(row)

    def find_items(self, text: str, limit: int = 20) -> list[Item]:
        """Products whose id is `text`, or whose title, category, brand, tags or attributes
        contain it (case-insensitive): the exact id first, then shorter titles."""
        like = f"%{text}%"
        rows = self.db.query(
            "SELECT * FROM items WHERE item_id = ? OR title LIKE ? OR category LIKE ? OR brand LIKE ? "
            "OR tags LIKE ? OR attrs LIKE ? ORDER BY item_id = ? DESC, title LIKE ? DESC, length(title) "
            "LIMIT ?", [text, like, like, like, like, like, text, like, limit])
        return [row_to_item(r) for r in rows]

    def available_items(self) -> set[str]:
        """Catalogue items that can be recommended (known and in stock)."""
        return {r[0] for r in self.conn.execute("SELECT item_id FROM items WHERE in_stock = 1")}

    def has_user(self, user_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM users WHERE user_id = ?",
                                 [user_id]).fetchone() is not None

    def user_attrs(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The attributes imported with the users (segment, country, age, …): of `ids`, or of
        every user; users without any are left out."""
        sql = "SELECT user_id, attrs FROM users WHERE attrs != '{}'"
        rows = self.conn.execute(sql) if ids is None else \
            self._rows_in(sql + " AND user_id IN ({marks})", list(ids))
        return {r[0]: json.loads(r[1]) for r in rows}

    def history(self, user_id: str, limit: int | None = None,
                upto: int | None = None) -> tuple[Interaction, ...]:
        """The user's events, oldest first (the newest `limit` of them); `upto`: only
        events stored up to that event row id (what a snapshot held)."""
        sql = "SELECT item_id, kind, ts, value FROM events WHERE user_id = ?"
        params: list[Any] = [user_id]
        if upto is not None:
            sql += " AND id <= ?"
            params.append(upto)
        sql += " ORDER BY ts DESC, id DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self.conn.execute(sql, params).fetchall()
        return tuple(Interaction(r[0], r[1], r[2], r[3]) for r in reversed(rows))

    def events_between(self, after: int, upto: int) -> list[Event]:
        """Events stored after row id `after` up to row id `upto`, in the order stored."""
        rows = self.conn.execute(
            "SELECT user_id, item_id, kind, ts, value, event_id FROM events WHERE id > ? AND "
            "id <= ? ORDER BY id", [after, upto]).fetchall()
        return [Event(*r) for r in rows]

    # -- what changed: cheap marks another connection's writes move ----------------------

    def data_version(self) -> int:
        """PRAGMA data_version: moves when another connection commits."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def catalogue_mark(self) -> tuple:
        """Moves when items or their vectors change (an embedding's row is replaced when
        it is stored again, so its row id moves)."""
        return tuple(self.conn.execute(
            "SELECT count(*), max(updated_at), (SELECT count(*) FROM embeddings), "
            "(SELECT max(rowid) FROM embeddings) FROM items").fetchone())

    def newest_event_id(self) -> int:
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def active_model_map(self) -> dict[str, int]:
        """Each active model's name -> its artifact row id."""
        return dict(self.conn.execute("SELECT name, id FROM artifacts WHERE active = 1"))

    def active_model_ids(self) -> str | None:
        """The active artifact rows' ids (a rollback that swaps versions changes it too)."""
        return self.conn.execute(
            "SELECT group_concat(id) FROM (SELECT id FROM artifacts WHERE active = 1 ORDER BY id)").fetchone()[0]

    def catalogue_view(self) -> CatalogueView:
        """What the serving filters need of the catalogue (see CatalogueView)."""
        rows = self.conn.execute("SELECT item_id, category, in_stock FROM items").fetchall()
        untouched = {r[0] for r in self.conn.execute(
            "SELECT item_id FROM items i WHERE NOT EXISTS "
            "(SELECT 1 FROM events e WHERE e.item_id = i.item_id)")}
        return CatalogueView(available={r[0] for r in rows if r[2]},
                             categories={r[0]: r[1] or "" for r in rows}, untouched=untouched)

    def item_entities(self) -> Iterator[tuple[str, str]]:
        """(item_id, entity) links of the knowledge graph."""
        return iter(self.conn.execute("SELECT item_id, entity FROM item_entities"))

    def triples(self) -> Iterator[tuple[str, str, str]]:
        """(head, relation, tail) triples of the knowledge graph."""
        return iter(self.conn.execute("SELECT head, relation, tail FROM triples"))

    def users_with_events(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT user_id FROM events ORDER BY user_id")]

    def item_events(self, item_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.db.query(
            "SELECT user_id, kind, ts, value FROM events WHERE item_id = ? ORDER BY ts DESC LIMIT ?",
            [item_id, limit]))

    def dataset(self, kind_weights: Mapping[str, float] | None = None) -> Dataset:
        """Everything in the store as arrays, events in time order."""
        cat = self.conn.execute("SELECT item_id, in_stock, category FROM items ORDER BY item_id").fetchall()
        cat_ids = [r[0] for r in cat]
        rows = self.conn.execute("SELECT user_id, item_id, kind, value, ts FROM events ORDER BY ts, id")
        data = Dataset.from_rows(rows, catalogue=cat_ids,
                                 kind_weights=kind_weights or DEFAULT_KIND_WEIGHTS, store=self)
        stock = dict((r[0], bool(r[1])) for r in cat)
        category = dict((r[0], r[2] or "") for r in cat)
        ids = data.item_ids.tolist()
        data.in_stock = np.array([stock.get(i, False) for i in ids], dtype=bool)
        data.categories = np.array([category.get(i, "") for i in ids], dtype=str)
        return data
