"""The request path (merge, filters, ranker) and the Engine API on a small synthetic shop:
train, recommend, similar, ingest, evaluate."""

import pytest

from tests.conftest import CORE_PLUGINS

from engine import (
    Candidate, EngineError, Event, NotTrainedError, Query, Ranker, Recaller, UnknownComponentError,
    hookimpl,
)
from engine.config import Settings
from engine.engine import Engine
from engine.pipeline import Pipeline, merge
from engine.plugins import load_plugins

from . import shop

DEFAULT_RECALLERS = {"popular", "als", "cooccurrence", "sequence"}
METRIC_KEYS = {f"{m}@5" for m in ("ndcg", "recall", "hit", "mrr", "precision", "coverage")}


def cand(item, source, rank, score=None, reason=None):
    score = 1.0 / rank if score is None else score
    reason = reason or f"{source} likes {item}"
    return Candidate(item, score, source, reason, {source: score}, {source: rank},
                     {source: reason})


# -- merge ----------------------------------------------------------------------------


def test_merge_keeps_every_recallers_opinion():
    merged = merge({
        "a": [cand("x", "a", 1), cand("y", "a", 2, reason="a's reason for y")],
        "b": [cand("y", "b", 1, score=0.3, reason="b's reason for y"), cand("z", "b", 2)],
    })
    by_id = {c.item_id: c for c in merged}
    assert set(by_id) == {"x", "y", "z"}
    y = by_id["y"]
    assert y.ranks == {"a": 2, "b": 1}
    assert y.scores == {"a": 0.5, "b": 0.3}
    assert y.reasons == {"a": "a's reason for y", "b": "b's reason for y"}
    assert y.source == "b" and y.reason == "b's reason for y", "the best-ranked recaller leads"
    assert merged[0].item_id == "y", "found by two recallers: first by reciprocal rank"
    assert by_id["x"].source == "a" and by_id["x"].ranks == {"a": 1}


def test_merge_tie_goes_to_the_earlier_recaller():
    merged = merge({"a": [cand("x", "a", 1)], "b": [cand("x", "b", 1)]})
    assert len(merged) == 1 and merged[0].source == "a"
    assert merged[0].ranks == {"a": 1, "b": 1}


class StaticRecaller(Recaller):
    """Proposes fixed items and ignores `exclude`, so only the pipeline can filter."""

    name = "static"
    description = "fixed list"

    def __init__(self, items):
        super().__init__()
        self.items = items

    def fit(self, data, progress=None):
        pass

    def recall(self, queries, n):
        return [self.candidates([(i, 1.0 / r, f"static {i}")
                                 for r, i in enumerate(self.items[:n], start=1)])
                for _ in queries]


def test_pipeline_filters_excluded_unavailable_and_other_categories():
    pipe = Pipeline({"static": StaticRecaller(["a", "b", "c", "d", "e", "f"])}, {"static": 10},
                    available={"a", "b", "c", "e", "f"},
                    categories={"a": "hats", "b": "shoes", "c": "hats", "d": "hats",
                                "e": "socks", "f": "hats"})
    q = Query(user_id="u", exclude=frozenset(["a"]))
    assert [c.item_id for c in pipe.run([q], 10)[0]] == ["b", "c", "e", "f"]
    hats = Query(user_id="u", exclude=frozenset(["a"]), category="hats")
    assert [c.item_id for c in pipe.run([hats], 10)[0]] == ["c", "f"]
    assert [c.item_id for c in pipe.run([q], 2)[0]] == ["b", "c"]
    everything = Pipeline({"static": StaticRecaller(["a", "d"])}, {"static": 10})
    assert [c.item_id for c in everything.run([Query()], 10)[0]] == ["a", "d"], \
        "available=None means no stock filter"


def test_pipeline_applies_the_ranker_after_filtering():
    class Reverse(Ranker):
        name = "reverse"

        def fit(self, examples, data, progress=None):
            return {}

        def rank(self, query, candidates):
            assert "a" not in [c.item_id for c in candidates], "filters run before the ranker"
            return [c.led_by(c.source, float(r)) for r, c in enumerate(reversed(candidates))]

    pipe = Pipeline({"static": StaticRecaller(["a", "b", "c"])}, {"static": 10}, ranker=Reverse())
    assert [c.item_id for c in pipe.run([Query(exclude=frozenset(["a"]))], 10)[0]] == ["c", "b"]


