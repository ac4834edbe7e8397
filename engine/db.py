"""open_db: one SQLite file in WAL mode with every migration set applied."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

import sqlite_utils
from sqlite_utils.migrations import Migrations

from .errors import EngineError
from .migrations import migrations as engine_migrations


def open_db(path: str | Path | sqlite3.Connection, extra: Iterable[Migrations] = ()) -> sqlite_utils.Database:
    """Open (creating if needed) the database at `path` and bring its schema up to date.
    `path` may be an open connection (an in-memory copy: its journal stays in memory).

    `extra` are plugins' migration sets, applied after the engine's own."""
    if isinstance(path, sqlite3.Connection):
        db = sqlite_utils.Database(path)
    else:
        path = Path(path)
        if path.parent and not path.parent.exists():
            raise EngineError(f"Cannot create database {path}: folder {path.parent} does not exist.")
        db = sqlite_utils.Database(path)
    db.conn.execute("PRAGMA busy_timeout = 30000")
    if not db.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        # a new file: pages freed by pruning old models go back to the file system
        db.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if db.conn.execute("PRAGMA journal_mode").fetchone()[0] not in ("wal", "memory"):
        db.enable_wal()
    db.conn.execute("PRAGMA synchronous = NORMAL")
    db.conn.execute("PRAGMA foreign_keys = ON")
    # deleted rows are overwritten with zeros, not left in free space: an erased shopper's
    # id and attributes must not stay in the file (SQLite's default depends on its build)
    db.conn.execute("PRAGMA secure_delete = ON")
    names = {engine_migrations.name}
    engine_migrations.apply(db)
    for m in extra:
        if m.name in names:
            raise EngineError(f"Two migration sets are named {m.name!r}; plugin sets must be "
                              f"named 'plugins.<name>'.")
        names.add(m.name)
        m.apply(db)
    return db


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A transaction that takes SQLite's write lock at its start (BEGIN IMMEDIATE), waiting up
    to the busy timeout. A plain BEGIN reads first and upgrades on its first write, which fails
    at once ("database is locked") if another connection committed in between — as a retrain's
    activation did while the server stored events. Inside a transaction: a savepoint."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    else:
        db.conn.execute("COMMIT")
