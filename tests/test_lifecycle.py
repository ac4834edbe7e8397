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


def _semantic_engine(path, **settings):
    eng = Engine(path, registry=load_plugins(), settings=Settings(store=StoreSettings(**settings)))
    if not eng.store.counts()["items"]:
        eng.store.write([Item(f"p{k:03d}", title=f"Walking boot {k}", category="Boots") for k in range(300)])
        eng.refresh_vectors()
    return eng


def _index_versions(eng) -> list[tuple[int, int]]:
    return eng.store.conn.execute("SELECT version, size FROM artifacts WHERE name LIKE 'index/%' "
                                  "ORDER BY version").fetchall()


@pytest.mark.slow
def test_catalogue_edits_are_saved_to_the_index_together_not_a_copy_each(tmp_path, monkeypatch):
    """Ten renames of one product while serving (the server saves at most every 30 s) store
    the index once, at close; the file does not grow by ten copies; and a CLI-style engine
    (saving each edit) keeps at most `keep_versions` copies."""
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",minilm,content")
    path = tmp_path / "shop.db"
    eng = _semantic_engine(path, keep_versions=2)
    eng.incremental_save_interval = 30.0
    [(_, size)] = _index_versions(eng)
    eng.store.checkpoint()
    start = file_bytes(path)
    for k in range(10):
        report = eng.upsert_items([Item("p001", title=f"Trail boot, edition {k}", category="Boots")])
        assert report["vectors"]["encoded"] == 1
    assert len(_index_versions(eng)) == 1, "no copy of the index per edit"
    eng.close()  # saves what is pending
    assert len(_index_versions(Engine(path, registry=load_plugins()))) <= 2
    assert file_bytes(path) < start + 3 * size, "not ten copies of the index"

    cli = _semantic_engine(path, keep_versions=2)  # incremental_save_interval 0: each edit saved
    for k in range(5):
        cli.upsert_items([Item("p002", title=f"Hiking boot, edition {k}", category="Boots")])
    assert len(_index_versions(cli)) <= 2
    cli.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
def test_an_index_not_saved_before_a_crash_catches_up_from_the_embeddings(tmp_path, monkeypatch):
    """Edits the index had not stored yet (the process was killed) are in the embeddings
    table, the source of truth: the next engine's index has them, removed items gone."""
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",minilm,content")
    path = tmp_path / "shop.db"
    eng = _semantic_engine(path)
    eng.incremental_save_interval = 3600.0
    eng.upsert_items([Item("p001", title="Red rain jacket", category="Jackets"),
                      Item("p999", title="Blue rain jacket", category="Jackets")])
    eng.remove_items(["p003"])
    assert eng.vectors().vector("p999") is not None
    eng.db.close()  # a crash: the pending index is never stored
    again = Engine(path, registry=load_plugins())
    index = again.vectors()
    ids, vectors = again.store.embeddings("minilm", ["p001", "p999"])
    assert "p999" in index and "p003" not in index
    for item_id, vector in zip(ids, vectors):
        assert np.allclose(index.vector(item_id), vector / np.linalg.norm(vector), atol=1e-5)
    again.close()  # stores the caught-up index
    assert "p999" in Engine(path, registry=load_plugins()).vectors()
