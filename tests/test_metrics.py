"""Top-K metrics checked against values worked out by hand."""

import math

import numpy as np
import pytest

from engine import ndcg_at
from engine.metrics import aggregate, user_metrics


def test_user_metrics_by_hand():
    m = user_metrics(["a", "b", "c", "d"], {"b", "d"}, k=3)
    # only b (position 2) is a hit inside the top 3; the ideal list has both relevant items
    # at positions 1 and 2
    assert m["ndcg"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["hit"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(1 / 3)


def test_perfect_and_empty_lists():
    perfect = user_metrics(["b", "d", "x"], {"b", "d"}, k=3)
    assert perfect["ndcg"] == pytest.approx(1.0)
    assert perfect["recall"] == 1.0 and perfect["mrr"] == 1.0
    assert perfect["precision"] == pytest.approx(2 / 3)

    nothing = user_metrics([], {"b"}, k=5)
    assert nothing == {"ndcg": 0.0, "recall": 0.0, "hit": 0.0, "mrr": 0.0, "precision": 0.0}


def test_hits_beyond_k_do_not_count():
    m = user_metrics(["a", "b", "c", "d"], {"d"}, k=3)
    assert m["hit"] == 0.0 and m["ndcg"] == 0.0 and m["mrr"] == 0.0


def test_ideal_dcg_is_capped_at_k():
    # five relevant items but k=2: a list with two hits is perfect
    m = user_metrics(["r1", "r2"], {"r1", "r2", "r3", "r4", "r5"}, k=2)
    assert m["ndcg"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(2 / 5)


def test_short_list_precision_divides_by_k():
    m = user_metrics(["a"], {"a"}, k=4)
    assert m["precision"] == pytest.approx(1 / 4)


def test_user_without_relevant_items_raises():
    with pytest.raises(ValueError):
        user_metrics(["a", "b"], set(), k=2)


def test_aggregate_means_and_coverage():
    ranked = [["a", "b", "c", "d"], ["c", "e", "f", "a"]]
    relevant = [{"b", "d"}, {"c"}]
    out = aggregate(ranked, relevant, k=3, n_items=10)
    first = user_metrics(ranked[0], relevant[0], 3)
    second = user_metrics(ranked[1], relevant[1], 3)
    for name in ("ndcg", "recall", "hit", "mrr", "precision"):
        assert out[f"{name}@3"] == pytest.approx((first[name] + second[name]) / 2)
    # top-3 items shown: a, b, c, e, f -> 5 of 10 catalogue items
    assert out["coverage@3"] == pytest.approx(0.5)
    assert out["users"] == 2
    assert set(out) == {"ndcg@3", "recall@3", "hit@3", "mrr@3", "precision@3", "coverage@3",
                        "users"}


def test_aggregate_needs_one_list_per_user():
    with pytest.raises(ValueError):
        aggregate([["a"]], [{"a"}, {"b"}], k=1, n_items=3)


def test_ndcg_at_one_list_by_hand():
    # hits at ranks 2 and 4 of 5; three relevant items in all: the ideal puts them at 1, 2, 3
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at([False, True, False, True, False], 3, k=5) == pytest.approx(dcg / ideal)
    assert ndcg_at([True, True], 5, k=2) == 1.0         # the ideal is capped at k
    assert ndcg_at([False, False, True], 1, k=2) == 0.0  # a hit beyond k does not count
    assert ndcg_at([], 2, k=10) == 0.0 and ndcg_at([True], 0, k=10) == 0.0


def test_ndcg_at_rows_is_one_list_at_a_time_exactly():
    rng = np.random.default_rng(0)
    hits = rng.random((50, 7)) < 0.3
    n_relevant = rng.integers(0, 12, size=50)
    rows = ndcg_at(hits, n_relevant, k=10)
    assert rows.tolist() == [ndcg_at(h, n, k=10) for h, n in zip(hits, n_relevant)]
    assert ndcg_at(hits, n_relevant, k=3).tolist() == [ndcg_at(h, n, k=3) for h, n in zip(hits, n_relevant)]


def test_ndcg_at_is_the_ndcg_of_user_metrics():
    ranked, relevant = ["a", "b", "c", "d"], {"b", "d", "z"}
    assert user_metrics(ranked, relevant, 3)["ndcg"] == \
        ndcg_at([item in relevant for item in ranked], len(relevant), 3)