def test_the_trace_tells_what_each_stage_did():
    """One run's account: proposals, filters, the ranker's order, the rules' moves, the list."""
    class Reverse(Ranker):
        name = "reverse"

        def fit(self, examples, data, progress=None):
            return {}

        def rank(self, query, candidates):
            return [c.led_by(c.source, float(r)) for r, c in enumerate(reversed(candidates))]

    one, two = StaticRecaller(["a", "b", "c", "d", "new"]), StaticRecaller(["d", "x"])
    one.name, two.name = "one", "two"
    pipe = Pipeline({"one": one, "two": two},
                    {"one": 10, "two": 10}, ranker=Reverse(), available={"a", "b", "c", "d", "new"},
                    new_items={"new"}, new_slots=1, new_position=1)
    q = Query(user_id="u", exclude=frozenset(["b"]))
    traces = []
    shown = pipe.run([q], 3, traces=traces)[0]
    trace = traces[0]
    assert [c.item_id for c in trace.shown] == [c.item_id for c in shown], "the same run"
    assert trace.recall_rank("one", "d") == 4 and trace.recall_rank("two", "d") == 1
    assert trace.recall_rank("two", "a") is None
    assert trace.removed == {"excluded": {"b"}, "unavailable": {"x"}}
    assert trace.filters_of("x") == ["unavailable"] and trace.filters_of("a") == []
    kept = [i for i in trace.merged.items if i not in ("b", "x")]
    assert [c.item_id for c in trace.ranked] == kept[::-1] and trace.ranker == "reverse"
    assert trace.ranked[0].item_id == "new"
    assert trace.moved() == [], "the ranker already put the new product first"
    assert pipe.trace(q, 3).to_dict()["removed"] == {"excluded": 1, "unavailable": 1}
    slot = Pipeline({"static": StaticRecaller(["a", "b", "c", "new"])}, {"static": 10},
                    new_items={"new"}, new_slots=1, new_position=1).trace(Query(), 2)
    assert [c.item_id for c in slot.shown] == ["new", "a"]
    assert slot.moved() == [("new", 4, 1), ("a", 1, 2)], "the new-arrival slot moved it up"


def test_pipeline_respects_quotas():
    pipe = Pipeline({"static": StaticRecaller(list("abcdefgh"))}, {"static": 3})
    assert [c.item_id for c in pipe.run([Query()], 10)[0]] == ["a", "b", "c"]


# -- the engine on a small shop -------------------------------------------------------


def fill(eng):
    eng.store.write(shop.catalogue() + shop.events())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained engine shared by the read-only tests of this module."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("SHELFWISE_CONFIG", "SHELFWISE_DB"):
            mp.delenv(var, raising=False)
        mp.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
        # diversity off: these tests read the ranker's order (tests/test_diversity.py: on)
        eng = Engine(tmp_path_factory.mktemp("shop") / "shelfwise.db", registry=load_plugins(),
                     settings=Settings(pipeline={"diversity": 0}))
        fill(eng)
        eng.train_report = eng.train()
    yield eng
    eng.close()


def users_with(eng, kind):
    return sorted({r[0] for r in eng.store.conn.execute(
        "SELECT user_id FROM events WHERE kind = ?", [kind])})


def test_train_fits_and_activates_every_component(trained):
    report = trained.train_report
    assert set(report["versions"]) == {f"recaller/{n}" for n in DEFAULT_RECALLERS} | {"ranker/fusion"}
    assert report["users"] == 200 and report["items"] == 61  # 60 + the uncatalogued one
    run = trained.store.run(report["run_id"])
    assert run["kind"] == "train" and run["status"] == "ok"
    comps = trained.components()
    assert {c["name"] for c in comps["recallers"] if c["trained"]} == DEFAULT_RECALLERS
    assert [c["name"] for c in comps["rankers"] if c["trained"]] == ["fusion"]


def test_recommend_never_returns_what_the_user_bought(trained):
    buyers = users_with(trained, "purchase")
    assert len(buyers) > 100
    for user in buyers[:40]:
        recs = trained.recommend(user, n=10)
        assert len(recs) == 10
        bought = trained.store.consumed(user, ["purchase", "rating"])
        assert bought
        assert not {r.item_id for r in recs} & bought, user


def test_viewed_items_may_come_back(trained):
    """Only purchases and ratings hide an item; a viewed item may be recommended (here by ALS,
    which scores what a shopper looked at highly)."""
    shown_again = 0
    for user in users_with(trained, "view")[:20]:
        viewed_only = ({h.item_id for h in trained.store.history(user) if h.kind == "view"}
                       - trained.store.consumed(user, ["purchase", "rating"]))
        assert not trained.query_for(user).exclude & viewed_only
        recs = trained.recommend(user, n=10, recallers=["als"])
        shown_again += len({r.item_id for r in recs} & viewed_only)
    assert shown_again > 0, "views are not a reason to hide an item"


def test_out_of_stock_and_unknown_items_are_never_recommended(trained):
    popular = trained.pipeline().recallers["popular"]
    raw = [c.item_id for c in popular.recall([Query()], 5)[0]]
    assert shop.OUT_OF_STOCK in raw, "the test needs the out-of-stock item to be popular"
    hidden = {shop.OUT_OF_STOCK, shop.NOT_IN_CATALOGUE}
    for user in trained.store.users_with_events()[::5]:
        recs = trained.recommend(user, n=20)
        assert not {r.item_id for r in recs} & hidden, user
    for user, recs in trained.recommend_all(n=10):
        assert not {r.item_id for r in recs} & hidden, user


