"""The SQLite store: schema and migrations, all-or-nothing imports, idempotent events,
versioned artifacts checked by sha256, runs, and the Dataset built from it."""

import sqlite3

import numpy as np
import pytest

from engine import ArtifactError, Event, ImportDataError, Item, ItemEntity, Triple, User
from engine.db import open_db
from engine.migrations import migrations
from engine.store import Store, event_id_for

T0 = 1_700_000_000.0

EXPECTED_COLUMNS = {
    "items": {
        "item_id": str, "title": str, "description": str, "category": str, "brand": str,
        "price": float, "tags": str, "in_stock": int, "attrs": str,
        "created_at": float, "updated_at": float,
    },
    "users": {"user_id": str, "attrs": str, "created_at": float},
    "events": {
        "id": int, "event_id": str, "user_id": str, "item_id": str, "kind": str,
        "value": float, "ts": float,
    },
    "triples": {"head": str, "relation": str, "tail": str},
    "item_entities": {"item_id": str, "entity": str},
    "embeddings": {
        "encoder": str, "item_id": str, "content_hash": str, "dim": int, "vector": bytes,
    },
    "artifacts": {
        "id": int, "name": str, "version": int, "format": str, "bytes": bytes, "sha256": str,
        "size": int, "meta": str, "created_at": float, "active": int,
    },
    "runs": {
        "id": int, "kind": str, "status": str, "started_at": float, "finished_at": float,
        "config": str, "metrics": str, "note": str, "pid": int, "host": str,
    },
    "impressions": {
        "recommendation_id": str, "position": int, "item_id": str, "source": str,
        "ranker": str, "placement": str, "user_id": str, "ts": float,
        "experiment": str, "arm": str,
    },
    "attributed_events": {
        "event_id": str, "recommendation_id": str, "item_id": str, "user_id": str,
        "kind": str, "value": float, "ts": float,
    },
    "api_keys": {
        "id": int, "name": str, "prefix": str, "key_hash": str, "scope": str,
        "created_at": float, "revoked_at": float, "last_used_at": float,
    },
    "rules": {
        "id": int, "kind": str, "item_id": str, "position": int, "condition": str,
        "weight": float, "placement": str, "category": str, "until": float,
        "created_at": float, "removed_at": float,
    },
    "experiments": {
        "name": str, "placement": str, "arms": str, "split": str, "started_at": float,
        "stopped_at": float, "winner": str,
    },
    "artifact_parts": {"artifact_id": int, "part": int, "bytes": bytes},
}


@pytest.fixture
def store(db):
    return Store(db)


def count(store, table):
    return store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# -- schema ---------------------------------------------------------------------------


def test_blank_database_migrates_to_the_expected_schema(db):
    tables = {t for t in db.table_names() if not t.startswith(("_sqlite_migrations", "items_fts"))}
    assert tables == set(EXPECTED_COLUMNS)
    assert db["items"].detect_fts() == "items_fts", "the catalogue has a full-text index"
    for table, columns in EXPECTED_COLUMNS.items():
        assert db[table].columns_dict == columns, table
    assert db["items"].pks == ["item_id"]
    assert db["embeddings"].pks == ["encoder", "item_id"]


def test_event_id_is_unique(db):
    unique = [idx for idx in db["events"].indexes if idx.unique]
    assert [idx.columns for idx in unique] == [["event_id"]]


def test_wal_mode_is_on(db):
    assert db.journal_mode == "wal"


def test_reapplying_migrations_is_a_no_op(tmp_path, db):
    applied = [row["name"] for row in db["_sqlite_migrations"].rows]
    schema = {t: db[t].schema for t in db.table_names()}
    migrations.apply(db)
    db.close()
    again = open_db(tmp_path / "shelfwise.db")
    try:
        assert [row["name"] for row in again["_sqlite_migrations"].rows] == applied
        assert {t: again[t].schema for t in again.table_names()} == schema
    finally:
        again.close()


# -- writing --------------------------------------------------------------------------


