"""Built-in recallers and rankers: the engine.testing contracts, the numeric kernels against
their slow references (and implicit), and each algorithm's own promises."""

import re

import numpy as np
import pytest
import scipy.sparse as sp

from engine import Candidate, ConfigError, Dataset, Event, ModelState, Query, mention
from engine.artifacts import dump_state, load_state
from engine.testing import RankerContract, RecallerContract, checkerboard, query_for
from plugins.als import AlsRecaller
from plugins.als._kernels import confidence, fold_in, fold_in_reference
from plugins.cooccurrence import CooccurrenceRecaller
from plugins.cooccurrence.sequence import SequenceRecaller
from plugins.cooccurrence._kernels import (
    distinct_interactions, pair_counts, pair_counts_reference,
)
from plugins.fusion import FusionRanker
from plugins.popular import PopularRecaller

T0 = 1_700_000_000.0
DAY = 86_400.0
MENTION = re.compile(r"\[\[(.+?)\]\]")
ALS = {}  # the shipped defaults: the checkerboard is tiny, fitting takes milliseconds


# -- contracts ------------------------------------------------------------------------


class TestPopularContract(RecallerContract):
    min_checkerboard_accuracy = 0.0  # popularity ignores who is asking

    def make(self):
        return PopularRecaller()


class TestAlsContract(RecallerContract):
    def make(self):
        return AlsRecaller(ALS)


class TestCooccurrenceContract(RecallerContract):
    def make(self):
        return CooccurrenceRecaller()


class TestSequenceContract(RecallerContract):
    def make(self):
        return SequenceRecaller()


class TestFusionContract(RankerContract):
    def make(self):
        return FusionRanker()


def test_fusion_keeps_the_order_of_recallers_it_tuned_to_zero():
    """Asking for recallers whose tuned weights are all 0 (`--recallers content`) must
    still give their order, not an arbitrary one."""
    ranker = FusionRanker()
    ranker.load(ModelState(meta={"weights": {"content": 0.0, "als": 1.0}, "lone": 0.0}))
    cands = [Candidate(f"i{k}", 1.0 - k / 10, "content", "similar", ranks={"content": k + 1})
             for k in (3, 0, 2, 1)]
    ranked = ranker.rank(Query(user_id="u"), cands)
    assert [c.item_id for c in ranked] == ["i0", "i1", "i2", "i3"]
    assert ranked[0].score > ranked[-1].score > 0


def test_fusion_counts_every_asked_recaller_when_only_some_are_asked():
    """Tuned on the whole pipeline, als got 0 beside sequence; asked for als and popular
    alone (`--recallers als,popular`), als's best items must not vanish behind popular's."""
    ranker = FusionRanker()
    ranker.load(ModelState(meta={"weights": {"als": 0.0, "popular": 0.1, "sequence": 4.0}, "lone": 0.0}))
    cands = [Candidate("a1", 1.0, "als", "als", ranks={"als": 1}),
             Candidate("p1", 1.0, "popular", "pop", ranks={"popular": 1}),
             Candidate("p2", 0.5, "popular", "pop", ranks={"popular": 2}),
             Candidate("p3", 0.3, "popular", "pop", ranks={"popular": 3})]
    ranked = [c.item_id for c in ranker.rank(Query(user_id="u"), cands)]
    assert ranked.index("a1") < ranked.index("p2"), ranked
    full = [Candidate("a1", 1.0, "als", "als", ranks={"als": 1, "sequence": 9}),
            Candidate("s1", 1.0, "sequence", "seq", ranks={"sequence": 1}),
            Candidate("p1", 1.0, "popular", "pop", ranks={"popular": 1})]
    weights = {c.item_id: c.score for c in ranker.rank(Query(user_id="u"), full)}
    assert weights["a1"] == pytest.approx(4.0 / (ranker.config.c + 9)), "the whole pipeline: as tuned"