def test_why_not_and_the_explanation_read_the_same_run_as_recommend(trained):
    from engine.inspect import why_not

    user = users_with(trained, "purchase")[0]
    recs = trained.recommend(user, 5)
    trace = trained.trace(user, 5)
    assert [c.item_id for c in trace.shown] == [r.item_id for r in recs]
    for position, rec in enumerate(recs, start=1):
        verdict = why_not(trained, user, rec.item_id, 5)
        assert (verdict["verdict"], verdict["position"]) == ("recommended", position)
    bought = next(iter(trained.store.consumed(user, ("purchase",))))
    assert why_not(trained, user, bought, 5)["verdict"] in ("not recalled", "filtered")
    assert [r.item_id for r in trained.recommend(user, 5, ranker="")] == \
        [c.item_id for c in trained.trace(user, 5, ranker="").shown], "ranker switched off"


def test_recommendations_explain_themselves(trained):
    user = users_with(trained, "purchase")[0]
    recs = trained.recommend(user, n=10)
    assert [r.rank for r in recs] == list(range(1, 11))
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    for r in recs:
        assert r.title.startswith("Item ") and r.category.startswith("cat")
        assert r.source in DEFAULT_RECALLERS and r.source in r.sources
        assert r.reason and "[[" not in r.reason, "mentions are rendered as titles"
        assert r.ranker == "fusion"
    assert any("“Item " in r.reason for r in recs), "a reason names an item by its title"


def test_only_the_chosen_recallers(trained):
    user = users_with(trained, "purchase")[3]
    recs = trained.recommend(user, n=8, recallers=["popular"])
    assert len(recs) == 8
    assert {r.source for r in recs} == {"popular"}
    assert {s for r in recs for s in r.sources} == {"popular"}


def test_category_filter(trained):
    user = users_with(trained, "purchase")[0]
    recs = trained.recommend(user, n=5, category="cat2")
    assert recs and {r.category for r in recs} == {"cat2"}


def test_unknown_user_gets_popular_items(trained):
    recs = trained.recommend("somebody-new", n=5)
    assert len(recs) == 5
    assert {r.source for r in recs} == {"popular"}
    assert shop.OUT_OF_STOCK not in {r.item_id for r in recs}


def test_unknown_recaller_lists_the_installed_ones(trained):
    with pytest.raises(UnknownComponentError) as err:
        trained.recommend("user001", recallers=["popular", "nope"])
    message = str(err.value)
    assert "'nope'" in message
    for name in DEFAULT_RECALLERS:
        assert name in message


def test_unknown_ranker_is_an_error(trained):
    with pytest.raises(UnknownComponentError, match="'bert2'"):
        trained.recommend("user001", ranker="bert2")


def test_n_must_be_positive(trained):
    with pytest.raises(EngineError, match="n must be at least 1"):
        trained.recommend("user001", n=0)


def test_similar_items(trained):
    item = shop.item_id(1, 3)
    recs = trained.similar(item, n=5)
    assert len(recs) == 5
    assert item not in {r.item_id for r in recs}
    assert {r.source for r in recs} <= {"als", "cooccurrence", "sequence"}
    assert sum(r.category == "cat1" for r in recs) >= 4
    assert shop.OUT_OF_STOCK not in {r.item_id for r in trained.similar(shop.item_id(0, 1), 20)}
    with pytest.raises(EngineError, match="Unknown item 'no-such-item'"):
        trained.similar("no-such-item")


def test_recommend_before_training(engine):
    fill(engine)
    with pytest.raises(NotTrainedError, match="shelfwise train"):
        engine.recommend("user001")
    with pytest.raises(NotTrainedError):
        engine.recommend("user001", recallers=["popular"])


def test_train_without_events_is_an_error(engine):
    engine.store.write(shop.catalogue())
    with pytest.raises(EngineError, match="no events"):
        engine.train()


def test_ingest_is_idempotent_and_updates_cooccurrence(engine):
    fill(engine)
    engine.train()
    version = {a["name"]: a["version"] for a in engine.store.active_artifacts()}
    user = "user001"
    target = shop.item_id(1, 7)
    assert target not in engine.store.consumed(user, ["purchase"])
    new = [Event(user, shop.item_id(1, 5), "cart", shop.T0 + 60 * shop.DAY, event_id="n1"),
           Event(user, target, "purchase", shop.T0 + 60 * shop.DAY + 5, event_id="n2")]
    assert engine.ingest(new) == {"accepted": 2, "duplicates": 0}
    after = {a["name"]: a["version"] for a in engine.store.active_artifacts()}
    assert after["recaller/cooccurrence"] == version["recaller/cooccurrence"] + 1
    assert after["recaller/als"] == version["recaller/als"], "ALS folds users in; no new state"
    assert target not in {r.item_id for r in engine.recommend(user, n=30)}

    assert engine.ingest(new) == {"accepted": 0, "duplicates": 2}
    again = {a["name"]: a["version"] for a in engine.store.active_artifacts()}
    assert again == after, "nothing new, nothing saved"


