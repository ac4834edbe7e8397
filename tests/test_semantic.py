"""The semantic layer end to end: real MiniLM weights, the real hnswlib index stored in
the SQLite file, content recall for cold-start items, hybrid search, similar items."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from engine import Event, Item
from engine.cli import cli
from engine.engine import Engine
from engine.plugins import load_plugins

T0 = 1_700_000_000.0
DAY = 86_400.0

CATALOGUE = {
    "outdoor": [
        ("tent-2p", "Trailblazer 2-Person Dome Tent", "Tents", "Lightweight waterproof dome tent for backpacking."),
        ("tent-4p", "Basecamp 4-Person Family Tent", "Tents", "Roomy tent with two doors for family camping."),
        ("bag-down", "Summit Down Sleeping Bag", "Sleeping Bags", "Goose down mummy bag rated to minus five degrees."),
        ("bag-syn", "Valley Synthetic Sleeping Bag", "Sleeping Bags", "Warm synthetic sleeping bag for cold nights outdoors."),
        ("stakes", "Aluminium Tent Stakes (8 pack)", "Tent Accessories", "Strong pegs that hold your tent in wind."),
        ("lamp", "Glow LED Camping Lantern", "Camping Lights", "Rechargeable lantern for the tent and campsite."),
    ],
    "coffee": [
        ("espresso", "Barista Pro Espresso Machine", "Coffee Machines", "15-bar espresso maker with steam wand for cappuccino."),
        ("drip", "Morning Drip Coffee Maker", "Coffee Machines", "Filter coffee machine that brews ten cups."),
        ("beans-dark", "Dark Roast Coffee Beans 1kg", "Coffee Beans", "Whole beans, chocolate notes, for espresso."),
        ("beans-light", "Ethiopia Light Roast Beans", "Coffee Beans", "Fruity single-origin beans for filter coffee."),
        ("frother", "Silk Milk Frother", "Coffee Accessories", "Froths milk for lattes and cappuccino."),
        ("grinder", "Burr Coffee Grinder", "Coffee Accessories", "Conical burr grinder for fresh ground coffee."),
    ],
    "running": [
        ("shoe-road", "Swift Road Running Shoes", "Running Shoes", "Cushioned shoes for road running and marathons."),
        ("shoe-trail", "Grip Trail Running Shoes", "Running Shoes", "Trail shoes with lugged outsole for muddy paths."),
        ("socks-run", "Merino Running Socks", "Socks", "Breathable merino wool socks that prevent blisters."),
        ("watch", "Pace GPS Running Watch", "Watches", "GPS watch that tracks pace, distance and heart rate."),
        ("bottle", "Hydra Soft Flask 500ml", "Hydration", "Collapsible water flask for long runs."),
        ("jacket-run", "Breeze Running Jacket", "Jackets", "Windproof lightweight jacket for running in the rain."),
    ],
}
ITEM_GROUP = {item: g for g, rows in CATALOGUE.items() for item, *_ in rows}


def catalogue() -> list[Item]:
    return [Item(item, title=title, category=cat, description=desc, price=20.0)
            for rows in CATALOGUE.values() for item, title, cat, desc in rows]


def events(seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    groups = list(CATALOGUE)
    out = []
    for u in range(90):
        group = groups[u % 3]
        own = [row[0] for row in CATALOGUE[group]]
        t = T0 + u * 600
        for _ in range(8):
            t += rng.uniform(600, DAY)
            item = str(rng.choice(own)) if rng.random() < 0.9 else str(rng.choice(list(ITEM_GROUP)))
            out.append(Event(f"u{u:02d}", item, str(rng.choice(["view", "cart", "purchase"], p=[.6, .25, .15])), t))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SHELFWISE_LOAD_PLUGINS", raising=False)
        mp.delenv("SHELFWISE_CONFIG", raising=False)
        eng = Engine(tmp_path_factory.mktemp("semantic") / "shelfwise.db", registry=load_plugins())
        eng.store.write(catalogue() + events())
        eng.train_report = eng.train()
        yield eng
        eng.close()


def test_train_encodes_every_item_and_stores_the_index(trained):
    report = trained.train_report["vectors"]
    assert report["encoder"] == "minilm" and report["encoded"] == len(ITEM_GROUP)
    ids, vectors = trained.store.embeddings("minilm")
    assert sorted(ids) == sorted(ITEM_GROUP)
    assert vectors.shape == (len(ITEM_GROUP), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    artifact = {a["name"]: a for a in trained.store.active_artifacts()}["index/minilm"]
    assert artifact["format"] == "hnsw" and len(artifact["sha256"]) == 64


def test_index_reloads_from_the_database(trained):
    again = Engine(trained.db_path, registry=trained.registry)
    index = again.vectors()
    assert index is not None and len(index) == len(ITEM_GROUP)
    hits = index.query(trained.vectors().vector("espresso")[None, :], 3)[0]
    assert hits[0][0] == "espresso"
    again.close()


def test_retrain_encodes_only_what_changed(trained):
    assert trained.refresh_vectors()["encoded"] == 0
    trained.store.write([Item("grinder", title="Burr Coffee Grinder (Steel)", category="Coffee Accessories",
                              description="Conical burr grinder for fresh ground coffee.", price=20.0)])
    report = trained.refresh_vectors()
    assert report["encoded"] == 1 and report["indexed"] == len(ITEM_GROUP)


def test_content_recommends_similar_text(trained, monkeypatch):
    monkeypatch.setattr(trained.settings.pipeline, "diversity", 0)  # content's own neighbours
    # fusion keeps content's order; which ranker serves this 90-shopper shop depends on the
    # held-back check (bert, when it wins, re-orders by its learned popularity features)
    recs = trained.recommend(None, 5, recallers=["content"], ranker="fusion", items=["espresso"])
    assert recs, "an anonymous visitor who viewed an item gets content neighbours"
    assert recs[0].source == "content"
    assert {ITEM_GROUP[r.item_id] for r in recs[:3]} == {"coffee"}
    assert "Barista Pro Espresso Machine" in recs[0].reason


def test_a_new_item_is_recommendable_as_soon_as_it_is_imported(trained):
    new = Item("tent-ultra", title="Featherlite 1-Person Ultralight Tent",
               category="Tents", description="Ultralight solo backpacking tent, waterproof.")
    trained.import_data("jsonl", None, items=_jsonl(trained, [new]))
    assert "tent-ultra" in trained.vectors()
    similar = trained.similar("tent-2p", 5)
    assert "tent-ultra" in [r.item_id for r in similar]
    found = next(r for r in similar if r.item_id == "tent-ultra")
    assert found.source == "content", "no events yet: only the content recaller can know it"
    recs = trained.recommend(None, 10, items=["tent-2p", "bag-down"])
    assert "tent-ultra" in [r.item_id for r in recs]


def _jsonl(eng, items) -> str:
    path = eng.db_path.parent / "new_items.jsonl"
    path.write_text("\n".join(json.dumps({"item_id": i.item_id, "title": i.title,
                                          "category": i.category, "description": i.description})
                              for i in items) + "\n")
    return str(path)


def test_user_without_history_gets_popular_items(trained):
    recs = trained.recommend("nobody-knows-me", 5)
    assert recs and {r.source for r in recs} == {"popular"}


def test_visitor_with_a_text_query_gets_content_results(trained):
    recs = trained.recommend(None, 5, recallers=["content"], ranker="fusion",  # content's order
                             text="shoes for running in the mud")
    assert recs[0].item_id == "shoe-trail"
    assert recs[0].reason == "close in meaning to “shoes for running in the mud”"


def test_search_exact_sku_wins(trained):
    assert trained.search("watch", 3)[0].item_id == "watch"
    assert trained.search("beans-light", 3)[0].item_id == "beans-light"


def test_search_by_meaning(trained):
    top = [r.item_id for r in trained.search("something to make coffee at home", 3)]
    assert set(top) & {"espresso", "drip"}
    recs = trained.search("keep warm at night while camping", 3)
    assert {"bag-down", "bag-syn"} & {r.item_id for r in recs}
    assert all(r.source == "search" and r.reason for r in recs)


def test_search_cli_json_has_the_recommend_shape(trained, all_plugins):
    result = CliRunner().invoke(cli, ["--db", str(trained.db_path), "search", "espresso", "-n", "3", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["item_id"] == "espresso"
    assert {"item_id", "title", "score", "source", "reason", "rank"} <= set(rows[0])


def test_similar_blends_recallers_and_says_which(trained):
    recs = trained.similar("espresso", 6)
    assert {r.source for r in recs} <= {"cooccurrence", "sequence", "content", "als", "kg", "transformer"}
    assert "content" in {s for r in recs for s in r.sources}
    assert all(r.reason for r in recs)


def test_evaluation_reports_a_cold_start_slice(trained):
    report = trained.evaluate(k=5)
    names = {r["name"] for r in report["results"]}
    assert {"content", "pipeline"} <= names and "search" not in names
    assert report["cold_start_users"] >= 0
    for row in report["results"]:
        if report["cold_start_users"]:
            assert set(row["cold_start"]) >= {"ndcg@5", "recall@5"}


def test_a_removed_item_leaves_the_index_and_the_recommendations(trained):
    report = trained.remove_items(["beans-light"])
    assert report["removed"] == 1 and report["vectors"]["removed"] == 1
    assert "beans-light" not in trained.vectors()
    assert "beans-light" not in trained.store.embedding_hashes("minilm")
    again = Engine(trained.db_path, registry=trained.registry)  # the stored index agrees
    assert "beans-light" not in again.vectors()
    again.close()
    recs = trained.recommend(None, 10, items=["beans-dark"])
    assert "beans-light" not in [r.item_id for r in recs]
    assert "beans-light" not in [r.item_id for r in trained.search("light roast beans", 5)]


def test_a_bulk_encode_gives_the_encoder_back_and_the_next_text_loads_it_again(tmp_path, monkeypatch):
    """Encoding many products (a first `train`, an import into a shop with an index) releases
    the encoder afterwards (its weights and the heap its batches used: the fits need the
    memory); a small edit keeps it; the next text to encode loads a fresh one, with the
    same vectors."""
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "popular,minilm")
    eng = Engine(tmp_path / "bulk.db", registry=load_plugins())
    try:
        many = [Item(f"p{j:03d}", f"Product {j} " + ("tent" if j % 2 else "coffee"), category="c")
                for j in range(300)]
        eng.store.write(many)
        used = eng.encoder()
        eng.refresh_vectors()  # what `train` does first on a new shop
        assert len(eng.vectors()) == 300
        first = eng.encoder()
        assert first is not used, "the encoder that encoded 300 products was released"
        again = first.encode_items([many[7]])[0]
        assert np.allclose(again, eng.vectors().vector("p007"), atol=1e-5)
        eng.upsert_items([Item("p300", "Product 300 coffee", category="c")])
        assert eng.encoder() is first, "a small edit keeps the encoder"
    finally:
        eng.close()
