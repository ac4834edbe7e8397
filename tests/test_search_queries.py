"""benchmarks/search_queries.py: search cases with ground truth from the demo shop."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from benchmarks.search_queries import KINDS, PARAPHRASES, SearchCase, demo_queries, noun
from engine import Item
from plugins.demo import DemoSource


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return [r for r in DemoSource().read(None) if isinstance(r, Item)]


@pytest.fixture(scope="module")
def cases(items) -> list[SearchCase]:
    return demo_queries(items)


def test_queries_are_deterministic(items, cases):
    assert demo_queries(items) == cases
    assert demo_queries(list(reversed(items))) == cases
    assert 60 <= len(cases) <= 120
    assert len({c.query for c in cases}) == len(cases)


def test_every_kind_is_asked_several_times(cases):
    counts = Counter(c.kind for c in cases)
    assert set(counts) == set(KINDS)
    assert all(counts[k] >= 5 for k in KINDS), counts
    assert [c.kind for c in cases] == sorted((c.kind for c in cases), key=KINDS.index)


def test_every_case_has_relevant_items_from_the_catalogue(items, cases):
    ids = {i.item_id for i in items}
    for case in cases:
        assert case.relevant, case
        assert isinstance(case.relevant, frozenset)
        assert case.relevant <= ids, case


def test_relevance_follows_the_facets(items, cases):
    by_id = {i.item_id: i for i in items}
    of_category = Counter(i.category for i in items)
    for case in cases:
        found = [by_id[r] for r in case.relevant]
        if case.kind == "exact-title":
            assert {i.title for i in found} == {case.query}
            assert len(found) == sum(i.title.lower() == case.query.lower() for i in items)
        elif case.kind == "sku":
            assert case.relevant == {case.query}
        elif case.kind == "category":
            (category,) = {i.category for i in found}
            assert noun(category) == case.query and len(found) == of_category[category]
        elif case.kind == "brand+category":
            (brand,) = {i.brand for i in found}
            (category,) = {i.category for i in found}
            assert case.query == f"{brand} {noun(category)}"
            assert len(found) == sum(i.brand == brand and i.category == category for i in items)
        elif case.kind == "use":
            use = case.query.removeprefix("for ")
            assert case.relevant == {i.item_id for i in items if i.attrs["use"] == use}
        elif case.kind == "facet":
            categories = {i.category for i in found}
            assert case.query.lower().endswith(noun(sorted(categories)[0]).split()[-1])
            assert any(all(str(i.attrs.get(f, "")).lower() in case.query.lower() for i in found)
                       for f in ("material", "colour", "spec", "model"))


def test_the_examples_from_the_issue(items, cases):
    by_query = {c.query: c for c in cases}
    by_id = {i.item_id: i for i in items}
    socks = [by_id[r] for r in by_query["merino wool socks"].relevant]
    assert {i.category for i in socks} == {"Hiking Socks", "Running Socks"}
    assert all(i.attrs["material"] == "merino wool" for i in socks)
    boots = [by_id[r] for r in by_query["waterproof hiking boots"].relevant]
    assert all(i.category == "Hiking Boots" and i.attrs["spec"] == "Waterproof" for i in boots)
    halo = [by_id[r] for r in by_query["Halo camera"].relevant]
    assert all(i.category == "Cameras" and i.attrs["model"] == "Halo" for i in halo)
    coffee = by_query["an appliance that brews cafe-quality drinks in my kitchen"]
    assert {by_id[r].category for r in coffee.relevant} == {"Coffee Machines"}


STOPWORDS = {"a", "an", "the", "to", "for", "of", "my", "in", "on", "and", "with", "at", "i",
             "if", "from", "up", "off", "out", "all", "be", "one", "two"}


def _stems(text: str) -> set[str]:
    """Lower-case words with a crude suffix strip, so 'frying' meets 'fry'."""
    out = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in STOPWORDS:
            continue
        for suffix in ("ing", "ers", "er", "es", "ed", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        out.add(word)
    return out


def test_paraphrases_share_no_word_with_their_answers(items, cases):
    by_id = {i.item_id: i for i in items}
    paraphrases = [c for c in cases if c.kind == "paraphrase"]
    assert len(paraphrases) == len(PARAPHRASES)  # every category in the table exists
    for case in paraphrases:
        words = set()
        for r in case.relevant:
            words |= _stems(by_id[r].title) | _stems(by_id[r].category)
        assert not _stems(case.query) & words, (case.query, _stems(case.query) & words)


@pytest.mark.parametrize("category, expected", [
    ("Sleeping Bags", "sleeping bag"), ("Mice", "mouse"), ("Hiking Socks", "hiking socks"),
    ("Chef's Knives", "chef's knife"), ("Camera Lenses", "camera lens"), ("Boot Care", "boot care"),
    ("Headphones", "headphones"), ("USB-C Hubs", "usb-c hub"),
])
def test_category_nouns(category, expected):
    assert noun(category) == expected


def test_a_catalogue_without_facets_still_gives_cases():
    items = [Item(f"x{i}", title=f"Thing {i}", category="Widgets" if i % 2 else "Gadgets",
                  brand="Acme") for i in range(10)]
    cases = demo_queries(items)
    assert {c.kind for c in cases} == {"exact-title", "sku", "category", "brand+category"}
    assert all(c.relevant for c in cases)
