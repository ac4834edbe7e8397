"""The `kg` recaller: graph from the store (links + one hop of triples) or derived from the
catalogue, IDF weighting against hubs, readable path reasons, state round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import Event, Item, ItemEntity, Query, Triple
from engine.artifacts import dump_state, load_state
from engine.db import open_db
from engine.store import Store
from engine import Dataset
from engine.testing import T0, RecallerContract, checkerboard
from engine.types import Interaction
from plugins.kg import KnowledgeGraphRecaller, readable_relation


def make_store(tmp_path, records, name="shop.db") -> Store:
    store = Store(open_db(tmp_path / name))
    store.write(records)
    return store


def checkerboard_records() -> list:
    """The contract's checkerboard shop, with brands that follow the two halves: items
    with the same parity share a brand in groups of four."""
    data = checkerboard()
    records: list = [Item(f"i{i:02d}", title=f"item {i}", brand=f"b{i % 2}{(i // 2) % 5}")
                     for i in range(40)]
    for e in range(data.n_events):
        records.append(Event(str(data.user_ids[data.users[e]]), str(data.item_ids[data.items[e]]),
                             data.kind_names[data.kinds[e]], float(data.ts[e])))
    return records


class TestKnowledgeGraphContract(RecallerContract):
    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path):
        self.tmp_path = tmp_path

    def make(self):
        return KnowledgeGraphRecaller()

    def data(self):
        return make_store(self.tmp_path, checkerboard_records()).dataset()

    def test_reasons_name_the_brand(self):
        r, data = self.fitted()
        q = Query(user_id="u0", history=(Interaction("i00", "view", T0),), exclude=frozenset({"i00"}))
        cands = r.recall([q], 5)[0]
        assert cands and all(c.reason == "same brand as [[i00]]" for c in cands)
        # i00 has brand b00, shared with i10, i20, i30
        assert {c.item_id for c in cands} == {"i10", "i20", "i30"}


def events(pairs):
    return [Event(u, i, "view", T0 + k) for k, (u, i) in enumerate(pairs)]


def test_bare_dataset_without_store_gives_empty_lists():
    """No graph, and a catalogue of bare ids (nothing to derive entities from): nothing."""
    shop = checkerboard()
    bare = Dataset.from_arrays(shop.user_ids[shop.users], shop.item_ids[shop.items],
                               np.asarray(shop.kind_names)[shop.kinds], shop.ts, catalogue=list(shop.item_ids))
    r = KnowledgeGraphRecaller()
    r.fit(bare)
    assert r.is_fitted()
    q = Query(user_id="u0", history=(Interaction("i00", "view", T0),))
    assert r.recall([q, Query(item_id="i02")], 5) == [[], []]


def test_one_hop_triples_give_same_director(tmp_path):
    items = [Item(f"m{k}", title=f"Movie {k}") for k in range(12)]
    links = [ItemEntity(f"m{k}", f"e{k}") for k in range(12)]
    triples = [Triple("e1", "film.film.directed_by", "d1"), Triple("e2", "film.film.directed_by", "d1"),
               Triple("e3", "film.film.directed_by", "d2"), Triple("e4", "film.film.directed_by", "d2"),
               # the inverse direction is also understood
               Triple("a1", "film.actor.film", "e5"), Triple("a1", "film.actor.film", "e6")]
    store = make_store(tmp_path, items + links + triples + events([("u", "m0")]))
    r = KnowledgeGraphRecaller()
    r.fit(store.dataset())
    [cands] = r.recall([Query(item_id="m1")], 5)
    assert [c.item_id for c in cands] == ["m2"]
    assert cands[0].reason == "same director as [[m1]]"
    [cands] = r.recall([Query(user_id="x", history=(Interaction("m5", "view", T0),),
                              exclude=frozenset({"m5"}))], 5)
    assert [c.item_id for c in cands] == ["m6"]
    assert "same actor as [[m5]]" == cands[0].reason


def test_hubs_do_not_drive_recall_rare_entities_do(tmp_path):
    n = 20
    items = [Item(f"m{k}", title=f"Movie {k}") for k in range(n)]
    links = [ItemEntity(f"m{k}", f"e{k}") for k in range(n)]
    # a genre on 18 of 20 items (a hub), one director shared by m0 and m7 only
    triples = [Triple(f"e{k}", "film.film.genre", "g.drama") for k in range(18)]
    # a mid-frequency genre shared by m0..m3 (df 4 = 20%: kept, but weaker than the director)
    triples += [Triple(f"e{k}", "film.film.genre", "g.noir") for k in range(4)]
    triples += [Triple("e0", "film.film.directed_by", "d.rare"), Triple("e7", "film.film.directed_by", "d.rare")]
    store = make_store(tmp_path, items + links + triples + events([("u", "m0")]))
    r = KnowledgeGraphRecaller()
    r.fit(store.dataset())
    assert "g.drama" not in set(r.entity_ids.tolist()), "hub entity is dropped"
    [cands] = r.recall([Query(item_id="m0")], 10)
    ids = [c.item_id for c in cands]
    assert ids[0] == "m7", "the rare shared director ranks first"
    assert cands[0].reason == "same director as [[m0]]"
    assert set(ids) == {"m7", "m1", "m2", "m3"}, "nothing comes through the hub alone"
    assert all(c.reason == "same genre as [[m0]]" for c in cands[1:])
    assert cands[0].score > cands[1].score


def test_derived_graph_brand_and_category(tmp_path):
    items = [Item(f"p{k}", title=f"Product {k}", category=f"cat{k % 2}", brand=f"brand{k % 5}")
             for k in range(20)]
    store = make_store(tmp_path, items + events([("u", "p0")]))
    r = KnowledgeGraphRecaller()
    r.fit(store.dataset())
    [cands] = r.recall([Query(item_id="p0")], 3)
    # brand0 = p0, p5, p10, p15 (df 4 of 20: kept); categories are hubs (10 of 20: dropped)
    assert {c.item_id for c in cands} == {"p5", "p10", "p15"}
    assert all(c.reason == "same brand as [[p0]]" for c in cands)


def test_derived_price_band_tags_and_attrs(tmp_path):
    items = [Item(f"s{k}", category="shoes", price=float(k), tags=(f"t{k // 4}",),
                  attrs={"material": "leather" if k < 3 else f"m{k}", "notes": ["x"]})
             for k in range(40)]
    store = make_store(tmp_path, items + events([("u", "s0")]))
    r = KnowledgeGraphRecaller({"max_entity_share": 0.3})
    r.fit(store.dataset())
    rel = {e: r.relations[k] for e, k in zip(r.entity_ids.tolist(), r.entity_relation.tolist())}
    assert rel["attr:material:leather"] == "material"
    assert rel["tag:t0"] == "tag"
    assert rel["price:shoes:0"] == "price_band"
    [cands] = r.recall([Query(item_id="s0")], 40)
    reasons = {c.item_id: c.reason for c in cands}
    assert reasons["s1"] == "same material as [[s0]]"  # df 3: the rarest shared entity
    assert reasons["s3"] == "same tag as [[s0]]"
    assert reasons["s9"] == "same price band as [[s0]]"


def test_exclusion_and_anchors_never_returned(tmp_path):
    r = KnowledgeGraphRecaller()
    r.fit(make_store(tmp_path, checkerboard_records()).dataset())
    hist = tuple(Interaction(f"i{k:02d}", "purchase", T0 + k) for k in (0, 2))
    [cands] = r.recall([Query(user_id="z", history=hist, exclude=frozenset({"i10"}))], 10)
    ids = {c.item_id for c in cands}
    assert ids and not ids & {"i00", "i02", "i10"}


def test_relation_names_readable_and_overridable(tmp_path):
    assert readable_relation("film.film.directed_by") == "director"
    assert readable_relation("film.director.film") == "director"
    assert readable_relation("film.film.starring") == "actor"
    assert readable_relation("film.film_genre.films_in_this_genre") == "genre"
    assert readable_relation("brand") == "brand"
    assert readable_relation("price_band") == "price band"
    assert readable_relation("fabric_weight") == "fabric weight"
    assert readable_relation("film.film.directed_by", {"film.film.directed_by": "filmmaker"}) == "filmmaker"
    items = [Item(f"m{k}") for k in range(10)]
    links = [ItemEntity(f"m{k}", f"e{k}") for k in range(10)]
    triples = [Triple("e1", "film.film.directed_by", "d1"), Triple("e2", "film.film.directed_by", "d1")]
    store = make_store(tmp_path, items + links + triples + events([("u", "m0")]))
    r = KnowledgeGraphRecaller({"relation_names": {"film.film.directed_by": "filmmaker"}})
    r.fit(store.dataset())
    assert r.recall([Query(item_id="m1")], 3)[0][0].reason == "same filmmaker as [[m1]]"


def test_state_is_plain_arrays_and_round_trips(tmp_path):
    r = KnowledgeGraphRecaller()
    r.fit(make_store(tmp_path, checkerboard_records()).dataset())
    st = r.state()
    assert all(a.dtype != object for a in st.arrays.values())
    assert st.arrays["entity_ids"].dtype.kind == "U"
    payload, fmt, meta = dump_state(st)
    clone = KnowledgeGraphRecaller()
    clone.load(load_state(payload, fmt, json.loads(json.dumps(meta))))
    qs = [Query(item_id="i04"), Query(user_id="u", history=(Interaction("i03", "view", T0),))]
    for a, b in zip(r.recall(qs, 5), clone.recall(qs, 5)):
        assert [(c.item_id, c.reason) for c in a] == [(c.item_id, c.reason) for c in b]
        assert np.allclose([c.score for c in a], [c.score for c in b])


def test_popularity_prior_prefers_items_people_chose(tmp_path):
    """Of two items linked to the anchor by the same entity, the one more people chose ranks
    first with the prior on; with it off the tie stays a tie."""
    items = [Item(f"p{k}", title=f"Product {k}", brand="acme" if k < 3 else f"other{k}")
             for k in range(20)]  # acme: 3 of 20 items, informative (not a hub)
    pairs = [("u0", "p0")] + [(f"fan{k}", "p2") for k in range(5)] + [("u9", "p1")]
    store = make_store(tmp_path, items + events(pairs))
    with_prior = KnowledgeGraphRecaller()
    with_prior.fit(store.dataset())
    [cands] = with_prior.recall([Query(item_id="p0")], 2)
    assert [c.item_id for c in cands] == ["p2", "p1"]
    assert cands[0].score > cands[1].score
    flat = KnowledgeGraphRecaller({"popularity": 0.0})
    flat.fit(store.dataset())
    [cands] = flat.recall([Query(item_id="p0")], 2)
    assert cands[0].score == pytest.approx(cands[1].score)


class TestRandomWalkContract(TestKnowledgeGraphContract):
    """The random-walk scoring keeps every promise of the recaller contract."""

    def make(self):
        return KnowledgeGraphRecaller({"method": "rwr"})

    def test_reasons_name_the_brand(self):
        r, data = self.fitted()
        q = Query(user_id="u0", history=(Interaction("i00", "view", T0),), exclude=frozenset({"i00"}))
        cands = r.recall([q], 5)[0]
        direct = [c for c in cands if c.item_id in {"i10", "i20", "i30"}]
        assert direct and all(c.reason == "same brand as [[i00]]" for c in direct)


def chain_store(tmp_path):
    """m0 —director d1— m1 —actor a1— m2: m2 shares nothing with m0 directly."""
    items = [Item(f"m{k}", title=f"Movie {k}") for k in range(12)]
    links = [ItemEntity(f"m{k}", f"e{k}") for k in range(12)]
    triples = [Triple("e0", "film.film.directed_by", "d1"), Triple("e1", "film.film.directed_by", "d1"),
               Triple("e1", "film.film.starring", "a1"), Triple("e2", "film.film.starring", "a1")]
    return make_store(tmp_path, items + links + triples + events([("u", "m0")]))


def test_walk_reaches_two_steps_and_names_the_whole_path(tmp_path):
    store = chain_store(tmp_path)
    walk = KnowledgeGraphRecaller({"method": "rwr", "popularity": 0})
    walk.fit(store.dataset())
    [cands] = walk.recall([Query(item_id="m0")], 5)
    assert [c.item_id for c in cands] == ["m1", "m2"], "the nearer item first"
    assert cands[0].reason == "same director as [[m0]]"
    assert cands[1].reason == "same actor as [[m1]], which shares a director with [[m0]]"
    meta = KnowledgeGraphRecaller({"method": "meta_path", "popularity": 0})
    meta.fit(store.dataset())
    [cands] = meta.recall([Query(item_id="m0")], 5)
    assert [c.item_id for c in cands] == ["m1"], "meta-paths stop at one shared entity"


def test_walk_spreads_a_hub_thin(tmp_path):
    """Through a hub the walk's mass is split over every item it touches, so an item reached
    through a rare entity outranks one reached through a common one."""
    n = 30
    items = [Item(f"m{k}", title=f"Movie {k}") for k in range(n)]
    links = [ItemEntity(f"m{k}", f"e{k}") for k in range(n)]
    triples = [Triple(f"e{k}", "film.film.genre", "g.common") for k in range(5)]      # m0..m4
    triples += [Triple("e0", "film.film.directed_by", "d.rare"), Triple("e9", "film.film.directed_by", "d.rare")]
    store = make_store(tmp_path, items + links + triples + events([("u", "m0")]))
    walk = KnowledgeGraphRecaller({"method": "rwr", "popularity": 0})
    walk.fit(store.dataset())
    [cands] = walk.recall([Query(item_id="m0")], 10)
    assert cands[0].item_id == "m9" and cands[0].reason == "same director as [[m0]]"
    assert {c.item_id for c in cands[1:]} == {"m1", "m2", "m3", "m4"}
    assert cands[0].score > 2 * cands[1].score


def test_cli_imports_a_graph_lists_kg_and_explains_with_the_path(tmp_path, monkeypatch):
    """A shop owner's view: import a catalogue with a triples file and entity links, train,
    and see `kg` in `shelfwise plugins`, in the default pipeline and in the reasons."""
    from click.testing import CliRunner

    import engine.cli
    from engine.cli import cli
    from tests.conftest import CORE_PLUGINS

    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",kg")
    monkeypatch.setattr(engine.cli, "_registry", None)
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"m{k},Movie {k}\n" for k in range(30)))
    (tmp_path / "links.csv").write_text("item_id,entity\n" + "".join(f"m{k},e{k}\n" for k in range(30)))
    (tmp_path / "triples.jsonl").write_text("\n".join(json.dumps(t) for t in [
        {"head": "e0", "relation": "film.film.directed_by", "tail": "d.lynch"},
        {"head": "e1", "relation": "film.film.directed_by", "tail": "d.lynch"},
        {"head": "e1", "relation": "film.film.starring", "tail": "a.maclachlan"},
        {"head": "e2", "relation": "film.film.starring", "tail": "a.maclachlan"}]) + "\n")
    rows = [f"u{u},m{(u + k) % 30},view,{1_700_000_000 + u * 100 + k}" for u in range(40) for k in range(6)]
    (tmp_path / "events.csv").write_text("user_id,item_id,kind,timestamp\n" + "\n".join(rows) + "\n")
    # triples come as JSON lines, the rest as CSV: two imports into one database
    db = str(tmp_path / "shop.db")
    runner = CliRunner()
    res = runner.invoke(cli, ["--db", db, "import", "csv", "--items", str(tmp_path / "items.csv"),
                              "--links", str(tmp_path / "links.csv"), "--events", str(tmp_path / "events.csv")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["--db", db, "import", "jsonl", "--triples", str(tmp_path / "triples.jsonl")])
    assert res.exit_code == 0, res.output
    info = json.loads(runner.invoke(cli, ["--db", db, "plugins", "--json"]).output)
    kg = {c["name"]: c for c in info["components"]["recallers"]}["kg"]
    assert kg["plugin"] == "kg" and kg["default"] is True
    res = runner.invoke(cli, ["--db", db, "train"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["--db", db, "recommend", "--item", "m0", "--recallers", "kg", "--json", "-n", "5"])
    assert res.exit_code == 0, res.output
    recs = json.loads(res.output)
    assert [r["item_id"] for r in recs] == ["m1"]
    assert recs[0]["reason"] == "same director as “Movie 0”"
    walk = tmp_path / "walk.toml"
    walk.write_text('[plugins.kg]\nmethod = "rwr"\npopularity = 0\n')
    assert runner.invoke(cli, ["--db", db, "--config", str(walk), "train"]).exit_code == 0
    res = runner.invoke(cli, ["--db", db, "--config", str(walk), "recommend", "--item", "m0",
                              "--recallers", "kg", "--json", "-n", "5"])
    recs = json.loads(res.output)
    assert [r["item_id"] for r in recs] == ["m1", "m2"]
    assert recs[1]["reason"] == "same actor as “Movie 1”, which shares a director with “Movie 0”"


def test_a_shared_brand_is_the_reason_even_when_the_price_band_is_rarer(tmp_path):
    """The price band counts in the score, but "same brand" is what a shopper understands."""
    halo = {0, 1, 6, 12}  # 4 of 24 items; p0 and p1 also share a price band of two
    items = [Item(f"p{k}", title=f"Product {k}", category="cameras", price=float(k),
                  brand="halo" if k in halo else f"b{k}") for k in range(24)]
    store = make_store(tmp_path, items + events([("u", "p0")]))
    r = KnowledgeGraphRecaller({"price_bands": 12})  # bands of two items: rarer than the brand
    r.fit(store.dataset())
    [cands] = r.recall([Query(item_id="p0")], 10)
    assert cands[0].item_id == "p1", "brand and price band together score highest"
    assert {c.item_id: c.reason for c in cands} == {f"p{k}": "same brand as [[p0]]" for k in (1, 6, 12)}