def test_write_stores_every_record_kind(store):
    report = store.write([
        Item("i1", title="Red shoes", category="shoes", price=49.5, tags=("red",),
             attrs={"size": "42"}),
        Item("i2", title="Blue hat", in_stock=False),
        User("u1", attrs={"city": "Lyon"}),
        Event("u1", "i1", "view", T0),
        Event("u2", "i2", "purchase", T0 + 1, value=2.0),
        Triple("i1", "made_by", "acme"),
        ItemEntity("i1", "acme"),
    ])
    assert (report.items, report.users, report.events, report.triples, report.links) == \
        (2, 1, 2, 1, 1)
    item = store.item("i1")
    assert item.title == "Red shoes" and item.price == 49.5
    assert item.tags == ("red",) and dict(item.attrs) == {"size": "42"}
    assert store.item("i2").in_stock is False
    # a user seen only in events gets a users row too
    assert store.has_user("u1") and store.has_user("u2")
    assert store.history("u2")[0].value == 2.0


def test_write_is_one_transaction(store):
    records = [Item("i1", title="kept?"), Item("i2"), Event("u1", "i1", "view", T0),
               Event("", "i2", "view", T0 + 1, origin="events.csv line 3")]
    with pytest.raises(ImportDataError) as err:
        store.write(records)
    assert "events.csv line 3" in str(err.value) and "user_id" in str(err.value)
    for table in ("items", "users", "events"):
        assert count(store, table) == 0, f"{table} was half-imported"


def test_write_rejects_a_non_finite_time_and_keeps_nothing(store):
    with pytest.raises(ImportDataError, match="timestamp"):
        store.write([Item("i1"), Event("u1", "i1", "view", float("nan"))])
    assert count(store, "items") == 0


def test_same_event_id_twice_is_a_duplicate(store):
    e = Event("u1", "i1", "view", T0, event_id="e1")
    report = store.write([e, e])
    assert (report.events, report.duplicates) == (1, 1)
    report = store.write([e])
    assert (report.events, report.duplicates) == (0, 1)
    assert count(store, "events") == 1


def test_events_without_id_get_a_stable_derived_id(store):
    events = [Event("u1", "i1", "view", T0), Event("u1", "i2", "cart", T0 + 5, value=1.0)]
    first = store.write(events)
    assert first.events == 2
    again = store.write(list(events))
    assert (again.events, again.duplicates) == (0, 2)
    assert count(store, "events") == 2
    stored = {r[0] for r in store.conn.execute("SELECT event_id FROM events")}
    assert stored == {event_id_for(e) for e in events}
    # another time is another event
    assert store.write([Event("u1", "i1", "view", T0 + 60)]).events == 1


def test_derived_id_does_not_depend_on_how_numbers_are_written(store):
    """The same event sent as JSON (`"ts": 1700000000, "value": 5`) and re-imported from a
    CSV file (floats) is one event, not two."""
    assert store.write([Event("u1", "i1", "rating", 1_700_000_000, value=5)]).events == 1
    again = store.write([Event("u1", "i1", "rating", 1_700_000_000.0, value=5.0)])
    assert (again.events, again.duplicates) == (0, 1)
    assert count(store, "events") == 1


def test_conflicting_event_id_is_an_error_and_stores_nothing(store):
    store.write([Event("u1", "i1", "view", T0, event_id="e1")])
    with pytest.raises(ImportDataError, match="e1"):
        store.write([Item("i9"), Event("u2", "i2", "view", T0, event_id="e2"),
                     Event("u1", "i1", "purchase", T0, event_id="e1")])
    assert count(store, "items") == 0
    assert [r[0] for r in store.conn.execute("SELECT event_id FROM events")] == ["e1"]
    assert not store.has_user("u2")