def test_fusion_tunes_on_the_ndcg_a_plain_loop_computes():
    """The vectorised NDCG that tunes the weights equals the textbook one: each example's
    candidates ordered by fused score (ties keep recall order), DCG of the top k over the
    ideal DCG, averaged over the examples."""
    import math

    from engine import RankingExample
    from plugins.fusion import _example_arrays

    rng = np.random.default_rng(3)
    names = ["als", "content", "popular"]
    examples = []
    for e in range(60):
        n = int(rng.integers(1, 40))
        cands = []
        for j in range(n):
            ranks = {r: int(rng.integers(1, 50)) for r in names if rng.random() < 0.6}
            cands.append(Candidate(f"i{j}", 0.0, "als", "", ranks=ranks or {"als": 60}))
        relevant = frozenset(f"i{j}" for j in rng.choice(n, size=min(n, 3), replace=False))
        examples.append(RankingExample(Query(user_id=f"u{e}"), cands, relevant))
    ranker = FusionRanker()
    ranker.fit(examples, None)
    k = ranker.config.k
    weights = np.array([ranker.weights[r] for r in names])
    arrays = _example_arrays(examples, names)
    for lone in (0.0, 0.5):
        scores = ranker._scores(arrays[0], arrays[3], weights, lone)
        expected, at = [], 0
        for ex in examples:
            mine = scores[at:at + len(ex.candidates)]
            at += len(ex.candidates)
            order = sorted(range(len(mine)), key=lambda j: -mine[j])  # stable: recall order on ties
            dcg = sum(1 / math.log2(p + 2) for p, j in enumerate(order[:k])
                      if ex.candidates[j].item_id in ex.relevant)
            ideal = sum(1 / math.log2(p + 2) for p in range(min(len(ex.relevant), k)))
            expected.append(dcg / ideal)
        assert ranker._mean_ndcg(arrays, weights, lone) == pytest.approx(np.mean(expected), abs=1e-12)


# -- ALS ------------------------------------------------------------------------------


def test_als_never_recalls_items_nobody_interacted_with():
    base = checkerboard()
    data = Dataset.from_arrays(base.user_ids[base.users], base.item_ids[base.items],
                               [base.kind_names[k] for k in base.kinds], base.ts,
                               catalogue=list(base.item_ids) + ["untouched"])
    recaller = AlsRecaller(ALS)
    recaller.fit(data)
    user = str(data.user_ids[0])
    recalled = [c.item_id for c in recaller.recall([query_for(data, user)], data.n_items)[0]]
    assert recalled and "untouched" not in recalled  # its factor is zero: no evidence either way


def test_fold_in_matches_the_reference():
    rng = np.random.default_rng(3)
    factors = rng.normal(size=(30, 6)).astype(np.float32)
    gram = factors.astype(np.float64).T @ factors.astype(np.float64)
    rows = []
    for size in (0, 1, 4, 12):
        items = rng.choice(30, size, replace=False)
        rows.append((items, confidence(rng.uniform(1, 9, size), 2.0)))
    got = fold_in(factors, gram, rows, 0.1)
    want = fold_in_reference(factors, gram, rows, 0.1)
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not got[0].any(), "an empty history folds in to the zero vector"


def test_fold_in_matches_implicit_recalculate_user():
    """Serving folds a user in from their history; for a user of the training matrix that
    must be the same least-squares step implicit takes."""
    from implicit.cpu.als import AlternatingLeastSquares

    data = checkerboard()
    recaller = AlsRecaller(ALS)
    recaller.fit(data)
    cfg = recaller.config
    model = AlternatingLeastSquares(factors=cfg.factors, regularization=cfg.regularization,
                                    alpha=1.0, num_threads=1)
    model.item_factors = recaller.item_factors
    m = data.matrix()
    m.data = confidence(m.data, cfg.alpha).astype(np.float32)
    for user in ("u0", "u1", "u7"):
        u = data.user_index[user]
        expected = model.recalculate_user(u, m[u])
        row = m[u]
        got = fold_in(recaller.item_factors, recaller.gram, [(row.indices, row.data)],
                      cfg.regularization)[0]
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4)
        # and the recaller's own path (history -> weights -> confidence -> fold-in) agrees
        cands = recaller.recall([query_for(data, user)], 5)[0]
        assert cands
        idx = [recaller.index[c.item_id] for c in cands]
        np.testing.assert_allclose([c.score for c in cands],
                                   recaller.item_factors[idx] @ expected, rtol=2e-3, atol=2e-4)


def test_als_answers_similar_item_queries():
    """`similar_items` is True for ALS, so `shelfwise similar` relies on it answering a query
    that names an item and has no history."""
    data = checkerboard()
    recaller = AlsRecaller(ALS)
    recaller.fit(data)
    assert recaller.similar_items
    cands = recaller.recall([Query(item_id="i00", exclude=frozenset(["i00"]))], 5)[0]
    assert cands, "no similar items for a well-known item"
    assert "i00" not in [c.item_id for c in cands]
    assert sum(int(c.item_id[1:]) % 2 == 0 for c in cands) >= 4
    assert all(mention("i00") in c.reason for c in cands)


def test_als_reasons_mention_a_history_item():
    data = checkerboard()
    recaller = AlsRecaller(ALS)
    recaller.fit(data)
    q = query_for(data, "u3")
    for c in recaller.recall([q], 5)[0]:
        mentioned = MENTION.findall(c.reason)
        assert len(mentioned) == 1 and mentioned[0] in q.history_items


