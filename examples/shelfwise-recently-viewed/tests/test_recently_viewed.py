"""The recaller against Shelfwise's contract, then what a shop owner should see."""

import json

import pytest

from engine import ConfigError, Dataset, Interaction, Query, Recaller, mention
from engine.testing import RecallerContract, checkerboard, query_for

from shelfwise_recently_viewed import RecentlyViewedRecaller, ago, register_recallers

DAY = 86_400.0
NOW = 1_700_000_000.0


class TestRecentlyViewedContract(RecallerContract):
    # The contract's queries exclude each user's whole history, and a user's history is
    # all this recaller proposes, so those lists are empty (and trivially "accurate").
    # test_own_half_of_the_checkerboard below asks the real question.
    min_checkerboard_accuracy = 0.0

    def make(self):
        return RecentlyViewedRecaller()


def fitted(**config) -> RecentlyViewedRecaller:
    r = RecentlyViewedRecaller(config)
    r.fit(checkerboard())
    return r


def look(item, kind="view", days_ago=0.0):
    return Interaction(item, kind, NOW - days_ago * DAY)


def recall(recaller, *history, n=10, exclude=(), now=NOW):
    q = Query(user_id="u", history=tuple(history), exclude=frozenset(exclude), now=now)
    return recaller.recall([q], n)[0]


def test_own_half_of_the_checkerboard():
    """Without excluding the history, users get back items of their own half, in form."""
    data = checkerboard()
    r = RecentlyViewedRecaller()
    r.fit(data)
    queries = [query_for(data, u, exclude_history=False) for u in ("u0", "u1", "u2", "u3")]
    for q, cands in zip(queries, r.recall(queries, 3)):
        assert 0 < len(cands) <= 3
        assert [c.ranks[r.name] for c in cands] == list(range(1, len(cands) + 1))
        assert all(c.source == r.name and c.reason.startswith("you ") for c in cands)
        assert all(int(c.item_id[1:]) % 2 == int(q.user_id[1:]) % 2 for c in cands)


def test_newest_look_first_with_a_readable_reason():
    cands = recall(fitted(), look("mug", days_ago=5), look("lamp", days_ago=1))
    assert [c.item_id for c in cands] == ["lamp", "mug"]
    assert cands[0].reason == f"you viewed {mention('lamp')} yesterday"
    assert cands[1].reason == f"you viewed {mention('mug')} 5 days ago"
    assert cands[0].score > cands[1].score > 0


def test_bought_items_are_never_proposed():
    """A purchase anywhere in the history rules the item out, even if the engine's own
    exclusion (its [pipeline] exclude_kinds) is configured not to."""
    cands = recall(fitted(), look("kettle", days_ago=3), look("kettle", "purchase", 2),
                   look("mug", days_ago=1))
    assert [c.item_id for c in cands] == ["mug"]


def test_excluded_items_are_never_proposed():
    cands = recall(fitted(), look("mug"), look("lamp"), exclude={"mug"})
    assert [c.item_id for c in cands] == ["lamp"]


def test_old_looks_are_forgotten():
    assert recall(fitted(), look("mug", days_ago=31)) == []
    assert [c.item_id for c in recall(fitted(max_age_days=60), look("mug", days_ago=31))] == ["mug"]


def test_a_cart_beats_a_fresher_view_and_says_so():
    cands = recall(fitted(), look("teapot", "cart", days_ago=2), look("mug", days_ago=1))
    assert [c.item_id for c in cands] == ["teapot", "mug"]
    assert cands[0].reason == f"you added {mention('teapot')} to your cart 2 days ago"


def test_repeated_looks_add_up():
    cands = recall(fitted(), look("lamp", days_ago=1),
                   look("mug", days_ago=4), look("mug", days_ago=3), look("mug", days_ago=2))
    assert [c.item_id for c in cands] == ["mug", "lamp"]
    assert cands[0].reason == f"you viewed {mention('mug')} 3 times, most recently 2 days ago"


def test_kinds_are_configurable():
    r = fitted(kinds=["cart"])
    cands = recall(r, look("mug", days_ago=1), look("teapot", "cart", days_ago=2))
    assert [c.item_id for c in cands] == ["teapot"]


def test_unknown_kinds_are_ignored_unless_configured():
    assert recall(fitted(), look("mug", "share")) == []
    cands = recall(fitted(kinds=["share"]), look("mug", "share", days_ago=0.01))
    assert cands[0].reason == f"you looked at {mention('mug')} just now"


def test_the_shops_event_weights_are_learned_and_saved():
    """fit takes the weights from the Dataset ([events.weights] in shelfwise.toml)."""
    data = Dataset.from_arrays(["a"], ["x"], ["view"], [NOW], catalogue=["x"],
                               kind_weights={"view": 10.0, "cart": 1.0})
    r = RecentlyViewedRecaller()
    r.fit(data)
    history = (look("teapot", "cart", days_ago=2), look("mug", days_ago=2))
    assert [c.item_id for c in recall(r, *history)] == ["mug", "teapot"]
    state = r.state()
    assert state.arrays == {} and json.loads(json.dumps(state.meta)) == state.meta
    clone = RecentlyViewedRecaller()
    assert not clone.is_fitted()
    clone.load(state)
    assert clone.is_fitted()
    assert [c.item_id for c in recall(clone, *history)] == ["mug", "teapot"]


def test_without_a_request_time_the_latest_activity_is_now():
    cands = recall(fitted(), look("mug", days_ago=3), look("lamp", days_ago=1), now=None)
    assert [c.reason for c in cands] == [f"you viewed {mention('lamp')} just now",
                                         f"you viewed {mention('mug')} 2 days ago"]


def test_n_caps_the_list_and_batches_keep_their_order():
    r = fitted()
    history = tuple(look(f"item{i}", days_ago=i) for i in range(10))
    queries = [Query(user_id="u", history=history, now=NOW), Query(user_id="nobody"),
               Query(user_id="v", history=history[:1], now=NOW)]
    lists = r.recall(queries, 3)
    assert [[c.item_id for c in cs] for cs in lists] == [["item0", "item1", "item2"], [], ["item0"]]


@pytest.mark.parametrize("config", [{"max_age_days": 0}, {"kinds": []}, {"colour": "red"},
                                    {"kinds": ["view", "purchase"]}])
def test_bad_settings_are_a_config_error(config):
    with pytest.raises(ConfigError, match=r"\[plugins.recently_viewed\]"):
        RecentlyViewedRecaller(config)


@pytest.mark.parametrize("seconds, text", [
    (59, "just now"), (3_600, "an hour ago"), (5 * 3_600, "5 hours ago"), (DAY, "yesterday"),
    (2 * DAY - 1, "yesterday"), (12 * DAY, "12 days ago"),
])
def test_ago(seconds, text):
    assert ago(seconds) == text


def test_registers_through_the_recallers_hook():
    found = []
    register_recallers(register=lambda *classes: found.extend(classes))
    assert found == [RecentlyViewedRecaller]
    assert issubclass(RecentlyViewedRecaller, Recaller)
    assert RecentlyViewedRecaller.default_quota == 0 and not RecentlyViewedRecaller.similar_items