def test_ingest_conflict_stores_nothing(engine):
    fill(engine)
    engine.train()
    engine.ingest([Event("user001", shop.item_id(0, 1), "view", shop.T0 + 99 * shop.DAY,
                         event_id="c1")])
    before = engine.store.counts()["events"]
    versions = engine.store.active_artifacts()
    with pytest.raises(EngineError, match="c1") as err:
        engine.ingest([
            Event("user002", shop.item_id(0, 2), "view", shop.T0 + 99 * shop.DAY, event_id="c2"),
            Event("user001", shop.item_id(0, 1), "purchase", shop.T0 + 99 * shop.DAY,
                  event_id="c1"),
        ])
    assert "nothing of this batch was stored" in str(err.value)
    assert engine.store.counts()["events"] == before
    assert engine.store.active_artifacts() == versions


def test_train_lets_go_of_the_events_before_it_saves_the_models(engine, monkeypatch):
    """At a million shoppers the events in memory are 1.7 GiB and the save (a 1.5 GB model
    serialized beside every fitted one) was the train's peak: the events go first."""
    import gc
    import weakref

    fill(engine)
    read, save = engine.store.dataset, engine.store.save_artifacts
    datasets, alive_at_save = [], []

    def dataset(*args, **kwargs):
        data = read(*args, **kwargs)
        datasets.append(weakref.ref(data))
        return data

    def save_artifacts(*args, **kwargs):
        gc.collect()
        alive_at_save.append(sum(ref() is not None for ref in datasets))
        return save(*args, **kwargs)

    monkeypatch.setattr(engine.store, "dataset", dataset)
    monkeypatch.setattr(engine.store, "save_artifacts", save_artifacts)
    report = engine.train()
    assert len(datasets) == 1 and alive_at_save == [0]
    assert report["events"] == len(shop.events()) and report["versions"]


def test_evaluate_reports_every_recaller_and_the_pipeline(trained):
    report = trained.evaluate(k=5)
    assert report["k"] == 5 and report["users"] > 100
    by_name = {r["name"]: r for r in report["results"]}
    assert set(by_name) == DEFAULT_RECALLERS | {"pipeline"}
    assert by_name["pipeline"]["kind"] == "pipeline" and by_name["pipeline"]["ranker"] == "fusion"
    for name in DEFAULT_RECALLERS:
        assert by_name[name]["kind"] == "recaller"
    for row in report["results"]:
        assert METRIC_KEYS <= set(row["metrics"]), row["name"]
        assert all(0.0 <= row["metrics"][k] <= 1.0 for k in METRIC_KEYS)
    # the shop has structure: personalised recall beats chance by a wide margin
    assert by_name["pipeline"]["metrics"]["hit@5"] > 0.2
    # the light-user slice: the lowest quarter of held-out users by history length
    assert 0 < report["light_users"] < report["users"]
    assert report["light_users"] >= report["users"] // 4
    for row in report["results"]:
        assert METRIC_KEYS <= set(row["light_users"]), row["name"]
    run = trained.store.run(report["run_id"])
    assert run["kind"] == "evaluate" and run["status"] == "ok"
    assert run["metrics"]["results"] == report["results"]

    second = trained.evaluate(k=5)
    assert second["run_id"] != report["run_id"]
    assert second["results"] == report["results"], "evaluation must be reproducible"


def test_evaluate_answers_a_typed_report_that_is_also_the_stored_json(trained):
    import json

    from engine import EvaluationReport, ModelScores

    report = trained.evaluate(k=5)
    assert isinstance(report, EvaluationReport) and report.k == 5
    pipeline = report.scores("pipeline")
    assert isinstance(pipeline, ModelScores) and pipeline.kind == "pipeline" and pipeline.ranker
    assert METRIC_KEYS <= set(pipeline.metrics)
    stored = trained.store.run(report.run_id)["metrics"]
    assert stored == json.loads(json.dumps(report.to_dict())), "the run row is the report"
    assert report["results"][-1]["metrics"] == pipeline.metrics, "also reads as its JSON"


def test_evaluate_does_not_touch_the_served_models(trained):
    before = trained.store.active_artifacts()
    trained.evaluate(k=3, recallers=["popular"])
    assert trained.store.active_artifacts() == before


def test_evaluate_needs_enough_history(engine):
    engine.store.write([Event("u1", "a", "view", shop.T0), Event("u1", "b", "view", shop.T0 + 1)])
    with pytest.raises(EngineError, match="held out"):
        engine.evaluate(k=5)


def test_recommend_all_agrees_with_recommend(trained):
    """`recommend --all` (campaign exports) must show what `recommend USER` shows: the same
    items, titles and readable reasons."""
    everyone = dict(trained.recommend_all(n=5, batch=7))
    assert set(everyone) == set(trained.store.users_with_events())
    for user in sorted(everyone)[:10]:
        one = trained.recommend(user, n=5)
        assert [r.item_id for r in everyone[user]] == [r.item_id for r in one]
        assert [r.title for r in everyone[user]] == [r.title for r in one]
        assert [r.reason for r in everyone[user]] == [r.reason for r in one]


