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

    first = eng.store.conn.execute("SELECT min(id) FROM events WHERE event_id IN ('d1', 'd2')").fetchone()[0]
    meta = eng.store.load_artifact("recaller/cooccurrence")[2]
    assert meta["events_upto"] == trainer.dataset_events_upto < first, \
        "the new models were trained without these events"
    assert together()[0] == "fresh-y", "folded in on the next request"
    assert eng.catch_up() == 0, "never twice"


def test_a_model_loaded_from_another_connections_save_learns_what_came_after_it(eng):
    """Several server processes: only the leader saves its incremental state; the others
    load each save and fold in the events stored after it (the save records which), none
    twice, and then answer as the leader does."""
    eng.upsert_items([shop.Item(f"fresh-{x}", f"New {x}", category="cat0") for x in "pqr"])
    eng.serving.may_save = lambda: False  # a follower
    leader = Engine(eng.db_path)
    leader.incremental_save_interval = 3600
    leader.ingest([Event("newbie-1", "fresh-p", "view", LATER, event_id="s1"),
                   Event("newbie-1", "fresh-q", "view", LATER + 1, event_id="s2")])
    eng.recommend("newbie-1", 5)  # eng folds in another connection's events
    eng.ingest([Event("newbie-2", "fresh-p", "view", LATER, event_id="s3"),
                Event("newbie-2", "fresh-r", "view", LATER + 1, event_id="s4")])
    assert "recaller/cooccurrence" in eng.serving.unsaved and \
        len(cooccurrence_versions(eng)) == 1, "a follower does not save"
    assert "recaller/cooccurrence" in leader.save_incremental(), "holds s1, s2: not yet s3, s4"
    s3 = eng.store.conn.execute("SELECT id FROM events WHERE event_id = 's3'").fetchone()[0]
    assert leader.store.load_artifact("recaller/cooccurrence")[2]["events_upto"] < s3
    leader.close()

    eng.similar("fresh-p", 5)  # notices the save, loads it, folds in s3 and s4 (again)
    assert eng.serving.upto["recaller/cooccurrence"] == eng.store.newest_event_id()
    rec = eng.serving.fitted("recallers", "cooccurrence")
    row = rec.index["fresh-p"]
    lo, hi = rec.indptr[row], rec.indptr[row + 1]
    saved = {rec.ids[j]: float(c) for j, c in zip(rec.indices[lo:hi], rec.counts[lo:hi])}
    folded = {rec.ids[j]: cell[0] for j, cell in rec.delta.get(row, {}).items()}
    assert set(saved) == {"fresh-q"} and set(folded) == {"fresh-r"}, (saved, folded)
    assert folded["fresh-r"] == saved["fresh-q"], "folded in once"
    other = Engine(eng.db_path)  # a third process: the same state, the same answers
    other.serving.may_save = lambda: False
    assert [r.item_id for r in other.similar("fresh-p", 5)] == [r.item_id for r in eng.similar("fresh-p", 5)]
    other.close()


def test_too_many_events_since_a_model_are_not_folded_in_one_by_one(eng, monkeypatch):
    from engine import learning

    eng.recommend("user001", 5)
    monkeypatch.setattr(learning, "FOLD_IN_MAX", 1)
    other = Engine(eng.db_path)
    other.store.write([Event("newbie-9", "g0-i01", "view", LATER, event_id="m1"),
                       Event("newbie-9", "g0-i02", "view", LATER + 1, event_id="m2")])
    other.close()
    with pytest.warns(RuntimeWarning, match='not folded in one by one. Run "shelfwise train"'):
        eng.recommend("user001", 5)
    assert eng.serving.upto["recaller/cooccurrence"] == eng.store.newest_event_id()
    assert "recaller/cooccurrence" not in eng.serving.unsaved, "serves as it was"


def test_a_recaller_whose_update_raises_serves_on_without_the_events(eng, monkeypatch):
    """Every sync folds in events now, so a plugin's failing `update` must stay small: the
    events are stored, that recaller serves what it knew, `status` names it."""
    from plugins.cooccurrence import CooccurrenceRecaller

    def broken(self, events, histories):
        raise ValueError("boom")

    eng.recommend("user001", 5)
    monkeypatch.setattr(CooccurrenceRecaller, "update", broken)
    assert eng.ingest([Event("user001", "g0-i01", "view", LATER, event_id="b1")])["accepted"] == 1
    assert eng.ingest([Event("user001", "g0-i02", "view", LATER + 1, event_id="b2")])["accepted"] == 1
    assert eng.status()["failing"]["recaller/cooccurrence"] == "update: ValueError: boom"
    assert len(eng.recommend("user001", 5)) == 5


def test_a_recaller_named_in_the_settings_but_not_installed_does_not_break_sync(eng):
    from engine.errors import UnknownComponentError

    (eng.db_path.parent / "shelfwise.toml").write_text("[pipeline]\nrecallers = {nope = 10, cooccurrence = 50}\n")
    other = Engine(eng.db_path)
    other.sync()
    assert other.ingest([Event("user001", "g0-i01", "view", LATER, event_id="n1")])["accepted"] == 1
    with pytest.raises(UnknownComponentError, match="nope"):
        other.recommend("user001", 5)
    other.close()