def test_items_are_updated_in_place(store):
    store.write([Item("i1", title="Old", price=10.0)])
    report = store.write([Item("i1", title="New", price=12.0)])
    assert report.items == 1
    assert store.item("i1").title == "New" and count(store, "items") == 1
    assert store.write([Item("i1", title="New", price=12.0)]).items == 0, \
        "an unchanged item is not counted as changed"


def test_consumed_and_history(store):
    store.write([
        Event("u1", "i1", "view", T0 + 2), Event("u1", "i2", "purchase", T0 + 1),
        Event("u1", "i3", "rating", T0 + 3, value=4.0), Event("u2", "i4", "purchase", T0),
    ])
    assert store.consumed("u1", ["purchase", "rating"]) == {"i2", "i3"}
    assert store.consumed("u1", []) == set()
    assert [h.item_id for h in store.history("u1")] == ["i2", "i1", "i3"]  # oldest first
    assert [h.item_id for h in store.history("u1", limit=2)] == ["i1", "i3"]


# -- artifacts ------------------------------------------------------------------------


def test_save_artifacts_creates_versions_and_activates(store):
    assert store.save_artifacts({"recaller/a": (b"one", "npz", {"n": 1})}) == {"recaller/a": 1}
    assert store.save_artifacts({"recaller/a": (b"two", "npz", {"n": 2}),
                                 "recaller/b": (b"bee", "npz", {})}) == \
        {"recaller/a": 2, "recaller/b": 1}
    assert store.load_artifact("recaller/a") == (b"two", "npz", {"n": 2})
    assert store.load_artifact("recaller/a", version=1) == (b"one", "npz", {"n": 1})
    active = {a["name"]: a["version"] for a in store.active_artifacts()}
    assert active == {"recaller/a": 2, "recaller/b": 1}
    assert store.load_artifact("recaller/missing") is None


def test_artifacts_made_in_turn_are_saved_together_or_not_at_all(store):
    """`train` hands the store functions that serialize each model when its turn comes
    (one serialized model in memory at a time); the save is still one transaction: a
    model that fails to serialize leaves every artifact as it was."""
    made = []

    def lazy(payload):
        def make():
            made.append(payload)
            return payload, "npz", {"n": len(made)}
        return make

    assert store.save_artifacts({"recaller/a": lazy(b"one"), "recaller/b": lazy(b"two")}) == \
        {"recaller/a": 1, "recaller/b": 1}
    assert made == [b"one", b"two"]
    assert store.load_artifact("recaller/b") == (b"two", "npz", {"n": 2})

    def broken():
        raise ValueError("cannot serialize")

    with pytest.raises(ValueError):
        store.save_artifacts({"recaller/a": (b"new", "npz", {}), "recaller/b": broken})
    assert store.load_artifact("recaller/a") == (b"one", "npz", {"n": 1})
    assert {a["name"]: a["version"] for a in store.active_artifacts()} == {"recaller/a": 1, "recaller/b": 1}


def test_save_without_activation_then_activate(store):
    store.save_artifacts({"x": (b"1", "npz", {})})
    versions = store.save_artifacts({"x": (b"2", "npz", {})}, activate=False)
    assert store.load_artifact("x")[0] == b"1"
    store.activate(versions)
    assert store.load_artifact("x")[0] == b"2"
    store.deactivate(["x"])
    assert store.load_artifact("x") is None


def test_save_artifacts_is_one_transaction(store):
    store.save_artifacts({"a": (b"old", "npz", {})})
    with pytest.raises((TypeError, sqlite3.Error)):
        # the second payload cannot be stored: nothing of the batch may land
        store.save_artifacts({"a": (b"new", "npz", {}), "b": (None, "npz", {})})
    assert store.load_artifact("a")[0] == b"old"
    assert [r[0] for r in store.conn.execute("SELECT version FROM artifacts WHERE name='a'")] == [1]