def test_stock_changes_apply_without_retraining(engine, tmp_path):
    fill(engine)
    engine.train()
    user = "somebody-new"
    top = engine.recommend(user, n=1)[0].item_id
    items = tmp_path / "items.csv"
    items.write_text(f"item_id,in_stock\n{top},no\n")
    engine.import_data("csv", None, items=str(items))
    assert top not in {r.item_id for r in engine.recommend(user, n=10)}


def test_settings_choose_the_pipeline(tmp_path):
    (tmp_path / "shelfwise.toml").write_text(
        '[pipeline]\nrecallers = { popular = 7 }\n\n[plugins.popular]\ntrend = 0.0\n')
    eng = Engine(tmp_path / "shelfwise.db", registry=load_plugins())
    try:
        fill(eng)
        eng.train()
        assert set(eng.pipeline().recallers) == {"popular"}
        recs = eng.recommend("somebody-new", n=20)
        # a quota counts candidates before the filters: 7 minus the out-of-stock one
        assert len(recs) == 6 and {r.source for r in recs} == {"popular"}
        assert eng.pipeline().recallers["popular"].config.trend == 0.0
    finally:
        eng.close()


def test_a_failed_evaluation_is_recorded(tmp_path):
    registry = load_plugins()

    class Boom(Recaller):
        name = "boom"
        description = "fails to fit"

        def fit(self, data, progress=None):
            raise RuntimeError("boom while fitting")

        def recall(self, queries, n):
            return [[] for _ in queries]

    class BoomPlugin:
        @staticmethod
        @hookimpl
        def register_recallers(register):
            register(Boom)

    registry.pm.register(BoomPlugin(), name="boom-plugin")
    eng = Engine(tmp_path / "shelfwise.db", registry=registry)
    try:
        fill(eng)
        with pytest.raises(EngineError, match="boom failed to train .RuntimeError: boom while fitting"):
            eng.evaluate(k=5, recallers=["boom"])
        partly = eng.evaluate(k=5, recallers=["boom", "popular"])  # the rest is still evaluated
        assert partly["failed"] == {"boom": "RuntimeError: boom while fitting"}
        assert [r["name"] for r in partly["results"]] == ["popular", "pipeline"]
        run = eng.store.runs("evaluate")[1]
        assert run["status"] == "failed" and "boom while fitting" in run["note"]
    finally:
        eng.close()


# -- after the ranker: new-arrival slots and category diversity -------------------------

def ranked_list(ids, source="als"):
    return [Candidate(i, 1.0 - k / 100, source, f"reason {i}", ranks={source: k + 1}) for k, i in enumerate(ids)]


def test_a_new_product_takes_its_slot_when_the_ranker_placed_it_low():
    ranked = ranked_list(["a", "b", "c", "d", "e", "new1", "new2"])
    pipe = Pipeline({}, {}, new_items={"new1", "new2"}, new_slots=1, new_position=3)
    top = pipe.rerank(ranked, 5)
    assert [c.item_id for c in top] == ["a", "b", "new1", "c", "d"]
    assert top[2].reason == "reason new1", "it keeps the recaller's reason"
    # already in the top n on its own merit: nothing moves
    assert [c.item_id for c in pipe.rerank(ranked_list(["new2", "a", "b", "c"]), 3)] == ["new2", "a", "b"]
    # two slots fill consecutive places; a list shorter than the slot position is left alone
    two = Pipeline({}, {}, new_items={"new1", "new2"}, new_slots=2, new_position=2)
    assert [c.item_id for c in two.rerank(ranked, 4)] == ["a", "new1", "new2", "b"]
    assert [c.item_id for c in pipe.rerank(ranked, 2)] == ["a", "b"]
    # the default: the last place of whatever length the list has
    last = Pipeline({}, {}, new_items={"new1", "new2"}, new_slots=1)
    assert [c.item_id for c in last.rerank(ranked, 6)] == ["a", "b", "c", "d", "e", "new1"]
    assert [c.item_id for c in last.rerank(ranked, 4)] == ["a", "b", "c", "d"], "short lists stay the ranker's"
    # no recaller proposed a new product: the ranked list as it was
    assert [c.item_id for c in pipe.rerank(ranked_list(["a", "b", "c"]), 3)] == ["a", "b", "c"]


def test_diversity_spreads_categories_and_zero_keeps_the_ranking():
    ranked = ranked_list(["s1", "s2", "s3", "s4", "t1", "t2"])
    categories = {"s1": "socks", "s2": "socks", "s3": "socks", "s4": "socks", "t1": "tents", "t2": "tents"}
    plain = Pipeline({}, {}, categories=categories)
    assert [c.item_id for c in plain.rerank(ranked, 4)] == ["s1", "s2", "s3", "s4"]
    varied = Pipeline({}, {}, categories=categories, diversity=0.3)
    # no item vectors: similarity is category equality. Relevance by rank 1, .83, .67, .5,
    # .33, .17; value 0.7 * relevance - 0.3 * (a sock already shown): s2 .28 > t1 .23, then
    # t1 .23 > s3 .17
    assert [c.item_id for c in varied.rerank(ranked, 4)] == ["s1", "s2", "t1", "s3"]
    strong = Pipeline({}, {}, categories=categories, diversity=1.0)
    # relevance no longer counts: after s1 and t1 every candidate is as similar, so the
    # ranker's order decides the rest
    assert [c.item_id for c in strong.rerank(ranked, 4)] == ["s1", "t1", "s2", "s3"]



