"""The store's second half (part of `Store`, a mixin): item vectors, full-text search,
model artifacts with their versions and retention, and the runs of train and evaluate."""

from __future__ import annotations

import hashlib
import re
import json
import os
import socket
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..db import write_transaction
from ..errors import ArtifactError


# An artifact's bytes are stored in parts of at most this size: SQLite refuses a value
# over 1 GB (SQLITE_MAX_LENGTH).
ARTIFACT_PART_BYTES = 512 * 2**20


class ModelStore:
    conn: Any  # sqlite3.Connection, from Store
    db: Any    # sqlite_utils.Database, from Store

    # -- embeddings --------------------------------------------------------------------

    def embedding_hashes(self, encoder: str) -> dict[str, str]:
        return dict(self.conn.execute(
            "SELECT item_id, content_hash FROM embeddings WHERE encoder = ?", [encoder]))

    def save_embeddings(self, encoder: str, ids: Sequence[str], hashes: Sequence[str],
                        vectors: np.ndarray) -> None:
        """Upsert item vectors (little-endian float32 BLOBs): the source of truth for the index."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        with self.db.atomic():
            self.conn.executemany(
                # REPLACE, not an update in place: the row id moves, and with it the catalogue
                # mark other connections watch (Store.catalogue_mark)
                "INSERT OR REPLACE INTO embeddings (encoder, item_id, content_hash, dim, vector) "
                "VALUES (?, ?, ?, ?, ?)",
                [(encoder, i, h, vectors.shape[1], v.tobytes())
                 for i, h, v in zip(ids, hashes, vectors)])

    def delete_embeddings(self, encoder: str, ids: Iterable[str]) -> None:
        with self.db.atomic():
            self.conn.executemany("DELETE FROM embeddings WHERE encoder = ? AND item_id = ?",
                                  [(encoder, i) for i in ids])

    def embeddings(self, encoder: str, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(item ids, their vectors as rows) of every item, or of `ids` (those stored)."""
        if ids is None:
            rows = self.conn.execute("SELECT item_id, dim, vector FROM embeddings WHERE encoder = ? "
                                     "ORDER BY item_id", [encoder]).fetchall()
        else:
            wanted = list(ids)
            rows = [row for start in range(0, len(wanted), 500) for row in self.conn.execute(
                f"SELECT item_id, dim, vector FROM embeddings WHERE encoder = ? AND item_id IN "
                f"({','.join('?' * len(wanted[start:start + 500]))})",
                [encoder, *wanted[start:start + 500]])]
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        dim = rows[0][1]
        return [r[0] for r in rows], np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(-1, dim)

    # -- full-text search --------------------------------------------------------------

    def text_search(self, text: str, limit: int = 100) -> list[tuple[str, float]]:
        """Catalogue items matching any word of `text`, best BM25 first, as (item_id, score)
        with score > 0 (higher is better). Words are quoted, so user input is never FTS syntax."""
        words = [w for w in re.findall(r"\w+", text.lower()) if w]
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        rows = self.conn.execute(
            "SELECT items.item_id, -bm25(items_fts, 10.0, 5.0, 2.0, 2.0, 1.0, 0.5) AS score "
            "FROM items_fts JOIN items ON items.rowid = items_fts.rowid "
            "WHERE items_fts MATCH ? ORDER BY score DESC LIMIT ?", [match, limit]).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    # -- artifacts ---------------------------------------------------------------------

    def save_artifacts(self, blobs: Mapping[str, tuple[bytes, str, dict] | Callable[[], tuple[bytes, str, dict]]],
                       activate: bool = True) -> dict[str, int]:
        """Store new versions of several artifacts and (optionally) make them the active
        ones, all in one transaction. Returns name -> version. A blob may be a function
        that makes it: it is called when its turn comes and dropped once written, so only
        one serialized model is in memory at a time (at a million shoppers they were
        2 GB together, and the save was the train's peak)."""
        versions = {}
        now = time.time()
        with write_transaction(self.db):
            for name, entry in blobs.items():
                payload, fmt, meta = entry() if callable(entry) else entry
                version = (self.conn.execute("SELECT max(version) FROM artifacts WHERE name = ?",
                                             [name]).fetchone()[0] or 0) + 1
                view = memoryview(payload)
                cursor = self.conn.execute(
                    "INSERT INTO artifacts (name, version, format, bytes, sha256, size, meta, "
                    "created_at, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    [name, version, fmt, view[:ARTIFACT_PART_BYTES],
                     hashlib.sha256(payload).hexdigest(), len(payload), json.dumps(meta), now])
                self.conn.executemany(
                    "INSERT INTO artifact_parts (artifact_id, part, bytes) VALUES (?, ?, ?)",
                    [(cursor.lastrowid, k, view[start:start + ARTIFACT_PART_BYTES])
                     for k, start in enumerate(range(ARTIFACT_PART_BYTES, len(payload),
                                                     ARTIFACT_PART_BYTES), start=1)])
                versions[name] = version
                del payload, view  # before the next blob is made
            if activate:
                for name, version in versions.items():
                    self._activate(name, version)
        return versions

    def _activate(self, name: str, version: int) -> None:
        if self.conn.execute("SELECT 1 FROM artifacts WHERE name = ? AND version = ?",
                             [name, version]).fetchone() is None:
            raise ArtifactError(f"Artifact {name!r} has no version {version}; nothing was "
                                f"activated.")
        self.conn.execute("UPDATE artifacts SET active = 0 WHERE name = ? AND active = 1", [name])
        self.conn.execute("UPDATE artifacts SET active = 1 WHERE name = ? AND version = ?",
                          [name, version])

    def activate(self, versions: Mapping[str, int]) -> None:
        with self.db.atomic():
            for name, version in versions.items():
                self._activate(name, version)

    def deactivate(self, names: Iterable[str]) -> None:
        with self.db.atomic():
            for name in names:
                self.conn.execute("UPDATE artifacts SET active = 0 WHERE name = ?", [name])

    def active_artifacts(self, prefix: str = "") -> list[dict[str, Any]]:
        """Metadata (no bytes) of the active artifacts."""
        return [dict(r, meta=json.loads(r["meta"] or "{}")) for r in self.db.query(
            "SELECT name, version, format, sha256, size, meta, created_at FROM artifacts "
            "WHERE active = 1 AND name LIKE ? ORDER BY name", [prefix + "%"])]

    def model_names(self) -> list[str]:
        """Every stored recaller and ranker model's name (active or not)."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT name FROM artifacts WHERE name LIKE 'recaller/%' OR name LIKE 'ranker/%'")]

    def delete_versions_except(self, name: str, version: int) -> None:
        self.conn.execute("DELETE FROM artifacts WHERE name = ? AND version != ?", [name, version])

    def delete_inactive_incremental(self, names: Sequence[str]) -> None:
        """Drop the superseded incremental copies of these models (meta "incremental")."""
        self.conn.execute(f"DELETE FROM artifacts WHERE name IN ({','.join('?' * len(names))}) "
                          f"AND active = 0 AND json_extract(meta, '$.incremental')", list(names))

    def latest_artifact(self, name: str) -> dict[str, Any] | None:
        """Metadata (no bytes) of the newest stored version, active or not."""
        rows = list(self.db.query(
            "SELECT name, version, active, size, created_at FROM artifacts WHERE name = ? "
            "ORDER BY version DESC LIMIT 1", [name]))
        return rows[0] if rows else None

    def load_artifact(self, name: str, version: int | None = None) -> tuple[bytes, str, dict] | None:
        """The active (or given) version's bytes, format and meta, checked against its sha256."""
        columns = "SELECT bytes, format, meta, sha256, version, id, size FROM artifacts"
        if version is None:
            row = self.conn.execute(f"{columns} WHERE name = ? AND active = 1", [name]).fetchone()
        else:
            row = self.conn.execute(f"{columns} WHERE name = ? AND version = ?",
                                    [name, version]).fetchone()
        if row is None:
            return None
        payload, fmt, meta, digest, version, artifact_id, size = row
        if size is not None and size > len(payload):  # stored in parts (ARTIFACT_PART_BYTES)
            parts = [payload] + [r[0] for r in self.conn.execute(
                "SELECT bytes FROM artifact_parts WHERE artifact_id = ? ORDER BY part", [artifact_id])]
            payload = b"".join(parts)
            del parts
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ArtifactError(
                f"Artifact {name!r} version {version} is corrupted (sha256 mismatch). "
                f"Run \"shelfwise train\" to rebuild it.")
        return payload, fmt, json.loads(meta or "{}")

    # -- runs --------------------------------------------------------------------------

    def start_run(self, kind: str, config: Mapping[str, Any]) -> int:
        return self.db["runs"].insert({
            "kind": kind, "status": "running", "started_at": time.time(),
            "config": json.dumps(config, default=str), "metrics": "{}", "note": "",
            "pid": os.getpid(), "host": socket.gethostname(),
        }).last_pk

    def mark_interrupted_runs(self) -> int:
        """Runs left `running` by a process that is gone (killed, or the machine restarted)
        become `interrupted`. A run of another host is left alone (its pid means nothing
        here). Returns how many were marked."""
        here = socket.gethostname()
        gone = [run_id for run_id, pid, host in self.conn.execute(
                    "SELECT id, pid, host FROM runs WHERE status = 'running'")
                if host is None or (host == here and not _alive(pid))]  # None: before pids were kept
        if gone:
            with write_transaction(self.db):
                self.conn.executemany(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?, "
                    "note = 'its process ended before it finished' WHERE id = ? AND status = 'running'",
                    [(time.time(), run_id) for run_id in gone])
        return len(gone)

    def prune_artifacts(self, keep: int, convert: bool = True) -> dict[str, int]:
        """Keep, of each stored model, the active version and the newest others up to `keep`
        versions in all; delete the rest and give their space back to the file system
        (`convert`: a database without incremental auto-vacuum may be rewritten once, see
        `reclaim_space`). Returns {"deleted": versions deleted, "freed_bytes": how much the
        file shrank}."""
        size = self._file_bytes()
        with write_transaction(self.db):
            deleted = self.conn.execute(
                "DELETE FROM artifacts WHERE active = 0 AND id IN (SELECT id FROM ("
                " SELECT id, row_number() OVER (PARTITION BY name ORDER BY active DESC, version DESC) AS n"
                " FROM artifacts) WHERE n > ?)", [max(keep, 1)]).rowcount
        if deleted:
            self.reclaim_space(convert)
        return {"deleted": deleted, "freed_bytes": max(size - self._file_bytes(), 0)}

    def reclaim_space(self, convert: bool = True) -> None:
        """Return free pages to the file system: at once with incremental auto-vacuum; a
        database made before it was on converts (`convert`) with one full VACUUM when free
        pages are a quarter of the file or more — at `train`, not in a request."""
        mode = self.conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        if mode == 2:  # incremental
            # stepped to the end by sqlite3_exec: Python's execute frees one page per step
            self.conn.executescript("PRAGMA incremental_vacuum;")
        elif convert:
            free, total = (self.conn.execute(f"PRAGMA {p}").fetchone()[0]
                           for p in ("freelist_count", "page_count"))
            if free * 4 >= total:
                self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.conn.execute("VACUUM")
        self.checkpoint()

    def _file_bytes(self) -> int:
        count, size = (self.conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        return count * size

    def finish_run(self, run_id: int, metrics: Mapping[str, Any], status: str = "ok", note: str = "") -> None:
        self.db["runs"].update(run_id, {"status": status, "finished_at": time.time(),
                                        "metrics": json.dumps(metrics), "note": note})

    def runs(self, kind: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        rows = self.db.query(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        return [dict(r, config=json.loads(r["config"] or "{}"), metrics=json.loads(r["metrics"] or "{}"))
                for r in rows]

    def run(self, run_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        return dict(rows[0], config=json.loads(rows[0]["config"] or "{}"),
                    metrics=json.loads(rows[0]["metrics"] or "{}")) if rows else None


def _alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
