"""Merchandising rules (engine.merchandising, engine.conditions): the condition language and
its errors, each kind of rule on a trained shop (filter, boost, bury, pin), a pin of an
out-of-stock product, expiry, placements, rules changed by another process, the
explanations, and the `shelfwise rules` commands. The HTTP API's rules are tested in
test_server.py, the TUI's Rules screen in test_tui.py."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import EngineError, inspect
from engine.cli import cli
from engine.conditions import FIELDS, ConditionError, parse_condition
from engine.config import PipelineSettings, Settings
from engine.engine import Engine
from engine.merchandising import Rule, RuleSet
from engine.plugins import load_plugins
from engine.server.schemas import CONDITION_PATTERN
from engine.types import Candidate, Item, Query

from . import shop
from .server_support import build_shop_db, copy_db

# -- the condition language ----------------------------------------------------------------

TENT = Item("tent", "Red Trail Tent", category="Tents", brand="Acme", price=250.0,
            tags=("sale", "outdoor"), attrs={"season": "winter", "weight": "3.5", "sizes": ["S", "M"]})
SOCKS = Item("socks", "Blue socks", category="Socks", brand="Woolly", price=12.0, in_stock=False)
CAP = Item("cap", "Cap", category="Hats", brand="acme")  # no price, no attributes
ITEMS = [TENT, SOCKS, CAP]


@pytest.mark.parametrize("condition, matching", [
    ('brand = "Acme"', {"tent", "cap"}),                        # text comparisons ignore case
    ("brand != 'acme'", {"socks"}),
    ('title contains "TENT"', {"tent"}),
    ('category in ["tents", "Hats"]', {"tent", "cap"}),
    ('item_id = "socks"', {"socks"}),
    ("price > 200", {"tent"}),
    ("price <= 12", {"socks"}),
    ("price in [12, 99]", {"socks"}),
    ("price != 12", {"tent"}),                                  # no price: matches no comparison
    ("in_stock = false", {"socks"}),
    ('tags contains "SALE"', {"tent"}),
    ('tags in ["x", "outdoor"]', {"tent"}),
    ('attrs.season = "winter"', {"tent"}),
    ('not attrs.season = "winter"', {"socks", "cap"}),          # `not` includes who lacks it
    ("attrs.weight < 4", {"tent"}),                             # a text that is a number compares as one
    ('attrs.sizes contains "m"', {"tent"}),
    ('brand = "acme" and price > 100 or in_stock = false', {"tent", "socks"}),  # and before or
    ('brand = "acme" and (price > 100 or in_stock = false)', {"tent"}),
    ("not not price > 200", {"tent"}),
])
def test_conditions_match_each_field_and_comparison(condition, matching):
    assert parse_condition(condition).matching(ITEMS) == matching


@pytest.mark.parametrize("condition, position, says", [
    ("brand = ", 9, 'expected a "text" after \'brand =\', found the end of the condition'),
    ('price > "cheap"', 9, "expected a number after 'price >' (price is a number)"),
    ("brand > 3", 7, "brand is text: compare it with =, !=, in, contains, not >"),
    ('tags = "x"', 6, "tags is a list of texts: compare it with contains, in"),
    ('colour = "red"', 1, "unknown field 'colour'; the fields are item_id, title, category, brand, "
                          "price, in_stock, tags, attrs.NAME. An imported attribute is attrs.colour"),
    ('Brand = "x"', 1, "Did you mean brand?"),
    ("(price > 3", 11, "expected ')' to close the '(' at position 1, or 'and' / 'or'"),
    ("price > 3)", 10, "a ')' closes nothing here"),
    ('brand = "Acme', 9, 'this text has no closing "'),
    ('brand in ["a" "b"]', 15, "expected ',' or ']' in the list"),
    ("price > 3 and", 14, "expected a field"),
    ('brand = "a" brand = "b"', 13, "expected 'and', 'or' or the end of the condition"),
    ("price ; 3", 7, "unexpected character ';'"),
    ("", 1, "expected a condition such as brand = \"Acme\""),
])
def test_condition_errors_point_at_the_position_and_say_what_was_expected(condition, position, says):
    with pytest.raises(ConditionError) as caught:
        parse_condition(condition)
    err = caught.value
    assert err.position == position - 1 and err.title == "Invalid condition"
    message = str(err)
    assert message.startswith(f"Invalid condition at position {position}: ") and says in message
    echoed, caret = message.splitlines()[1:]
    assert caret.index("^") == position + 1 and echoed == "  " + condition  # the caret under it


def test_conditions_are_parsed_never_evaluated():
    for text in ('__import__("os").system("true")', "price > 1 and exec('x')", "(lambda: 1)()"):
        with pytest.raises(ConditionError):
            parse_condition(text)
    source = (Path(__file__).parents[1] / "engine" / "conditions.py").read_text()
    assert not re.search(r"(?<![.\w])(eval|exec|compile)\(", source)  # re.compile is a regex
    with pytest.raises(ConditionError, match="nested more than 32 deep"):
        parse_condition("(" * 40 + "price > 1" + ")" * 40)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(CONDITION_PATTERN, fullmatch=True))
def test_every_condition_the_api_schema_accepts_parses(text):
    """The HTTP schema states the language as a pattern (so that schema-valid requests are
    accepted): whatever it accepts, the parser reads."""
    parse_condition(text)


def test_the_api_pattern_knows_every_field():
    for name in FIELDS:
        assert name in CONDITION_PATTERN
    assert re.match(CONDITION_PATTERN, '(brand = "a" or attrs.x-y >= 3) and not tags contains "b"')
    assert not re.match(CONDITION_PATTERN, "brand > 3")


# -- the rules on their own: the pins' placement -----------------------------------------------

def cands(ids):
    return [Candidate(i, 1.0 - k / 100, "als", f"why {i}", ranks={"als": k + 1}) for k, i in enumerate(ids)]


def pin(rule_id, item, position, category=None):
    return Rule(rule_id, "pin", item_id=item, position=position, category=category)


def test_pins_take_their_places_older_rule_first_and_follow_a_short_list():
    top = cands(["a", "b", "c", "d"])
    rules = RuleSet(pins=sorted([pin(2, "x", 2), pin(1, "y", 2), pin(3, "c", 1)],
                                key=lambda r: (r.position, r.id)))
    shown, notes = rules.pin(Query(), top, top, 4, allowed=lambda item: True)
    assert [c.item_id for c in shown] == ["c", "y", "x", "a"]  # rule 1 before rule 2 at place 2
    assert notes == {"c": ["pinned by rule 3"], "y": ["pinned by rule 1"], "x": ["pinned by rule 2"]}
    assert shown[0].reason == "why c", "a recalled item keeps its reason"
    assert (shown[1].source, shown[1].reason) == ("pin", "featured by the shop")
    short, _ = RuleSet(pins=[pin(1, "x", 5)]).pin(Query(), top[:2], top[:2], 10, lambda item: True)
    assert [c.item_id for c in short] == ["a", "b", "x"], "no gap before a pin in a short list"
    beyond, _ = RuleSet(pins=[pin(1, "x", 5)]).pin(Query(), top, top, 4, lambda item: True)
    assert [c.item_id for c in beyond] == ["a", "b", "c", "d"], "a list shorter than the position"
    kept, notes = RuleSet(pins=[pin(1, "x", 1)]).pin(Query(), top, top, 4, lambda item: item != "x")
    assert kept == top and notes == {}, "an excluded item is not pinned"
    other, _ = RuleSet(pins=[pin(1, "x", 1, category="Tents")]).pin(Query(category="Hats"), top, top, 4,
                                                                     lambda item: True)
    assert other == top, "a pin for Tents lists leaves other lists alone"


def test_boosts_and_burials_move_by_places():
    ranked = cands(list("abcdefgh"))
    up = RuleSet(shifts={"g": 3.0}).reorder(ranked)
    assert [c.item_id for c in up] == list("abcgdefh"), "g from 7th to 4th, d to e one down"
    down = RuleSet(shifts={"b": -2.5}).reorder(ranked)
    assert [c.item_id for c in down] == list("acdbefgh"), "b sorts as if 4.5th: after d"
    # each sorts as if at its ranked place minus its shift; at equal places the one moved up
    # most goes first: g (7 - 3) and b (2 + 2) both sort as 4th, d's place, so g, d, b
    both = RuleSet(shifts={"g": 3.0, "b": -2.0}).reorder(ranked)
    assert [c.item_id for c in both] == list("acgdbefh")


# -- on a trained shop ------------------------------------------------------------------------

NO_SLOT = Settings(pipeline=PipelineSettings(new_item_slots=0, diversity=0))  # only the rules move items


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory):
    return build_shop_db(tmp_path_factory.mktemp("rules"))


@pytest.fixture
def db_path(shop_db, tmp_path):
    return copy_db(shop_db, tmp_path)


@pytest.fixture
def eng(db_path):
    e = Engine(db_path, registry=load_plugins(), settings=NO_SLOT)
    yield e
    e.close()


def ids(recs):
    return [r.item_id for r in recs]


def test_a_filter_rule_removes_what_it_matches(eng):
    before = eng.recommend("user004", 10)
    cheap = {r.item_id for r in before if r.price < 15}
    assert cheap, "the test needs cheap items in the list"
    rule = eng.add_rule("filter", where="price < 15")
    after = eng.recommend("user004", 10)
    assert len(after) == 10 and not cheap & set(ids(after))
    trace = eng.trace("user004", 10)
    assert cheap <= trace.removed[f"rule {rule.id}"]
    gone = next(iter(cheap))
    assert trace.rules_of(gone) == [f"filtered by rule {rule.id}"]
    report = inspect.why_not(eng, "user004", gone)
    assert report["verdict"] == "filtered" and f"filtered by rule {rule.id} (price < 15)" in report["filters"]


def test_a_boost_moves_matching_items_up_by_its_weight(eng):
    ranked = ids(eng.recommend("user004", 10))
    target = ranked[7]  # 8th
    rule = eng.add_rule("boost", where=f'item_id = "{target}"', weight=3)
    after = eng.recommend("user004", 10)
    assert ids(after) == ranked[:4] + [target] + ranked[4:7] + ranked[8:]
    assert after[4].rules == (f"boosted by rule {rule.id}",)
    eng.add_rule("boost", where=f'item_id = "{target}"', weight=2)  # two boosts add up
    assert ids(eng.recommend("user004", 10)).index(target) == 2


def test_a_burial_moves_matching_items_down(eng):
    ranked = ids(eng.recommend("user004", 10))
    target = ranked[1]
    rule = eng.add_rule("bury", where=f'item_id in ["{target}"]', weight=4)
    after = eng.recommend("user004", 10)
    assert ids(after).index(target) == 5 and after[5].rules == (f"buried by rule {rule.id}",)
    buried = eng.add_rule("bury", where=f'item_id = "{target}"', weight=500)
    assert target not in ids(eng.recommend("user004", 10))
    report = inspect.why_not(eng, "user004", target)
    assert report["verdict"] == "ranked low" and f"buried by rule {buried.id}" in report["summary"]


def test_a_pin_puts_its_item_at_its_position(eng):
    ranked = ids(eng.recommend("user004", 30))
    target = ranked[20]
    rule = eng.add_rule("pin", target, position=2)
    after = eng.recommend("user004", 5)
    assert ids(after) == [ranked[0], target] + ranked[1:4]
    assert after[1].rules == (f"pinned by rule {rule.id}",) and after[1].reason, "its recall reason stays"
    report = inspect.why_not(eng, "user004", target, n=5)
    assert (report["verdict"], report["position"]) == ("recommended", 2)
    assert f"pinned by rule {rule.id}" in report["summary"]


def test_a_pin_of_an_out_of_stock_product_is_not_shown_and_the_listing_says_so(eng):
    user = next(u for u in (f"user{k:03d}" for k in range(3, 120, 3))  # group 0, not bought it
                if shop.OUT_OF_STOCK not in eng.store.consumed(u, ["purchase", "rating"]))
    rule = eng.add_rule("pin", shop.OUT_OF_STOCK, position=1)
    assert rule.status == "not shown" and "out of stock" in rule.note
    assert shop.OUT_OF_STOCK not in ids(eng.recommend(user, 10)), "stock wins over the pin"
    [listed] = eng.rules()
    assert listed.status == "not shown" and listed.note == "the item is out of stock (stock wins over a pin)"
    back = next(i for i in shop.catalogue() if i.item_id == shop.OUT_OF_STOCK)
    eng.upsert_items([Item(**{**back.to_dict(), "tags": (), "in_stock": True})])  # restocked
    assert ids(eng.recommend(user, 10))[0] == shop.OUT_OF_STOCK, "shown at once, no retrain"
    assert eng.rules()[0].status == "active"


def test_a_pin_never_shows_what_the_shopper_bought_or_another_category(eng):
    bought = sorted(eng.store.consumed("user004", ["purchase"]))[0]
    eng.add_rule("pin", bought, position=1)
    assert bought not in ids(eng.recommend("user004", 10))
    other = next(i.item_id for i in shop.catalogue() if i.category == "cat2" and i.in_stock)
    eng.add_rule("pin", other, position=1)
    assert ids(eng.recommend("user004", 5))[0] == other
    assert other not in ids(eng.recommend("user004", 5, category="cat1")), "the list's category wins"
    for_cat2 = eng.add_rule("pin", other, position=3, category="cat1")
    assert eng.rules()[-1].status == "not shown" and "category 'cat2'" in eng.rules()[-1].note
    assert for_cat2.category == "cat1"


def test_rules_end_at_their_date_and_are_listed_as_expired(eng, monkeypatch):
    ranked = ids(eng.recommend("user004", 10))
    old = eng.add_rule("pin", ranked[9], position=1, until="2020-01-31")
    assert old.status == "expired" and old.until_date == "2020-01-31"
    assert ids(eng.recommend("user004", 10)) == ranked
    soon = eng.add_rule("pin", ranked[9], position=1, until=time.time() + 3600)
    assert soon.status == "active" and ids(eng.recommend("user004", 10))[0] == ranked[9]
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)  # an hour after it ended
    assert ids(eng.recommend("user004", 10)) == ranked, "the cached list went with the rule"
    assert [r.status for r in eng.rules()] == ["expired", "expired"]


def test_rules_apply_to_their_placement(eng):
    ranked = ids(eng.recommend("user004", 10))
    home = eng.add_rule("pin", ranked[9], position=1, placement="home")
    everywhere = eng.add_rule("bury", where=f'item_id = "{ranked[0]}"', weight=1)
    plain = ids(eng.recommend("user004", 10))
    assert plain[:2] == [ranked[1], ranked[0]], "a rule without a placement applies everywhere"
    assert ids(eng.recommend("user004", 10, placement="home"))[:3] == [ranked[9], ranked[1], ranked[0]]
    assert ids(eng.recommend("user004", 10, placement="cart")) == plain
    assert [r.id for r in eng.rules("cart")] == [everywhere.id]
    assert [r.id for r in eng.rules("home")] == [home.id, everywhere.id]
    assert dict(eng.recommend_all(10, placement="home"))["user004"][0].item_id == ranked[9]
    assert eng.popular(3, placement="home")[0].item_id == ranked[9]
    similar = eng.similar("g1-i03", 5, placement="home")
    assert similar[0].item_id == ranked[9] and similar[0].rules == (f"pinned by rule {home.id}",)


def test_rule_changes_by_another_process_take_effect_on_the_next_request(eng, db_path):
    ranked = ids(eng.recommend("user004", 10))
    hits = eng.recommendation_cache.hits
    assert ids(eng.recommend("user004", 10)) == ranked and eng.recommendation_cache.hits == hits + 1
    other = Engine(db_path, registry=load_plugins())  # another connection, as `shelfwise rules add`
    try:
        rule = other.add_rule("pin", ranked[5], position=1)
        assert ids(eng.recommend("user004", 10))[0] == ranked[5]
        other.remove_rule(rule.id)
        assert ids(eng.recommend("user004", 10)) == ranked
    finally:
        other.close()


def test_rule_ids_are_never_given_twice_and_removing_says_what_went(eng):
    first = eng.add_rule("filter", where="price > 1000")
    eng.remove_rule(first.id)
    second = eng.add_rule("filter", where="price > 1000")
    assert second.id == first.id + 1 and [r.id for r in eng.rules()] == [second.id]
    with pytest.raises(EngineError, match=rf"There is no rule {first.id}\. Rules: {second.id} "):
        eng.remove_rule(first.id)


@pytest.mark.parametrize("args, says", [
    (dict(kind="pin", item_id="nope", position=1), "Unknown item 'nope'"),
    (dict(kind="pin", item_id="g1-i03"), "A pin needs --position P, from 1 to 1000"),
    (dict(kind="pin", item_id="g1-i03", position=1, where="price > 1"), "--where and --weight are for"),
    (dict(kind="boost", where="price > 1"), "A boost rule needs --weight W: how many places"),
    (dict(kind="bury", where="price > 1", weight=0), "more than 0 and at most 1000"),
    (dict(kind="boost", where="price >", weight=1), "Invalid condition at position 8"),
    (dict(kind="filter", where="price > 1", weight=2), "A filter removes what matches: it takes no --weight"),
    (dict(kind="filter", where="price > 1", category="cat1"), "--where 'category = \"cat1\"'"),
    (dict(kind="filter"), "A filter rule needs --where CONDITION"),
    (dict(kind="filter", where="price > 1", placement="home page"), "placement 'home page' must be"),
    (dict(kind="filter", where="price > 1", until="next week"), "until 'next week' is not a date"),
    (dict(kind="promote", where="price > 1"), "Unknown rule kind 'promote'. Kinds: pin, boost, bury, filter"),
])
def test_a_rule_that_cannot_work_is_refused_with_the_reason(eng, args, says):
    kind = args.pop("kind")
    with pytest.raises(EngineError) as caught:
        eng.add_rule(kind, **args)
    assert says in str(caught.value)
    assert eng.rules() == []


def test_the_explanation_records_the_rules(eng, db_path):
    ranked = ids(eng.recommend("user004", 10))
    pinned = eng.add_rule("pin", ranked[8], position=1)
    boosted = eng.add_rule("boost", where=f'item_id = "{ranked[6]}"', weight=2)
    trace = eng.trace("user004", 10)
    as_data = trace.to_dict()
    assert as_data["rules"][ranked[8]] == [f"pinned by rule {pinned.id}"]
    assert as_data["rules"][ranked[6]] == [f"boosted by rule {boosted.id}"]
    assert {"item_id": ranked[8], "ranked": 9, "shown": 1} in as_data["moved"]
    recs = eng.recommend("user004", 10)
    assert recs[0].to_dict()["rules"] == [f"pinned by rule {pinned.id}"]
    result = CliRunner().invoke(cli, ["--db", str(db_path), "recommend", "user004", "--explain"])
    assert result.exit_code == 0, result.output
    assert f"{ranked[8]} from #9 to #1 (pinned by rule {pinned.id})" in result.output
    assert f"boosted by rule {boosted.id}" in result.output
    table = CliRunner().invoke(cli, ["--db", str(db_path), "recommend", "user004", "-n", "3"])
    assert f"[pinned by rule {pinned.id}]" in table.output


# -- the commands -------------------------------------------------------------------------

def run(db, *args):
    return CliRunner().invoke(cli, ["--db", str(db), *args])


def test_rules_commands_add_list_and_remove(db_path):
    added = [run(db_path, "rules", "add", "pin", "g2-i18", "--position", "2", "--placement", "home",
                 "--until", "2099-12-24"),
             run(db_path, "rules", "add", "boost", "--where", 'brand = "Acme"', "--weight", "5"),
             run(db_path, "rules", "add", "bury", "--where", 'tags contains "winter"', "--weight", "2.5"),
             run(db_path, "rules", "add", "filter", "--where", "price > 200"),
             run(db_path, "rules", "add", "pin", shop.OUT_OF_STOCK, "--position", "1")]
    for result in added:
        assert result.exit_code == 0, result.output
    assert added[0].output.startswith("Rule 1 added: pin g2-i18 at 2 on home, until 2099-12-24.")
    assert "Note: rule 5 is not shown: the item is out of stock" in added[4].output
    listed = CliRunner().invoke(cli, ["--db", str(db_path), "rules", "list"], env={"COLUMNS": "160"})
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if "│" in line]
    assert [[cell.strip() for cell in line.split("│")[1:7]] for line in lines] == [
        ["1", "pin", "g2-i18 at 2", "home", "2099-12-24", "active"],
        ["2", "boost", 'brand = "Acme" by 5', "all", "", "active"],
        ["3", "bury", 'tags contains "winter" by 2.5', "all", "", "active"],
        ["4", "filter", "price > 200", "all", "", "active"],
        ["5", "pin", f"{shop.OUT_OF_STOCK} at 1", "all", "",
         "not shown: the item is out of stock (stock wins over a pin)"]]
    rows = json.loads(run(db_path, "rules", "list", "--json").output)
    assert [(r["id"], r["kind"], r["status"]) for r in rows] == [
        (1, "pin", "active"), (2, "boost", "active"), (3, "bury", "active"), (4, "filter", "active"),
        (5, "pin", "not shown")]
    assert rows[0]["until"] == "2099-12-24" and rows[0]["placement"] == "home" and rows[1]["weight"] == 5
    assert [r["id"] for r in json.loads(run(db_path, "rules", "list", "--placement", "cart", "--json").output)] \
        == [2, 3, 4, 5]
    removed = run(db_path, "rules", "remove", "2")
    assert removed.exit_code == 0 and "Rule 2 removed (boost brand = \"Acme\" by 5)." in removed.output
    assert [r["id"] for r in json.loads(run(db_path, "rules", "list", "--json").output)] == [1, 3, 4, 5]
    shown = json.loads(run(db_path, "recommend", "user004", "--placement", "home", "--json").output)
    assert shown[1]["item_id"] == "g2-i18" and shown[1]["rules"] == ["pinned by rule 1"]


def test_rules_commands_say_what_is_wrong(db_path):
    bad = run(db_path, "rules", "add", "boost", "--where", "price >> 3", "--weight", "2")
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "Invalid condition at position 8: expected a number after 'price >'" in bad.output
    assert "  price >> 3\n" in bad.output and "         ^" in bad.output
    missing = run(db_path, "rules", "remove", "7")
    assert missing.exit_code == 1 and "There is no rule 7. Rules: none" in missing.output
    assert "No rules." in run(db_path, "rules", "list").output