class Cancelled(Exception):
    """What a UI raises from the progress callback to stop a long job."""


def cancel_at(stage: str, done: int):
    def progress(s, d, total, message=""):
        if s == stage and d == done:
            raise Cancelled(f"cancelled at {s} {d}")
    return progress


def test_a_cancel_while_scoring_is_recorded_as_failed(trained):
    with pytest.raises(Cancelled):
        trained.evaluate(k=5, progress=cancel_at("score", 1))
    run = trained.store.runs("evaluate", 1)[0]
    assert run["status"] == "failed" and "cancelled at score 1" in run["note"]


def test_a_cancel_before_activation_keeps_the_models_and_after_it_is_too_late(tmp_path):
    eng = Engine(tmp_path / "shop.db", registry=load_plugins(), settings=Settings())
    fill(eng)
    eng.train()
    before = eng.store.active_artifacts()
    with pytest.raises(Cancelled):
        eng.train(progress=cancel_at("save", 0))
    assert eng.store.active_artifacts() == before
    assert eng.store.runs("train", 1)[0]["status"] == "failed"
    report = eng.train(progress=cancel_at("save", 1))  # the models are already active
    assert eng.store.runs("train", 1)[0]["status"] == "ok"
    assert {a["version"] for a in eng.store.active_artifacts()} != {a["version"] for a in before}
    assert report["versions"]
    eng.close()


def test_a_cancel_while_recalling_validation_candidates_lands_at_once(tmp_path):
    """The validation users are recalled in batches that report progress, so a cancel (or a
    progress bar) does not wait for all of them."""
    eng = Engine(tmp_path / "shop.db", registry=load_plugins(), settings=Settings())
    fill(eng)
    seen = []

    def progress(stage, done, total, message=""):
        if stage == "candidates":
            seen.append(done)
            if 0 < done < total:
                raise Cancelled("cancelled while recalling")
    with pytest.raises(Cancelled):
        eng.train(progress=progress)
    assert seen[0] == 0 and 0 < seen[-1], seen
    assert eng.store.runs("train", 1)[0]["status"] == "failed"
    eng.close()


def test_validation_moments_of_earlier_cuts_never_see_their_future():
    """Each earlier cut holds out the newest items of what the later cut left visible; the
    recallers of a cut are fitted on its visible part only, which every moment carries."""
    from engine.config import PipelineSettings
    from engine.training import validation_examples
    from plugins.popular import PopularRecaller

    from engine import Dataset

    evs = shop.events(n_users=60, per_user=25)
    data = Dataset.from_arrays([e.user_id for e in evs], [e.item_id for e in evs],
                               [e.kind for e in evs], [e.ts for e in evs])
    settings = PipelineSettings(validation_windows=3)
    latest, earlier = validation_examples(data, {"popular": PopularRecaller()}, {"popular": 20}, settings)
    assert latest and earlier
    assert {ex.known.n_events for ex in latest} == {latest[0].known.n_events}  # one view per cut
    views = sorted({id(ex.known): ex.known.n_events for ex in latest + earlier}.values(), reverse=True)
    assert len(views) == 3 and views[0] < data.n_events and views[0] > views[1] > views[2]
    by_user: dict[str, list] = {}
    for ex in latest + earlier:
        known = ex.known
        u = known.user_index[ex.query.user_id]
        seen = {str(known.item_ids[i]) for i in known.items[known.user_events(u)]}
        assert not (ex.relevant & seen), "what the user met next is not in the cut's view"
        assert known.ts.max() <= data.ts.max()
        assert max((s.ts for s in ex.query.history), default=0) <= ex.query.now
        by_user.setdefault(ex.query.user_id, []).append(ex)
    twice = [exs for exs in by_user.values() if len(exs) > 1]
    assert twice, "earlier cuts add moments of the same shoppers"
    for exs in twice:  # latest first: each earlier cut lies before the later one
        cuts = [ex.query.now for ex in exs]
        assert cuts == sorted(cuts, reverse=True) and len(set(cuts)) == len(cuts)