def test_als_folds_in_a_new_user_without_retraining():
    data = checkerboard()
    recaller = AlsRecaller(ALS)
    recaller.fit(data)
    history = tuple(query_for(data, "u1").history[:3])  # odd items only
    cands = recaller.recall([Query(user_id="newcomer", history=history)], 5)[0]
    assert sum(int(c.item_id[1:]) % 2 == 1 for c in cands) >= 4


# -- co-occurrence --------------------------------------------------------------------


def random_events(seed, n_users=25, n_items=30, per_user=9):
    """Each user touches `per_user` distinct items once, in a random order, one kind each."""
    rng = np.random.default_rng(seed)
    users, items, kinds, ts = [], [], [], []
    t = T0
    order = [(u, j) for u in range(n_users) for j in range(per_user)]
    rng.shuffle(order)
    picks = {u: rng.choice(n_items, per_user, replace=False) for u in range(n_users)}
    for u, j in order:
        t += 60
        users.append(f"u{u:02d}")
        items.append(f"i{picks[u][j]:02d}")
        kinds.append(str(rng.choice(["view", "cart", "purchase"], p=[0.5, 0.3, 0.2])))
        ts.append(t)
    return Dataset.from_arrays(users, items, kinds, ts,
                               catalogue=[f"i{i:02d}" for i in range(n_items)])


@pytest.mark.parametrize("window", [1, 3, 50])
def test_pair_counts_match_the_reference(window):
    rng = np.random.default_rng(window)
    n_items = 12
    users = np.sort(rng.integers(0, 6, 80)).astype(np.int32)
    items = rng.integers(0, n_items, 80).astype(np.int32)
    weights = rng.choice([1.0, 4.0, 8.0], 80)
    du, di, strength = distinct_interactions(users, items, weights, n_items)
    sequences = {}
    for u, i, s in zip(du.tolist(), di.tolist(), strength.tolist()):
        sequences.setdefault(u, []).append((i, s))
    indptr, indices, (counts, strong) = pair_counts(du, di, strength, n_items, window, 4.0)
    C_ref, S_ref = pair_counts_reference(sequences, n_items, window, 4.0)
    shape = (n_items, n_items)
    C = sp.csr_matrix((counts, indices, indptr), shape=shape).toarray()
    S = sp.csr_matrix((strong, indices, indptr), shape=shape).toarray()
    np.testing.assert_allclose(C, C_ref, rtol=1e-6)
    np.testing.assert_allclose(S, S_ref)
    assert (np.diff(indptr) >= 0).all() and len(indices) == len(counts) == len(strong)
    # counted a few rows at a time (bounded memory): the same structure and the same floats
    for chunk in (1, 7, 40):
        p2, i2, (c2, s2) = pair_counts(du, di, strength * 0.37, n_items, window, 4.0 * 0.37, chunk=chunk)
        p1, i1, (c1, s1) = pair_counts(du, di, strength * 0.37, n_items, window, 4.0 * 0.37, chunk=10**9)
        assert np.array_equal(p1, p2) and np.array_equal(i1, i2)
        assert np.array_equal(c1, c2) and np.array_equal(s1, s2)


def test_distinct_interactions_keep_first_order_and_strongest_kind():
    users = np.array([0, 0, 0, 1, 0, 1])
    items = np.array([2, 1, 2, 2, 0, 2])
    weights = np.array([1.0, 1.0, 8.0, 4.0, 1.0, 1.0])
    du, di, strength = distinct_interactions(users, items, weights, 3)
    assert du.tolist() == [0, 0, 0, 1]
    assert di.tolist() == [2, 1, 0, 2]
    assert strength.tolist() == [8.0, 1.0, 1.0, 4.0]


def answers(recaller, queries, n=8):
    return [[(c.item_id, round(c.score, 5), c.reason) for c in cands]
            for cands in recaller.recall(queries, n)]


