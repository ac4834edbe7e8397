"""API keys for the HTTP server: created once (the key is shown once), stored as a SHA-256.

Two scopes. A `public` key may read recommendations and send views, clicks and carts: it
is safe to put in a shop's web page. A `secret` key may do everything (purchases and
ratings, catalogue changes, erasure, training, reports); keep it on the shop's server.
Keys are 192-bit random tokens, so a plain SHA-256 is enough to store them (no salt or
slow hash needed: nothing to guess)."""

from __future__ import annotations

import hashlib
import math
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from ..errors import EngineError
from ..types import PUBLIC_EVENT_KINDS

SCOPES = ("public", "secret")
__all__ = ["KeyLookup", "PUBLIC_EVENT_KINDS", "SCOPES", "active_keys", "create_key", "list_keys",
           "lookup", "revoke_key"]
_PREFIX = {"public": "sw_pk_", "secret": "sw_sk_"}


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: sqlite_utils.Database, scope: str, name: str = "") -> dict[str, Any]:
    """A new key; the returned dict is the only place its plaintext ever appears."""
    if scope not in SCOPES:
        raise EngineError(f"Unknown scope {scope!r}. Valid scopes: {', '.join(SCOPES)}.",
                          title="Invalid scope")
    key = _PREFIX[scope] + secrets.token_urlsafe(24)
    with db.atomic():
        key_id = db["api_keys"].insert({
            "name": name, "prefix": key[:10], "key_hash": _hash(key), "scope": scope,
            "created_at": time.time(), "revoked_at": None, "last_used_at": None,
        }).last_pk
    return {"id": key_id, "key": key, "prefix": key[:10], "scope": scope, "name": name}


def list_keys(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [dict(r) for r in db.query(
        "SELECT id, name, prefix, scope, created_at, revoked_at, last_used_at FROM api_keys "
        "ORDER BY id")]


def revoke_key(db: sqlite_utils.Database, key_id: int) -> dict[str, Any]:
    with db.atomic():
        row = db.conn.execute("SELECT revoked_at FROM api_keys WHERE id = ?", [key_id]).fetchone()
        if row is None:
            known = ", ".join(str(k["id"]) for k in list_keys(db)) or "none"
            raise EngineError(f"No API key with id {key_id}. Known ids: {known} "
                              f"(\"shelfwise keys list\").", title="Unknown key")
        if row[0] is None:
            db.conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [time.time(), key_id])
    return next(k for k in list_keys(db) if k["id"] == key_id)


def active_keys(db: sqlite_utils.Database) -> int:
    return db.conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]


def lookup(db: sqlite_utils.Database, key: str) -> dict[str, Any] | None:
    """The active key's id, name and scope, or None for an unknown or revoked key."""
    row = db.conn.execute("SELECT id, name, scope FROM api_keys WHERE key_hash = ? AND "
                          "revoked_at IS NULL", [_hash(key)]).fetchone()
    return {"id": row[0], "name": row[1], "scope": row[2]} if row else None


class KeyLookup:
    """The server's own read connection for keys (the engine thread stays free): the
    active key a request presents, and how many keys are active. A key's `last_used_at`
    is written at most once a minute; a busy database only delays it."""

    def __init__(self, db_path: str | Path):
        self._conn = sqlite3.connect(str(db_path), check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 2000")
        self._lock = threading.Lock()
        self._stamped: dict[int, float] = {}  # key id -> when last_used_at was written

    def close(self) -> None:
        self._conn.close()

    def active(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]

    def find(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, name, scope FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                [_hash(key)]).fetchone()
            if row is not None and time.monotonic() - self._stamped.get(row[0], -math.inf) > 60:
                self._stamped[row[0]] = time.monotonic()
                try:
                    self._conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                                       [time.time(), row[0]])
                    self._conn.commit()
                except sqlite3.OperationalError:
                    self._conn.rollback()
        return {"id": row[0], "name": row[1], "scope": row[2]} if row else None