def test_a_recaller_that_is_not_refitted_per_cut_is_fitted_once_at_the_oldest_cut():
    """`refit_per_cut = False` (a slow fit that reads the shopper's history at request time):
    fitted once, on the oldest cut's data, and that model recalls at every cut; the others
    are fitted at each cut."""
    from engine.config import PipelineSettings
    from engine.training import validation_examples
    from plugins.popular import PopularRecaller

    from engine import Dataset

    fits: dict[str, list[int]] = {"each": [], "once": []}

    class Counting(PopularRecaller):
        def fit(self, data, progress=None):
            fits[self.label].append(data.n_events)
            super().fit(data, progress)

    each, once = Counting(), type("Once", (Counting,), {"refit_per_cut": False})()
    each.label = each.name = "each"
    once.label = once.name = "once"
    evs = shop.events(n_users=60, per_user=25)
    data = Dataset.from_arrays([e.user_id for e in evs], [e.item_id for e in evs],
                               [e.kind for e in evs], [e.ts for e in evs])
    latest, earlier = validation_examples(data, {"each": each, "once": once}, {"each": 20, "once": 20},
                                          PipelineSettings(validation_windows=3))
    assert len(fits["each"]) == 3 and fits["each"] == sorted(fits["each"])
    assert fits["once"] == fits["each"][:1], "fitted once, on the oldest cut's data"
    assert all("once" in ex.candidates.names for ex in latest + earlier if len(ex.candidates))

def test_rankers_fit_after_the_validation_models_are_dropped_and_the_final_fit_is_unchanged():
    """Once the validation candidates are recalled, each recaller forgets its cut's model
    (at a million shoppers co-occurrence alone is gigabytes) before the rankers fit; then
    every recaller is fitted on all the events, and recalls what a fresh fit recalls."""
    from engine.config import PipelineSettings
    from engine.training import fit_pipeline
    from plugins.cooccurrence import CooccurrenceRecaller
    from plugins.cooccurrence.sequence import SequenceRecaller
    from plugins.fusion import FusionRanker
    from plugins.popular import PopularRecaller

    from engine import Dataset

    evs = shop.events(n_users=60, per_user=25)
    data = Dataset.from_arrays([e.user_id for e in evs], [e.item_id for e in evs],
                               [e.kind for e in evs], [e.ts for e in evs])
    recallers = {"cooccurrence": CooccurrenceRecaller(), "sequence": SequenceRecaller(),
                 "popular": PopularRecaller()}
    seen_at_ranker_fit = {}

    class Probe(FusionRanker):
        def fit(self, examples, data, progress=None):
            seen_at_ranker_fit.update({n: r.is_fitted() for n, r in recallers.items()})
            return super().fit(examples, data, progress)

    report = fit_pipeline(data, recallers, {n: 20 for n in recallers}, [Probe()],
                          PipelineSettings(validation_windows=2))
    assert not report["failed"] and report["validation_moments"] > 0
    assert seen_at_ranker_fit == {"cooccurrence": False, "sequence": False, "popular": True}
    queries = [Query(user_id=str(u), history=data.history(j)) for j, u in enumerate(data.user_ids[:20])]
    for name, cls in [("cooccurrence", CooccurrenceRecaller), ("sequence", SequenceRecaller)]:
        fresh = cls()
        fresh.fit(data)
        assert recallers[name].is_fitted()
        assert ([list(c.items) for c in recallers[name].recall(queries, 20)]
                == [list(c.items) for c in fresh.recall(queries, 20)])


def _merge_objects(lists):
    """The merge written plainly over objects: every recaller's scores, ranks and reasons;
    the best score; the source and reason of the best rank (earlier recallers win ties);
    ordered by reciprocal-rank sum, ties in the order items were first met."""
    merged = {}
    for cands in lists.values():
        for c in cands:
            old = merged.get(c.item_id)
            if old is None:
                merged[c.item_id] = [c.score, c.source, c.reason, dict(c.scores), dict(c.ranks),
                                     dict(c.reasons), min(c.ranks.values())]
                continue
            if min(c.ranks.values()) < old[6]:
                old[1], old[2], old[6] = c.source, c.reason, min(c.ranks.values())
            old[0] = max(old[0], c.score)
            old[3].update(c.scores)
            old[4].update(c.ranks)
            old[5].update(c.reasons)
    out = [Candidate(i, m[0], m[1], m[2], m[3], m[4], m[5]) for i, m in merged.items()]
    return sorted(out, key=lambda c: -sum(1.0 / (20 + r) for r in c.ranks.values()))


def _fitted_recallers():
    from plugins.cooccurrence import CooccurrenceRecaller
    from plugins.popular import PopularRecaller
    from plugins.cooccurrence.sequence import SequenceRecaller

    from engine import Dataset

    evs = shop.events(n_users=40, per_user=15)
    data = Dataset.from_arrays([e.user_id for e in evs], [e.item_id for e in evs],
                               [e.kind for e in evs], [e.ts for e in evs])
    recallers = {"cooccurrence": CooccurrenceRecaller(), "popular": PopularRecaller(),
                 "sequence": SequenceRecaller()}
    for r in recallers.values():
        r.fit(data)
    queries = [Query(user_id=str(u), history=data.history(j)) for j, u in enumerate(data.user_ids[:10])]
    return recallers, queries