def test_incremental_update_equals_a_full_fit():
    """update() pairs each user's new items with their previous `window` distinct items,
    exactly as fit() does, when every new event is a new item for its user."""
    full = random_events(seed=5)
    cut = full.ts[int(full.n_events * 0.6)]
    first = full.subset(full.ts < cut)
    later = np.flatnonzero(full.ts >= cut)
    events = [Event(str(full.user_ids[full.users[e]]), str(full.item_ids[full.items[e]]),
                    full.kind_names[full.kinds[e]], float(full.ts[e])) for e in later]
    histories = {}
    for e in events:
        histories.setdefault(e.user_id, first.history(first.user_index[e.user_id]))

    config = {"window": 3}
    incremental = CooccurrenceRecaller(config)
    incremental.fit(first)
    before = answers(incremental, [query_for(full, "u00")])
    assert incremental.update(events, histories) is True
    refit = CooccurrenceRecaller(config)
    refit.fit(full)

    queries = [query_for(full, u) for u in full.user_ids.tolist()]
    queries += [Query(item_id=i, exclude=frozenset([i])) for i in full.item_ids.tolist()]
    assert answers(incremental, queries) == answers(refit, queries)
    assert answers(incremental, [query_for(full, "u00")]) != before

    # what the engine saves after an update (the compacted state) serves the same answers
    clone = CooccurrenceRecaller(config)
    clone.load(load_state(*dump_state(incremental.state())))
    assert answers(clone, queries) == answers(refit, queries)
    assert answers(incremental, queries) == answers(refit, queries)


def test_update_with_nothing_new_changes_nothing():
    data = random_events(seed=2)
    recaller = CooccurrenceRecaller()
    recaller.fit(data)
    u = data.user_index["u01"]
    history = data.history(u)
    again = [Event("u01", h.item_id, h.kind, h.ts + 1) for h in history[:2]]
    assert recaller.update(again, {"u01": history}) is False


def test_shrinkage_damps_a_pair_seen_once():
    """X-B is seen by ten shoppers, X-C by one; without shrinkage their cosines are equal
    (B is also popular on its own), with it the rare pair scores lower."""
    users, items = [], []
    for u in range(10):
        users += [f"u{u}", f"u{u}"]
        items += ["X", "B"]
    for u in range(10, 100):
        users.append(f"u{u}")
        items.append("B")
    users += ["u100", "u100"]
    items += ["X", "C"]
    ts = T0 + np.arange(len(users)) * 60.0
    data = Dataset.from_arrays(users, items, ["view"] * len(users), ts)
    q = [Query(item_id="X", exclude=frozenset(["X"]))]

    plain = CooccurrenceRecaller({"shrinkage": 0.0})
    plain.fit(data)
    scores = {c.item_id: c.score for c in plain.recall(q, 5)[0]}
    assert scores["B"] == pytest.approx(scores["C"], rel=1e-6)

    shrunk = CooccurrenceRecaller({"shrinkage": 5.0})
    shrunk.fit(data)
    ranked = shrunk.recall(q, 5)[0]
    assert [c.item_id for c in ranked] == ["B", "C"]
    assert ranked[1].score < ranked[0].score / 2


def test_cooccurrence_reasons_mention_the_anchor():
    data = random_events(seed=4)
    recaller = CooccurrenceRecaller()
    recaller.fit(data)
    q = query_for(data, "u02")
    cands = recaller.recall([q], 10)[0]
    assert cands
    for c in cands:
        mentioned = MENTION.findall(c.reason)
        assert len(mentioned) == 1 and mentioned[0] in q.history_items
        assert c.reason.startswith(("bought together with", "viewed together with"))


def test_cooccurrence_says_viewed_or_bought_together():
    users = ["a", "a", "b", "b", "c", "c"]
    items = ["shoe", "sock", "shoe", "sock", "hat", "shoe"]
    kinds = ["purchase", "purchase", "purchase", "purchase", "view", "view"]
    data = Dataset.from_arrays(users, items, kinds, T0 + np.arange(6) * 60.0)
    recaller = CooccurrenceRecaller()
    recaller.fit(data)
    by_item = {c.item_id: c.reason for c in
               recaller.recall([Query(item_id="shoe", exclude=frozenset(["shoe"]))], 5)[0]}
    assert by_item["sock"] == f"bought together with {mention('shoe')}"
    assert by_item["hat"] == f"viewed together with {mention('shoe')}"


# -- sequence -------------------------------------------------------------------------


def test_sequence_recalls_what_shoppers_chose_next_not_before():
    # Everyone goes tent -> stove -> mug; u4 has only just bought the tent.
    users, items = [], []
    for u in ("u1", "u2", "u3"):
        users += [u] * 3
        items += ["tent", "stove", "mug"]
    users += ["u4"]
    items += ["tent"]
    data = Dataset.from_arrays(users, items, ["purchase"] * len(users), T0 + np.arange(len(users)) * 60.0)
    recaller = SequenceRecaller()
    recaller.fit(data)
    after_tent = recaller.recall([query_for(data, "u4")], 5)[0]
    assert [c.item_id for c in after_tent] == ["stove", "mug"]  # the next step first, then the one after
    assert after_tent[0].reason == f"often chosen next after {mention('tent')}"
    # Directed: nobody went from the mug back to the tent or the stove.
    assert recaller.recall([Query(item_id="mug", exclude=frozenset(["mug"]))], 5)[0] == []
    assert [c.item_id for c in recaller.recall([Query(item_id="stove")], 5)[0]] == ["mug"]


