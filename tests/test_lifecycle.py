"""Stored models have a lifecycle: old versions are pruned and the file shrinks, catalogue
edits do not pile up copies of the vector index, and a killed `train` does not stay
"running" forever."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from engine import Item
from engine.config import Settings, StoreSettings
from engine.db import open_db
from engine.engine import Engine
from engine.plugins import load_plugins
from engine.store import Store

from .conftest import CORE_PLUGINS


def versions(store: Store, name: str) -> list[tuple[int, int]]:
    return [tuple(r) for r in store.conn.execute(
        "SELECT version, active FROM artifacts WHERE name = ? ORDER BY version", [name])]


def file_bytes(path) -> int:
    return os.path.getsize(path) + (os.path.getsize(f"{path}-wal") if os.path.exists(f"{path}-wal") else 0)


def fill(store: Store, name: str, n: int, active: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(n):  # 1 MB that does not compress, n times
        store.save_artifacts({name: (rng.bytes(1 << 20), "npz", {})}, activate=False)
    store.activate({name: active})


@pytest.mark.parametrize("made_before_auto_vacuum", [False, True])
def test_pruning_keeps_the_active_and_newest_versions_and_the_file_shrinks(tmp_path, made_before_auto_vacuum):
    path = tmp_path / "shop.db"
    db = open_db(path)
    if made_before_auto_vacuum:  # a database from before this release
        db.conn.execute("PRAGMA auto_vacuum = NONE")
        db.conn.execute("VACUUM")
    store = Store(db)
    fill(store, "recaller/als", 6, active=3)
    fill(store, "ranker/bert", 2, active=2)
    store.checkpoint()
    before = file_bytes(path)
    report = store.prune_artifacts(keep=2)
    assert versions(store, "recaller/als") == [(3, 1), (6, 0)]  # the active one and the newest other
    assert versions(store, "ranker/bert") == [(1, 0), (2, 1)]
    assert report["deleted"] == 4
    assert file_bytes(path) < before - 3.5 * (1 << 20), "the space of four 1 MB versions went back"
    assert db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
    assert store.prune_artifacts(keep=2)["deleted"] == 0
    assert db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_killed_train_is_marked_interrupted_when_the_engine_next_opens(tmp_path):
    path = tmp_path / "shop.db"
    store = Store(open_db(path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = store.start_run("train", {})
    store.conn.execute("UPDATE runs SET pid = ? WHERE id = ?", [dead.pid, killed])
    running = store.start_run("train", {})  # this process: alive
    store.conn.commit()
    eng = Engine(path, registry=load_plugins())
    status = {r["id"]: r["status"] for r in eng.store.runs("train")}
    assert status == {killed: "interrupted", running: "running"}
    assert "process ended" in eng.store.runs("train")[-1]["note"]
    eng.close()


@pytest.mark.slow
def test_catalogue_edits_keep_at_most_keep_versions_of_the_index(tmp_path, monkeypatch):
    """Ten renames of one product (each re-encodes it and stores the index) leave at most
    `keep_versions` copies of the index and do not grow the file by ten copies."""
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",minilm,content")
    path = tmp_path / "shop.db"
    eng = Engine(path, registry=load_plugins(), settings=Settings(store=StoreSettings(keep_versions=2)))
    eng.store.write([Item(f"p{k:03d}", title=f"Walking boot {k}", category="Boots") for k in range(300)])
    eng.refresh_vectors()
    size = eng.store.conn.execute("SELECT max(size) FROM artifacts WHERE name LIKE 'index/%'").fetchone()[0]
    eng.store.checkpoint()
    start = file_bytes(path)
    for k in range(10):
        report = eng.upsert_items([Item("p001", title=f"Trail boot, edition {k}", category="Boots")])
        assert report["vectors"]["encoded"] == 1
    names = [r[0] for r in eng.store.conn.execute("SELECT name FROM artifacts WHERE name LIKE 'index/%'")]
    assert len(names) == 2, names
    eng.store.checkpoint()
    assert file_bytes(path) < start + 3 * size, "not ten copies of the index"
    eng.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
