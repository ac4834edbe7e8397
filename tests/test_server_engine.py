"""The engine side of serving (no HTTP): the per-user cache and what invalidates it, the
notice of changes made by other connections, incremental state saving, erasure."""

from __future__ import annotations

import pytest

from engine import Event
from engine.engine import Engine

from . import shop
from .server_support import build_shop_db, copy_db

LATER = shop.T0 + 90 * shop.DAY


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory):
    return build_shop_db(tmp_path_factory.mktemp("server-engine"))


@pytest.fixture
def eng(shop_db, tmp_path):
    e = Engine(copy_db(shop_db, tmp_path))
    yield e
    e.close()


def cooccurrence_versions(e: Engine) -> list[tuple[int, int]]:
    return [tuple(r) for r in e.store.conn.execute(
        "SELECT version, active FROM artifacts WHERE name = 'recaller/cooccurrence' ORDER BY version")]


def test_cache_hits_return_the_same_list_and_ingest_drops_only_that_user(eng):
    cache = eng.recommendation_cache
    first = eng.recommend("user001", 5)
    assert eng.recommend("user001", 5) == first and cache.hits == 1
    eng.recommend("user002", 5)
    eng.recommend("user001", 5, category="cat0")
    eng.recommend(None, 5)  # popular for anonymous visitors: moves with everyone's events
    assert cache.stats()["lists"] == 4
    eng.ingest([Event("user001", first[0].item_id, "purchase", LATER, event_id="p1")])
    assert cache.stats()["lists"] == 1, "user001's two lists and the anonymous one dropped, user002's kept"
    assert first[0].item_id not in [r.item_id for r in eng.recommend("user001", 5)]


def test_events_stored_by_another_connection_drop_that_users_lists(eng):
    eng.recommend("user040", 5)
    eng.recommend("user041", 5)
    other = Engine(eng.db_path)  # e.g. "shelfwise import" in another process
    other.store.write([Event("user040", "g2-i05", "purchase", LATER, event_id="o1")])
    other.close()
    hits = eng.recommendation_cache.hits
    eng.recommend("user041", 5)
    assert eng.recommendation_cache.hits == hits + 1
    eng.recommend("user040", 5)
    assert eng.recommendation_cache.hits == hits + 1, "user040 was answered afresh"


def test_catalogue_change_by_another_connection_is_noticed(eng):
    top = eng.recommend("user050", 5)[0].item_id
    other = Engine(eng.db_path)
    other.upsert_items([shop.Item(top, title="gone", category="cat0", in_stock=False)])
    other.close()
    assert top not in [r.item_id for r in eng.recommend("user050", 5)]


def test_incremental_state_is_saved_at_most_every_interval_and_on_close(eng):
    trained = cooccurrence_versions(eng)
    eng.incremental_save_interval = 3600
    eng.ingest([Event("user060", "fresh-a", "view", LATER, event_id="i1")])
    eng.ingest([Event("user060", "fresh-b", "view", LATER + 1, event_id="i2")])
    assert cooccurrence_versions(eng) == trained, "not yet saved"
    eng.close()
    again = Engine(eng.db_path)
    versions = cooccurrence_versions(again)
    assert len(versions) == len(trained) + 1 and versions[-1][1] == 1, "saved once, on close"
    again.incremental_save_interval = 0
    for i in range(3):
        again.ingest([Event("user061", f"fresh-{i}", "view", LATER + i, event_id=f"j{i}")])
    kept = cooccurrence_versions(again)
    assert len(kept) == len(trained) + 1, "only the newest incremental version is kept"
    assert kept[-1][0] == versions[-1][0] + 3 and kept[-1][1] == 1
    assert kept[:-1] == [(v, 0) for v, _ in trained], "trained versions stay"
    again.close()


def test_pending_increments_never_overwrite_models_activated_elsewhere(eng):
    eng.incremental_save_interval = 3600
    eng.recommend("user070", 5)
    eng.ingest([Event("user070", "fresh-c", "view", LATER, event_id="k1")])
    trainer = Engine(eng.db_path)
    trained = trainer.train()["versions"]["recaller/cooccurrence"]
    trainer.close()
    assert eng.save_incremental() == {}, "another connection's models win"
    active = [v for v, a in cooccurrence_versions(eng) if a]
    assert active == [trained]


def test_erase_user_forgets_events_and_cached_lists(eng):
    eng.recommend("user080", 5)
    rid = eng.log_impressions(eng.recommend("user080", 5), "user080", "home")
    eng.ingest([Event("user080", "g0-i01", "click", LATER, event_id="z1")], {"z1": rid})
    eng.recommend("user080", 5)
    erased = eng.erase_user("user080")
    assert erased["cached_lists"] == 1 and erased["impressions"] == 5, "one row per position"
    assert erased["attributed_events"] == 1
    assert eng.store.history("user080") == () and not eng.store.has_user("user080")
    after = eng.recommend("user080", 5)
    assert [r.item_id for r in after] == [r.item_id for r in eng.recommend(None, 5)], "a stranger now"
    assert {r.fallback for r in after} == {"unknown user"}


def test_events_stored_during_a_retrain_are_folded_into_the_new_models(eng):
    eng.upsert_items([shop.Item("fresh-x", "New X", category="cat0"),
                      shop.Item("fresh-y", "New Y", category="cat0")])  # no events yet
    eng.recommend("user090", 5)  # serving with the old models
    sent = []

    def progress(stage, done, total, message=""):
        if not sent:  # the training has read its data; the shopper goes on
            sent.append(eng.ingest([Event("user090", "fresh-x", "view", LATER, event_id="d1"),
                                    Event("user090", "fresh-y", "cart", LATER + 1, event_id="d2")]))

    trainer = Engine(eng.db_path)
    trainer.train(progress=progress)
    trainer.close()
    assert sent == [{"accepted": 2, "duplicates": 0}]
    def together():  # what co-occurrence pairs with fresh-x
        return [r.item_id for r in eng.similar("fresh-x", 5) if "cooccurrence" in r.sources]

    assert "fresh-y" not in together(), "the new models were trained without these events"
    assert eng.fold_in_since(trainer.dataset_events_upto) == 2
    assert together()[0] == "fresh-y"
    assert eng.fold_in_since(trainer.dataset_events_upto) == 0, "never twice"


def test_models_activated_during_our_own_write_are_still_noticed(eng):
    """The race seen once in the live retrain test: another connection activates new models
    between our ingest's check and its bookkeeping. The serving engine must still notice
    them (reload the models) rather than adopt them unseen and keep serving the old ones."""
    eng.recommend("user001", 5)
    old = {name: id(component) for name, component in eng.serving.loaded.items()}
    other = Engine(eng.db_path)
    real_sync = eng.sync

    def sync_then_another_connection_trains():
        real_sync()
        other.train()

    eng.sync = sync_then_another_connection_trains
    eng.ingest([Event("user001", "g1-i01", "view", LATER, event_id="race-1")])
    eng.sync = real_sync
    other.close()
    eng.recommend("user001", 5)
    assert {name: id(c) for name, c in eng.serving.loaded.items()} != old, "the new models are loaded"
    active = {a["name"]: a["version"] for a in eng.store.active_artifacts()}
    assert all(getattr(c, "_fitted", True) for c in eng.serving.loaded.values()) and active