def test_sequence_weighs_the_newest_items_most():
    # a is followed by x, b by y; a shopper who met a, then b, hears y first.
    users = ["p", "p", "q", "q", "s", "s"]
    items = ["a", "x", "b", "y", "a", "b"]
    data = Dataset.from_arrays(users, items, ["view"] * 6, T0 + np.arange(6) * 60.0)
    recaller = SequenceRecaller({"window": 1})
    recaller.fit(data)
    ranked = recaller.recall([query_for(data, "s")], 5)[0]
    assert [c.item_id for c in ranked] == ["y", "x"]
    assert ranked[0].score > ranked[1].score


# -- popular --------------------------------------------------------------------------


def trending_data():
    users, items, kinds, ts = [], [], [], []
    now = T0 + 100 * DAY
    for u in range(10):  # "old" was a hit two months ago
        users.append(f"a{u}"), items.append("old"), kinds.append("purchase")
        ts.append(now - 60 * DAY + u * 60)
    for u in range(4):  # "hot" is selling this week
        users.append(f"b{u}"), items.append("hot"), kinds.append("purchase")
        ts.append(now - DAY + u * 60)
    return Dataset.from_arrays(users, items, kinds, ts)


def test_popular_trend_prefers_what_is_hot_now():
    data = trending_data()
    trending = PopularRecaller({"trend": 1.0})
    trending.fit(data)
    ranked = trending.recall([Query()], 3)[0]
    assert [c.item_id for c in ranked] == ["hot", "old"]
    assert ranked[0].reason == "trending: 4 people in the last 7 days"

    all_time = PopularRecaller({"trend": 0.0})
    all_time.fit(data)
    ranked = all_time.recall([Query()], 3)[0]
    assert [c.item_id for c in ranked] == ["old", "hot"]
    assert ranked[0].reason == "popular with 10 people"


def test_popular_honours_the_category():
    data = Dataset.from_arrays(["u1", "u2", "u3", "u1"], ["a", "b", "b", "c"],
                               ["view"] * 4, T0 + np.arange(4.0),
                               catalogue=["a", "b", "c", "d"])
    data.categories = np.array(["hats", "shoes", "hats", "hats"])
    recaller = PopularRecaller()
    recaller.fit(data)
    hats = recaller.recall([Query(category="hats")], 10)[0]
    assert sorted(c.item_id for c in hats) == ["a", "c"]  # d was never touched
    assert [c.item_id for c in recaller.recall([Query(category="shoes")], 10)[0]] == ["b"]
    assert recaller.recall([Query(category="socks")], 10)[0] == []


def test_popular_skips_items_outside_the_catalogue():
    data = Dataset.from_arrays(["u1", "u2", "u3"], ["a", "ghost", "ghost"], ["view"] * 3,
                               T0 + np.arange(3.0), catalogue=["a"])
    recaller = PopularRecaller()
    recaller.fit(data)
    assert [c.item_id for c in recaller.recall([Query()], 5)[0]] == ["a"]


# -- settings -------------------------------------------------------------------------


BUILT_INS = [PopularRecaller, AlsRecaller, CooccurrenceRecaller, FusionRanker]


@pytest.mark.parametrize("cls", BUILT_INS, ids=lambda c: c.name)
def test_a_bad_setting_value_is_a_config_error(cls):
    field = next(iter(cls.Config.model_fields))
    with pytest.raises(ConfigError, match=rf"\[plugins\.{cls.name}\]"):
        cls({field: "not a value"})


@pytest.mark.parametrize("cls", BUILT_INS, ids=lambda c: c.name)
def test_a_misspelt_setting_is_a_config_error(cls):
    """`[plugins.als] factor = 32` (for `factors`) must not be silently ignored."""
    with pytest.raises(ConfigError, match="no_such_setting"):
        cls({"no_such_setting": 1})


def test_the_contract_fails_a_recaller_that_proposes_nothing():
    from engine import Recaller
    from engine.testing import RecallerContract

    class Nothing(Recaller):
        name = "nothing"
        description = "proposes nothing"

        def fit(self, data, progress=None):
            self._fitted = True

        def recall(self, queries, n):
            return [[] for _ in queries]

    class TestNothing(RecallerContract):
        def make(self):
            return Nothing()

    with pytest.raises(AssertionError, match="proposed nothing"):
        TestNothing().test_contract_learns_the_checkerboard()