def test_activating_a_missing_version_fails_and_changes_nothing(store):
    """A model swap is all or nothing: naming a version that does not exist must not leave
    the artifact without an active version."""
    store.save_artifacts({"a": (b"A", "npz", {}), "b": (b"B", "npz", {})})
    store.save_artifacts({"a": (b"A2", "npz", {})}, activate=False)
    with pytest.raises(ArtifactError, match="'b'"):
        store.activate({"a": 2, "b": 7})
    assert store.load_artifact("a")[0] == b"A"
    assert store.load_artifact("b")[0] == b"B"


def test_load_artifact_verifies_sha256(store):
    store.save_artifacts({"recaller/a": (b"payload", "npz", {})})
    store.conn.execute("UPDATE artifacts SET bytes = ? WHERE name = 'recaller/a'", [b"tampered"])
    with pytest.raises(ArtifactError, match="corrupted") as err:
        store.load_artifact("recaller/a")
    assert "shelfwise train" in str(err.value)


def test_an_artifact_over_one_part_is_stored_in_parts_and_read_whole(store, monkeypatch):
    """SQLite refuses a value over 1 GB: bigger artifacts are split into parts (here parts of
    10 bytes), read back whole, checked by sha256, and deleted with their artifact."""
    from engine.store import models

    monkeypatch.setattr(models, "ARTIFACT_PART_BYTES", 10)
    payload = bytes(range(256)) * 3 + b"end"  # 771 bytes: 78 parts
    store.save_artifacts({"recaller/big": (payload, "npz", {"n": 1}),
                          "recaller/small": (b"tiny", "npz", {})})
    assert store.load_artifact("recaller/big") == (payload, "npz", {"n": 1})
    assert store.load_artifact("recaller/small")[0] == b"tiny"
    assert store.conn.execute("SELECT count(*), max(length(bytes)) FROM artifact_parts").fetchone() == (77, 10)
    store.conn.execute("UPDATE artifact_parts SET bytes = ? WHERE part = 40", [b"0123456789"])
    with pytest.raises(ArtifactError, match="corrupted"):
        store.load_artifact("recaller/big")
    store.save_artifacts({"recaller/big": (b"short now", "npz", {})})
    store.delete_versions_except("recaller/big", 2)
    assert store.load_artifact("recaller/big")[0] == b"short now"
    assert store.conn.execute("SELECT count(*) FROM artifact_parts").fetchone() == (0,)


# -- runs -----------------------------------------------------------------------------


def test_runs_start_and_finish(store):
    run_id = store.start_run("train", {"recallers": {"popular": 50}})
    run = store.run(run_id)
    assert run["status"] == "running" and run["finished_at"] is None
    assert run["config"] == {"recallers": {"popular": 50}}
    store.finish_run(run_id, {"ndcg@10": 0.25})
    run = store.run(run_id)
    assert run["status"] == "ok" and run["metrics"] == {"ndcg@10": 0.25}
    assert run["finished_at"] >= run["started_at"]
    other = store.start_run("evaluate", {})
    store.finish_run(other, {}, status="failed", note="boom")
    assert [r["id"] for r in store.runs("train")] == [run_id]
    assert store.runs()[0]["id"] == other  # newest first
    assert store.run(other)["note"] == "boom"


# -- dataset --------------------------------------------------------------------------


def test_dataset_is_time_ordered_with_the_whole_catalogue(store):
    store.write([
        Item("a", category="shoes"), Item("b", category="hats", in_stock=False),
        Item("c", category="socks"),  # in the catalogue, never touched
        Event("u2", "b", "purchase", T0 + 30),
        Event("u1", "a", "view", T0 + 10),
        Event("u1", "ghost", "view", T0 + 20),  # not in the catalogue
        Event("u1", "b", "cart", T0),
    ])
    data = store.dataset()
    assert data.item_ids.tolist() == ["a", "b", "c", "ghost"]
    assert data.user_ids.tolist() == ["u1", "u2"]
    assert data.ts.tolist() == [T0, T0 + 10, T0 + 20, T0 + 30]
    assert [data.item_ids[i] for i in data.items] == ["b", "a", "ghost", "b"]
    assert [data.user_ids[u] for u in data.users] == ["u1", "u1", "u1", "u2"]
    assert [data.kind_names[k] for k in data.kinds] == ["cart", "view", "view", "purchase"]
    assert data.known.tolist() == [True, True, True, False]
    assert data.in_stock.tolist() == [True, False, True, False]
    assert data.categories.tolist() == ["shoes", "hats", "socks", ""]
    assert data.store is store
    assert [h.item_id for h in data.history(data.user_index["u1"])] == ["b", "a", "ghost"]


