"""The helpers `engine` exports for plugins (recent anchors, kind verbs, item text) and the
catalogue a `Dataset` carries: what a plugin author relies on, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import (
    TEXT_FIELDS, Anchor, Dataset, Event, Interaction, Item, Query, User, item_text, kind_verb,
    recent_anchors,
)
from engine.db import open_db
from engine.store import Store

WEIGHTS = {"view": 1.0, "cart": 4.0, "purchase": 8.0}


def history(*steps: tuple[str, str]) -> tuple[Interaction, ...]:
    """(item, kind) steps, oldest first."""
    return tuple(Interaction(item, kind, float(t)) for t, (item, kind) in enumerate(steps))


# -- recent_anchors --------------------------------------------------------------------

def test_anchors_are_distinct_items_newest_first_with_decay_and_the_strongest_kind():
    q = Query(history=history(("a", "purchase"), ("b", "view"), ("a", "view"), ("c", "cart")))
    got = recent_anchors(q, WEIGHTS, limit=10, decay=0.5)
    # newest first: c (pos 0), a (pos 1, last met in a view but bought before), b (pos 2)
    assert got == [Anchor("c", 4.0, "cart"), Anchor("a", 0.5 * 8.0, "purchase"),
                   Anchor("b", 0.25 * 1.0, "view")]


def test_anchors_limit_counts_distinct_items():
    q = Query(history=history(("a", "view"), ("b", "view"), ("b", "cart"), ("c", "view")))
    assert [a.item_id for a in recent_anchors(q, WEIGHTS, limit=2)] == ["c", "b"]


def test_relative_anchors_divide_by_the_strongest_kind_weight():
    q = Query(history=history(("a", "purchase"), ("b", "cart")))
    got = recent_anchors(q, WEIGHTS, limit=5, decay=0.9, relative=True)
    assert [(a.item_id, a.weight) for a in got] == [("b", 4.0 / 8.0), ("a", 0.9 * 8.0 / 8.0)]


def test_anchors_without_kind_weights_weigh_recency_only_and_unknown_kinds_weigh_one():
    q = Query(history=history(("a", "purchase"), ("b", "wishlist")))
    assert [a.weight for a in recent_anchors(q, limit=5, decay=0.6)] == [1.0, 0.6]
    assert recent_anchors(q, WEIGHTS, limit=5)[0] == Anchor("b", 1.0, "wishlist")


def test_the_latest_of_equally_strong_events_names_the_kind():
    q = Query(history=history(("a", "view"), ("a", "click")))
    assert recent_anchors(q, {"view": 1.0, "click": 1.0}, limit=5) == [Anchor("a", 1.0, "click")]


def test_an_item_query_has_that_item_as_its_one_anchor():
    q = Query(item_id="x", history=history(("a", "purchase")))
    assert recent_anchors(q, WEIGHTS, limit=5, decay=0.5, relative=True) == [Anchor("x", 1.0, "")]
    assert recent_anchors(Query(), WEIGHTS, limit=5) == []


# -- kind_verb -------------------------------------------------------------------------

@pytest.mark.parametrize("kind, shoppers, you, log", [
    ("purchase", "bought", "bought", "bought"),
    ("cart", "added", "added to your cart", "carted"),
    ("view", "viewed", "viewed", "viewed"),
    ("click", "viewed", "viewed", "clicked"),
    ("rating", "rated", "rated", "rated"),
])
def test_kind_verbs(kind, shoppers, you, log):
    assert kind_verb(kind) == kind_verb(kind, "shoppers") == shoppers
    assert kind_verb(kind, "you") == you
    assert kind_verb(kind, "log") == log


def test_a_kind_without_a_verb_gives_the_default_or_the_kind():
    assert kind_verb("wishlist", "shoppers", "chose") == "chose"
    assert kind_verb("wishlist", "log") == "wishlist"
    assert kind_verb("", "you", "viewed") == "viewed"


# -- item_text -------------------------------------------------------------------------

def test_item_text_joins_the_non_empty_fields_in_order():
    item = Item("p1", title="Trail  Shoe", category="Shoes", brand="", tags=("waterproof", "grip"),
                description="Light.\nFast.")
    assert TEXT_FIELDS == ("title", "category", "brand", "tags", "description")
    assert item_text(item) == "Trail Shoe. Shoes. waterproof grip. Light. Fast."
    assert item_text(item, ("description", "title")) == "Light. Fast.. Trail Shoe"
    assert item_text(item, ("brand",)) == ""
    assert item_text(Item("p2")) == ""


# -- Dataset.catalogue -----------------------------------------------------------------

def test_dataset_catalogue_rows_follow_item_ids():
    items = [Item("b", brand="Acme", price=12.5, tags=("red",), category="hats",
                  attrs={"size": "M"}, title="Red hat"),
             Item("a", brand="Bolt", in_stock=False)]
    data = Dataset.from_arrays(["u1", "u2", "u2"], ["a", "ghost", "b"], ["view", "view", "cart"],
                               [1, 2, 3], catalogue=items)
    assert data.item_ids.tolist() == ["a", "b", "ghost"]
    cat = data.catalogue
    assert len(cat) == 3 and cat[1].brand == "Acme" and data.item("b").price == 12.5
    assert cat.brands.tolist() == ["Bolt", "Acme", ""]
    assert cat.categories.tolist() == ["", "hats", ""]
    assert cat.in_stock.tolist() == [False, True, False]  # "ghost" is in events only
    assert cat.known.tolist() == [True, True, False]
    assert np.isnan(cat.prices[[0, 2]]).all() and cat.prices[1] == 12.5
    assert cat.tags == [(), ("red",), ()] and cat.attrs[1] == {"size": "M"}
    assert cat.text(1) == "Red hat. hats. Acme. red"
    assert data.item("ghost") is None and data.item("nowhere") is None
    assert data.in_stock.tolist() == cat.in_stock.tolist()
    assert data.categories.tolist() == cat.categories.tolist()
    assert data.subset(data.ts < 2).catalogue is cat  # every split shares it


def test_dataset_without_catalogue_fields_has_empty_rows():
    data = Dataset.from_arrays(["u1"], ["a"], ["view"], [1.0], categories=np.array(["hats"]))
    assert data.item("a") == Item("a", category="hats") and data.catalogue.brands.tolist() == [""]
    assert data.user_attrs == {}


def test_dataset_from_the_store_reads_brand_and_shopper_attributes(tmp_path):
    store = Store(open_db(tmp_path / "shop.db"))
    store.write([Item("p1", title="Tent", brand="Alpine", price=199.0, tags=("camping",)),
                 Item("p2", title="Pan", brand="Chef", in_stock=False),
                 User("u1", {"segment": "hiker"}),
                 Event("u1", "p1", "purchase", 1_700_000_000.0),
                 Event("u2", "p2", "view", 1_700_000_100.0)])
    data = store.dataset()
    assert data.item("p1").brand == "Alpine"
    assert data.catalogue.brands[data.item_index["p2"]] == "Chef"
    assert data.catalogue.in_stock.tolist() == data.in_stock.tolist() == [True, False]
    assert data.user_attrs == {"u1": {"segment": "hiker"}}
    assert math.isclose(data.catalogue.prices[0], 199.0)
