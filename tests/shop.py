"""A small synthetic shop with real structure, for engine and CLI tests.

Three taste groups of users; each group mostly buys from its own category of 20 items,
with a few popular items per category. One item is out of stock (a popular one, so a
missing stock filter would show), and some events name an item that is not in the
catalogue. Deterministic for a given seed; training on it takes about a second."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from engine import Event, Item

T0 = 1_700_000_000.0
DAY = 86_400.0
GROUPS = 3
PER_GROUP = 20
OUT_OF_STOCK = "g0-i00"   # the most popular item of group 0
NOT_IN_CATALOGUE = "ghost"


def item_id(group: int, i: int) -> str:
    return f"g{group}-i{i:02d}"


def catalogue() -> list[Item]:
    return [Item(item_id(g, i), title=f"Item {i} of group {g}", category=f"cat{g}",
                 price=10.0 + i, in_stock=item_id(g, i) != OUT_OF_STOCK)
            for g in range(GROUPS) for i in range(PER_GROUP)]


def events(n_users: int = 200, per_user: int = 15, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, PER_GROUP + 1) ** 0.8
    popularity /= popularity.sum()
    out = []
    for u in range(n_users):
        group = u % GROUPS
        user = f"user{u:03d}"
        t = T0 + rng.uniform(0, 20) * DAY
        for _ in range(per_user):
            t += rng.uniform(600, 2 * DAY)
            g = group if rng.random() < 0.85 else int(rng.integers(GROUPS))
            item = item_id(g, int(rng.choice(PER_GROUP, p=popularity)))
            kind = str(rng.choice(["view", "cart", "purchase"], p=[0.6, 0.2, 0.2]))
            out.append(Event(user, item, kind, round(t, 3)))
        if u % 10 == 0:
            out.append(Event(user, NOT_IN_CATALOGUE, "purchase", round(t + 60, 3)))
    return out


def write_csv(folder: Path, n_users: int = 200, per_user: int = 15) -> tuple[Path, Path]:
    """items.csv (item_id,title,category,price,in_stock) and events.csv
    (user_id,item_id,kind,timestamp) of the same shop."""
    folder.mkdir(parents=True, exist_ok=True)
    items_csv, events_csv = folder / "items.csv", folder / "events.csv"
    with open(items_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "category", "price", "in_stock"])
        for it in catalogue():
            w.writerow([it.item_id, it.title, it.category, f"{it.price:.2f}",
                        "yes" if it.in_stock else "no"])
    with open(events_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "kind", "timestamp"])
        for e in events(n_users, per_user):
            w.writerow([e.user_id, e.item_id, e.kind, repr(e.ts)])
    return items_csv, events_csv