def test_dataset_read_in_chunks_is_the_dataset_of_all_rows_at_once(store):
    """store.dataset reads the events a chunk at a time into integer codes (Dataset.from_rows);
    the result is the Dataset that from_arrays makes of every row at once."""
    from engine.dataset import Dataset

    rng = np.random.default_rng(5)
    kinds = ["view", "cart", "purchase"]
    store.write([Item(f"i{j:02d}") for j in range(0, 40, 3)] + [  # items only in the catalogue,
        Event(f"u{rng.integers(60)}", f"i{rng.integers(35):02d}",  # and only in events
              kinds[rng.integers(3)], T0 + float(rng.integers(80)),
              None if rng.random() < 0.6 else float(rng.integers(1, 4)))
        for _ in range(400)])
    query = "SELECT user_id, item_id, kind, value, ts FROM events ORDER BY ts, id"
    catalogue = [r[0] for r in store.conn.execute("SELECT item_id FROM items")]
    users, items, kinds_, values, ts = zip(*store.conn.execute(query).fetchall())
    whole = Dataset.from_arrays(users, items, kinds_, ts, values=values, catalogue=catalogue)
    for chunk in (7, 1000):
        data = Dataset.from_rows(store.conn.execute(query), catalogue=catalogue, chunk=chunk)
        for name in ("item_ids", "user_ids", "users", "items", "kinds", "ts", "known"):
            assert np.array_equal(getattr(data, name), getattr(whole, name)), name
        assert data.kind_names == whole.kind_names
        assert data.users.dtype == np.int32 and data.kinds.dtype == np.int16
        assert np.array_equal(data.values, whole.values, equal_nan=True)
    assert np.array_equal(store.dataset().items, whole.items)


def test_dataset_of_an_empty_store(store):
    store.write([Item("a")])
    data = store.dataset()
    assert data.n_events == 0 and data.item_ids.tolist() == ["a"]
    assert data.matrix().shape == (0, 1)


def test_dataset_uses_the_given_kind_weights(store):
    store.write([Event("u1", "a", "view", T0), Event("u1", "a", "purchase", T0 + 1)])
    data = store.dataset({"view": 1.0, "purchase": 3.0})
    assert data.matrix().toarray().tolist() == [[4.0]]
    assert np.allclose(store.dataset().matrix().toarray(), [[9.0]])  # defaults: 1 + 8


def test_saving_artifacts_waits_for_another_writer_instead_of_failing(tmp_path):
    """A plain BEGIN reads, then fails at its first write if another connection committed
    meanwhile ("database is locked" at once). Saving artifacts takes the write lock first."""
    import threading

    from engine.db import open_db
    from engine.store import Store

    path = tmp_path / "shop.db"
    b = Store(open_db(path))
    b.save_artifacts({"ranker/x": (b"v1", "json", {})})
    b.conn.execute("BEGIN IMMEDIATE")
    b.conn.execute("INSERT INTO users (user_id, attrs) VALUES ('u1', '{}')")
    result = {}

    def save():  # a second connection, in its own thread
        a = Store(open_db(path))
        result.update(a.save_artifacts({"ranker/x": (b"v2", "json", {})}))
        a.db.close()

    saver = threading.Thread(target=save)
    saver.start()
    saver.join(0.3)
    assert saver.is_alive(), "it waits for the other writer"
    b.conn.execute("COMMIT")
    saver.join(10)
    assert result == {"ranker/x": 2}
    assert b.load_artifact("ranker/x")[0] == b"v2"
