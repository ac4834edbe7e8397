"""Synthetic shop histories with structure, for the benchmarks. Pure numpy, deterministic.

A shop has items in categories ("taste clusters") with Zipf-like popularity, and users who
each like one to three categories: 85% of a user's events fall in their categories (popular
items more often), 15% anywhere (global popularity). User activity is log-normal, every user
has at least one event. Kinds follow a shop funnel: ~75% view, ~17% cart, ~8% purchase
(value = quantity). Times are whole seconds spread over 2024, in order.

Ids look like a shop's: customers `cus_4821937`, items `GAR-04821` (category code + number).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

KINDS = ("view", "cart", "purchase")
KIND_SHARE = (0.75, 0.17, 0.08)
START = 1_704_067_200  # 2024-01-01T00:00:00Z
SPAN = 366 * 86_400

CATEGORIES = (
    "kitchen", "garden", "outdoor", "toys", "books", "audio", "lighting", "bedding", "bath",
    "office", "pets", "cycling", "running", "camping", "tea", "coffee", "baking", "crafts",
    "jewellery", "watches", "bags", "shoes", "knitwear", "denim", "skincare", "haircare",
    "fragrance", "tools", "paint", "storage", "rugs", "ceramics", "glassware", "stationery",
    "games", "puzzles", "plants", "seeds", "candles", "prints", "frames", "mirrors", "clocks",
    "cushions", "throws", "curtains", "hats", "gloves", "socks", "scarves",
)
ADJECTIVES = ("Classic", "Everyday", "Organic", "Handmade", "Compact", "Deluxe", "Vintage",
              "Nordic", "Rustic", "Modern", "Travel", "Premium", "Recycled", "Bright", "Soft")
NOUNS = ("Set", "Kit", "Pack", "Bundle", "Edition", "Collection", "Essentials", "Basics",
         "Starter", "Gift Box", "Mini", "Pro")
BRANDS = ("Alder & Co", "Brightwell", "Cobble", "Dunmore", "Elkin", "Fernside", "Gale",
          "Hollis", "Ivywood", "Juniper", "Kestrel", "Larkspur", "Marlow", "Northby",
          "Oakhurst", "Pellow", "Quill", "Redfern", "Saltmarsh", "Tamsin")


@dataclass
class Shop:
    user_ids: list[str]         # (n_users,)
    item_ids: list[str]         # (n_items,)
    item_category: np.ndarray   # (n_items,) index into categories
    categories: list[str]
    users: np.ndarray           # (n_events,) index into user_ids
    items: np.ndarray           # (n_events,) index into item_ids
    kinds: np.ndarray           # (n_events,) index into KINDS
    ts: np.ndarray              # (n_events,) int64 epoch seconds, non-decreasing
    values: np.ndarray          # (n_events,) float64, nan when absent
    seed: int

    @property
    def n_events(self) -> int:
        return len(self.users)


def make_shop(n_events: int, n_users: int, n_items: int, seed: int = 0,
              explore: float = 0.15) -> Shop:
    if n_events < n_users:
        raise ValueError("need at least one event per user")
    rng = np.random.default_rng(seed)
    n_clusters = int(min(len(CATEGORIES) * 4, max(8, n_items // 400)))
    categories = [CATEGORIES[c % len(CATEGORIES)] + (f" {c // len(CATEGORIES) + 1}"
                                                     if c >= len(CATEGORIES) else "")
                  for c in range(n_clusters)]

    # Items: uneven category sizes, Zipf popularity over a random order of the catalogue.
    size_share = rng.dirichlet(np.full(n_clusters, 2.0))
    item_category = rng.choice(n_clusters, size=n_items, p=size_share)
    popularity = np.empty(n_items)
    popularity[rng.permutation(n_items)] = 1.0 / np.arange(1, n_items + 1) ** 1.0
    global_cdf = np.cumsum(popularity) / popularity.sum()

    # Per-category CDFs laid end to end: category c spans (c, c + 1], so one searchsorted
    # draws an item of any category.
    by_category = np.argsort(item_category, kind="stable")
    cat_of_sorted = item_category[by_category]
    w = popularity[by_category]
    totals = np.bincount(cat_of_sorted, weights=w, minlength=n_clusters)
    within = np.cumsum(w) - np.concatenate([[0.0], np.cumsum(totals)[:-1]])[cat_of_sorted]
    stacked_cdf = cat_of_sorted + within / np.maximum(totals[cat_of_sorted], 1e-300)
    present = np.flatnonzero(totals > 0)  # categories that received at least one item

    # Users: 1-3 liked categories (popular categories liked more), log-normal activity.
    cat_pop = 1.0 / np.arange(1, len(present) + 1) ** 0.7
    liked = present[rng.choice(len(present), size=(n_users, 3), p=cat_pop / cat_pop.sum())]
    taste = np.cumsum(rng.dirichlet(np.full(3, 0.5), size=n_users), axis=1)
    activity = rng.lognormal(0.0, 1.1, size=n_users)
    counts = 1 + rng.multinomial(n_events - n_users, activity / activity.sum())
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)

    # Events: a liked category (or anywhere), then an item by popularity.
    r = rng.random(n_events)
    pick = (r > taste[users, 0]).astype(np.int64) + (r > taste[users, 1])
    category = liked[users, np.minimum(pick, 2)]
    in_taste = np.minimum(np.searchsorted(stacked_cdf, category + rng.random(n_events),
                                          side="right"), n_items - 1)
    anywhere = np.minimum(np.searchsorted(global_cdf, rng.random(n_events), side="right"),
                          n_items - 1)
    items = np.where(rng.random(n_events) < explore, anywhere, by_category[in_taste])

    kinds = rng.choice(len(KINDS), size=n_events, p=KIND_SHARE).astype(np.int8)
    values = np.where(kinds == KINDS.index("purchase"),
                      rng.integers(1, 4, size=n_events).astype(np.float64), np.nan)
    ts = START + rng.integers(0, SPAN, size=n_events)
    order = np.argsort(ts, kind="stable")

    user_numbers = rng.choice(9_000_000, size=n_users, replace=False) + 1_000_000
    item_numbers = rng.choice(90_000, size=n_items, replace=False) + 10_000 \
        if n_items <= 90_000 else np.arange(n_items) + 100_000
    codes = [c[:3].upper() for c in categories]
    return Shop(
        user_ids=[f"cus_{n}" for n in user_numbers.tolist()],
        item_ids=[f"{codes[c]}-{n:05d}" for c, n in zip(item_category.tolist(),
                                                         item_numbers.tolist())],
        item_category=item_category, categories=categories,
        users=users[order], items=items[order].astype(np.int64), kinds=kinds[order],
        ts=ts[order], values=values[order], seed=seed,
    )


def _catalogue_columns(shop: Shop):
    rng = np.random.default_rng(shop.seed + 1)
    n = len(shop.item_ids)
    adjective = rng.integers(0, len(ADJECTIVES), n).tolist()
    noun = rng.integers(0, len(NOUNS), n).tolist()
    brand = rng.integers(0, len(BRANDS), n).tolist()
    price = np.round(rng.lognormal(3.2, 0.8, n), 2).tolist()
    in_stock = (rng.random(n) > 0.05).tolist()
    for i, item_id in enumerate(shop.item_ids):
        category = shop.categories[shop.item_category[i]]
        title = f"{ADJECTIVES[adjective[i]]} {category.title()} {NOUNS[noun[i]]}"
        yield item_id, title, category, BRANDS[brand[i]], price[i], in_stock[i]


def write_items_csv(shop: Shop, path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("item_id,title,category,brand,price,in_stock\n")
        f.writelines(f"{i},{t},{c},{b},{p:.2f},{'yes' if s else 'no'}\n"
                     for i, t, c, b, p, s in _catalogue_columns(shop))
    return path


def write_events_csv(shop: Shop, path: str | Path, chunk: int = 200_000) -> Path:
    """user_id,item_id,kind,timestamp,value with ISO-8601 UTC times, as shop exports have."""
    path = Path(path)
    uid, iid = shop.user_ids, shop.item_ids
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("user_id,item_id,kind,timestamp,value\n")
        for start in range(0, shop.n_events, chunk):
            part = slice(start, start + chunk)
            times = np.datetime_as_string(shop.ts[part].astype("datetime64[s]"), unit="s")
            values = shop.values[part]
            value_text = np.where(np.isnan(values), "",
                                  np.nan_to_num(values).astype(np.int64).astype(str))
            f.writelines(
                f"{uid[u]},{iid[i]},{KINDS[k]},{t}Z,{v}\n" for u, i, k, t, v in zip(
                    shop.users[part].tolist(), shop.items[part].tolist(),
                    shop.kinds[part].tolist(), times.tolist(), value_text.tolist()))
    return path


def catalogue_records(shop: Shop):
    from engine import Item

    return [Item(item_id=i, title=t, category=c, brand=b, price=p, in_stock=s)
            for i, t, c, b, p, s in _catalogue_columns(shop)]


def event_records(shop: Shop, chunk: int = 500_000) -> Iterator:
    """Event objects without event ids (the store derives stable ids, as for a CSV), made a
    chunk at a time (20 million events as Python lists at once took gigabytes)."""
    from engine import Event

    uid, iid = shop.user_ids, shop.item_ids
    for start in range(0, shop.n_events, chunk):
        part = slice(start, start + chunk)
        values = [None if v != v else v for v in shop.values[part].tolist()]
        for u, i, k, t, v in zip(shop.users[part].tolist(), shop.items[part].tolist(),
                                 shop.kinds[part].tolist(),
                                 shop.ts[part].astype(np.float64).tolist(), values):
            yield Event(uid[u], iid[i], KINDS[k], t, v)