def test_merging_arrays_gives_the_candidates_merging_objects_gives():
    """The pipeline merges the recallers' answers as arrays; read as objects, the result is
    what merging candidate objects one by one gives: same order, scores, ranks, sources and
    reasons (the reasons are made only when read)."""
    recallers, queries = _fitted_recallers()
    pipe = Pipeline(recallers, {"cooccurrence": 30, "popular": 20, "sequence": 25})
    multi = 0
    for lists in pipe.recall(queries):
        got, want = list(merge(lists)), _merge_objects({k: list(v) for k, v in lists.items()})
        assert [c.item_id for c in got] == [c.item_id for c in want]
        for a, b in zip(got, want):
            assert (a.score, a.source, a.reason) == (b.score, b.source, b.reason)
            assert a.ranks == b.ranks and a.scores == b.scores and a.reasons == b.reasons
            assert a.reason and "[[" in a.reason or a.source == "popular"
            multi += len(a.ranks) > 1
    assert multi > 0  # items proposed by several recallers were merged


def test_validation_candidates_keep_scores_and_ranks_without_reasons():
    """Validation moments keep their candidates compact (float32 scores, no reasons); read
    back they are the merged candidates in the same order with the same ranks."""
    recallers, queries = _fitted_recallers()
    lists = Pipeline(recallers, {"cooccurrence": 30, "popular": 20}).candidates(queries)
    assert any(len(c.ranks) > 1 for cands in lists for c in cands)
    for cands in lists:
        stored = cands.compact()
        assert len(stored) == len(cands) and stored.items == cands.items
        for got in (list(stored), [stored[j] for j in range(len(stored))], stored[:]):
            for a, b in zip(got, cands):
                assert (a.item_id, a.source, a.reason, a.reasons) == (b.item_id, b.source, "", {})
                assert a.score == pytest.approx(b.score, rel=1e-6)
                assert list(a.ranks.items()) == list(b.ranks.items())
                assert a.scores == pytest.approx(b.scores, rel=1e-6)


def _ranker_shop():
    from engine import Dataset

    evs = shop.events(n_users=60, per_user=25)
    return Dataset.from_arrays([e.user_id for e in evs], [e.item_id for e in evs],
                               [e.kind for e in evs], [e.ts for e in evs])


def _fit_rankers(rankers, progress=None, settings=None):
    from engine.config import PipelineSettings
    from engine.training import fit_pipeline
    from plugins.cooccurrence import CooccurrenceRecaller
    from plugins.popular import PopularRecaller

    from engine import no_progress

    recallers = {"cooccurrence": CooccurrenceRecaller(), "popular": PopularRecaller()}
    return fit_pipeline(_ranker_shop(), recallers, {n: 20 for n in recallers}, rankers,
                        settings or PipelineSettings(validation_windows=2), progress or no_progress)


def _two_rankers():
    """Two fresh ranker classes that rank alike: fusion, and one of higher priority."""
    from plugins.fusion import FusionRanker

    class Quick(FusionRanker):
        pass

    class Main(FusionRanker):
        name = "main"
        priority = 10
    return Quick(), Main()


def test_only_the_ranker_that_will_serve_learns_again_and_only_if_its_class_allows():
    """After the check, the ranker that will serve learns again from every validation
    moment, unless its class says its fit is too slow (`refit` False: bert's minutes of
    fine-tuning) — decided by the class, not by how long the fit took on this machine, so a
    busy machine gives the same models. The others keep their first fit."""
    from engine.config import PipelineSettings

    def refitted(report):
        return {name for name, m in report["rankers"].items() if "ndcg@10_all" in m}

    quick, main = _two_rankers()  # equal on the check: the higher priority (main) serves
    assert refitted(_fit_rankers([quick, main])) == {"main"}
    quick, main = _two_rankers()
    type(main).refit = False
    assert refitted(_fit_rankers([quick, main])) == set()
    quick, main = _two_rankers()
    named = _fit_rankers([quick, main], settings=PipelineSettings(validation_windows=2, ranker="fusion"))
    assert refitted(named) == {"fusion"}


def test_final_rankers_drop_their_caches_before_the_recallers_final_fits():
    """Once the rankers are final, what is only a cache (bert's encoder states) goes before
    the recallers are fitted on all the events (and fork their training partners)."""
    from engine.config import PipelineSettings
    from engine.training import fit_pipeline
    from plugins.fusion import FusionRanker
    from plugins.popular import PopularRecaller

    from engine import Dataset

    order = []

    class Probe(PopularRecaller):
        def fit(self, data, progress=None):
            order.append("recaller fit")
            super().fit(data, progress)

    class Caching(FusionRanker):
        def drop_caches(self):
            order.append("ranker drops its caches")

    evs = shop.events(n_users=60, per_user=25)
    data = Dataset.from_arrays([e.user_id for e in evs], [e.item_id for e in evs],
                               [e.kind for e in evs], [e.ts for e in evs])
    fit_pipeline(data, {"popular": Probe()}, {"popular": 20}, [Caching()], PipelineSettings(validation_windows=2))
    assert order == ["recaller fit", "recaller fit", "ranker drops its caches", "recaller fit"]
