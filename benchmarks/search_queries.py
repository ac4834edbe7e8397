"""Search queries with ground truth from the demo shop's facets, for measuring search.

`demo_queries(items)` turns the catalogue as imported from the `demo` source (category,
brand, and the generator's facets in `attrs`: department, model, spec, use, material,
colour) into about a hundred `SearchCase`s of seven kinds. The same items, in any order,
give the same cases.

How relevance is judged: binary, from the facets alone, never from the text, so that a
lexical and a semantic signal are measured against the same answer.

- ``exact-title``: a product's full name; relevant: the product(s) with exactly that
  title (case aside). A lexical signal should win.
- ``sku``: an item id ("p00421"); relevant: that item.
- ``category``: a category by name in the singular ("sleeping bag", "mouse"); relevant:
  every item of that category. Accessories named after a main product ("laptop sleeve"
  for "laptop") are not relevant.
- ``facet``: a facet value and a category ("merino wool socks", "waterproof hiking
  boots", "red bike helmet", "Halo camera", Halo being a model line); relevant: the items
  of the category(ies) whose material, colour, spec or model is that value.
- ``paraphrase``: a need in other words, from a hand-made table (`PARAPHRASES`) whose
  queries share no word with any title or category name of their answers ("an appliance
  that brews cafe-quality drinks in my kitchen" -> Coffee Machines); relevant: every item
  of the categories the table names.
- ``brand+category``: a brand and a category ("Kairo camera"); relevant: the items of
  that brand in that category.
- ``use``: "for <use>" ("for trail running"); relevant: every item whose `use` facet is
  that use, whatever its category.

Only cases with at least one relevant item are returned. Which titles, ids, categories and
facet values are asked about is chosen by a salted sha256 of their names, so it does not
depend on the order of `items` or on Python's hash seed.

    python benchmarks/search_queries.py          # the cases for the default demo shop
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

from engine import Item

KINDS = ("exact-title", "sku", "category", "facet", "paraphrase", "brand+category", "use")

# How many cases of each generated kind (paraphrases: the whole table).
EXACT_TITLES = 12
SKUS = 8
CATEGORIES_PER_DEPARTMENT = 2
FACETS_PER_FIELD = 3          # material, colour, spec, model
BRAND_CATEGORIES = 12
USES = 10
MIN_FACET_ITEMS = 2           # generated facet and brand+category cases name >= 2 items

# Hand-made facet queries (query, categories, attrs field, value).
FACETS = (
    ("merino wool socks", ("Hiking Socks", "Running Socks"), "material", "merino wool"),
    ("waterproof hiking boots", ("Hiking Boots",), "spec", "Waterproof"),
    ("Halo camera", ("Cameras",), "model", "Halo"),
)

# Needs in other words -> the categories that meet them. No query shares a word with a
# title or category name of its answers (tests/test_search_queries.py checks).
PARAPHRASES = (
    ("an appliance that brews cafe-quality drinks in my kitchen", ("Coffee Machines",)),
    ("keep my toes warm and dry on the path", ("Hiking Socks", "Hiking Boots")),
    ("a shelter to spend the night under the stars", ("Tents",)),
    ("stay cosy through freezing nights outdoors", ("Sleeping Bags",)),
    ("photograph faraway birds and animals", ("Cameras", "Camera Lenses")),
    ("more room for photos and clips", ("Memory Cards",)),
    ("chop onions and herbs quickly", ("Chef's Knives",)),
    ("listen to podcasts on a crowded train", ("Headphones",)),
    ("spin my LP collection", ("Turntables",)),
    ("a two-wheeler to ride to the office", ("Bikes",)),
    ("protect my head if I fall off", ("Bike Helmets",)),
    ("stop thieves taking my two-wheeler", ("Bike Locks",)),
    ("be visible to traffic after dark", ("Bike Lights",)),
    ("something to sip from on the go", ("Water Bottles", "Hydration Bladders")),
    ("a grippy surface for sun salutations", ("Yoga Mats",)),
    ("type all day with clicky switches", ("Keyboards",)),
    ("a bigger screen for spreadsheets", ("Monitors",)),
    ("a portable computer for university lectures", ("Laptops",)),
    ("silky microfoam for a latte", ("Milk Frothers",)),
    ("sear a steak and scramble eggs", ("Cookware",)),
    ("remove limescale from appliances", ("Descaling Kits",)),
    ("something to carry my gear on a day out", ("Backpacks",)),
    ("keep my computer at eye level", ("Laptop Stands",)),
    ("grab hot trays without burning my fingers", ("Oven Gloves",)),
)

_IRREGULAR = {"knives": "knife", "mice": "mouse", "lenses": "lens"}
_PAIRS = {"socks", "boots", "shoes", "gloves", "poles", "beans", "stakes", "headphones"}


@dataclass(frozen=True)
class SearchCase:
    query: str
    relevant: frozenset[str]  # item ids
    kind: str                 # one of KINDS


def noun(category: str) -> str:
    """How a shopper names one of a category: 'Sleeping Bags' -> 'sleeping bag',
    'Mice' -> 'mouse', 'Hiking Socks' -> 'hiking socks'."""
    *head, last = category.lower().split()
    if last in _IRREGULAR:
        last = _IRREGULAR[last]
    elif last.endswith("s") and not last.endswith("ss") and last not in _PAIRS:
        last = last[:-1]
    return " ".join([*head, last])


T = TypeVar("T")


def _pick(things: Iterable[T], n: int, salt: str, key: Callable[[T], str] = str) -> list[T]:
    """n of `things`, the same ones whatever their order (ties broken by the key)."""
    def rank(thing: T) -> tuple[str, str]:
        k = key(thing)
        return hashlib.sha256(f"{salt}:{k}".encode()).hexdigest(), k
    return sorted(things, key=rank)[:n]


def _case(query: str, relevant: Iterable[str], kind: str) -> SearchCase:
    return SearchCase(query, frozenset(relevant), kind)


def demo_queries(items: Sequence[Item]) -> list[SearchCase]:
    """About a hundred search cases for the demo catalogue `items`, grouped by kind in
    the order of KINDS; every case has at least one relevant item (see the module doc)."""
    by_category: dict[str, set[str]] = defaultdict(set)
    by_title: dict[str, set[str]] = defaultdict(set)
    by_use: dict[str, set[str]] = defaultdict(set)
    by_facet: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # category, field, value
    by_brand: dict[tuple[str, str], set[str]] = defaultdict(set)
    departments: dict[str, set[str]] = defaultdict(set)
    for item in items:
        attrs = item.attrs or {}
        if item.category:
            by_category[item.category].add(item.item_id)
            departments[attrs.get("department", "")].add(item.category)
            if item.brand:
                by_brand[item.brand, item.category].add(item.item_id)
            for field in ("material", "colour", "spec", "model"):
                if attrs.get(field):
                    by_facet[item.category, field, str(attrs[field])].add(item.item_id)
        if item.title:
            by_title[item.title.lower()].add(item.item_id)
        if attrs.get("use"):
            by_use[str(attrs["use"])].add(item.item_id)
    titled = {i.item_id: i.title for i in items if i.title}

    cases: list[SearchCase] = []
    for item_id in _pick(titled, EXACT_TITLES, "exact-title"):
        cases.append(_case(titled[item_id], by_title[titled[item_id].lower()], "exact-title"))
    for item_id in _pick((i.item_id for i in items), SKUS, "sku"):
        cases.append(_case(item_id, {item_id}, "sku"))
    for department in sorted(departments):
        for category in _pick(departments[department], CATEGORIES_PER_DEPARTMENT, "category"):
            cases.append(_case(noun(category), by_category[category], "category"))

    for query, categories, field, value in FACETS:
        relevant = set().union(*(by_facet.get((c, field, value), set()) for c in categories))
        if relevant:
            cases.append(_case(query, relevant, "facet"))
    asked = {(c, f, v) for _, cs, f, v in FACETS for c in cs}
    for field in ("material", "colour", "spec", "model"):
        keys = [k for k, ids in by_facet.items()
                if k[1] == field and k not in asked and len(ids) >= MIN_FACET_ITEMS]
        for category, _, value in _pick(keys, FACETS_PER_FIELD, f"facet:{field}", key=repr):
            # Model lines keep their capitals ("Halo camera"); other values read as words.
            shown = value if field == "model" else value.lower()
            cases.append(_case(f"{shown} {noun(category)}",
                               by_facet[category, field, value], "facet"))

    for query, categories in PARAPHRASES:
        relevant = set().union(*(by_category.get(c, set()) for c in categories))
        if relevant:
            cases.append(_case(query, relevant, "paraphrase"))

    pairs = [k for k, ids in by_brand.items() if len(ids) >= MIN_FACET_ITEMS]
    chosen: list[tuple[str, str]] = []
    for brand, category in _pick(pairs, len(pairs), "brand+category", key=repr):
        if len(chosen) < BRAND_CATEGORIES and all(brand != b and category != c
                                                  for b, c in chosen):
            chosen.append((brand, category))
    for brand, category in chosen:
        cases.append(_case(f"{brand} {noun(category)}", by_brand[brand, category],
                           "brand+category"))

    for use in _pick(by_use, USES, "use"):
        cases.append(_case(f"for {use}", by_use[use], "use"))
    return cases


def _main() -> None:  # pragma: no cover - a look at the cases, not part of the API
    from collections import Counter

    from plugins.demo import DemoSource

    items = [r for r in DemoSource().read(None) if isinstance(r, Item)]
    cases = demo_queries(items)
    for case in cases:
        print(f"{case.kind:15} {len(case.relevant):4}  {case.query}")
    counts = Counter(c.kind for c in cases)
    print(f"\n{len(cases)} cases: " + ", ".join(f"{k} {counts[k]}" for k in KINDS))


if __name__ == "__main__":
    _main()
