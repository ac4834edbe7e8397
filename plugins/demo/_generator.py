"""The demo shop generator: a catalogue, shoppers with latent tastes, and their sessions.

Pure numpy, no I/O, deterministic for a seed. `generate()` returns arrays (`DemoShop`);
the plugin turns them into records. How the behaviour is made, in short:

- Catalogue: categories from `_vocabulary` in departments, each main category (Cameras)
  with accessory categories (Camera Lenses, Memory Cards). Within a category products get
  a Zipf-like popularity (a few bestsellers, a long tail) and lognormal prices. Every main
  product is linked to 2-4 specific accessories, mostly of its own brand. Cold start: about
  5% of the products were released in the last week and have no events at all; another
  5% were released during the last ten days (more of them towards the end) and have
  events only from their release on.
- Shoppers: a segment sets department weights; on top, each shopper has their own taste
  over categories that drifts a little towards a second taste over the window, a price
  sensitivity and two favourite brands.
- Sessions: a shopper visits on several days. A session browses a category drawn from
  the current taste (or, one time in five, from overall popularity: exploration) and
  often a related one; products are drawn without replacement by popularity, price fit
  and brand affinity. Some views are carted and some carts bought. Buying a main product
  often brings the shopper back within days (or straight away) for its accessories.
- New arrivals: a product released late is featured, so within hours of its release
  shoppers whose taste favours its category (favourite brands more so) visit its page; a
  shopper follows at most one such feature every few days. Once released it is also
  browsed like any product. Many of these visits are their shopper's latest, so the
  evaluation's chronological hold-out finds them unseen: a cold-start slice to measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from . import _vocabulary as vocab

DAY = 86_400.0
DEFAULT_END = datetime(2026, 9, 30, tzinfo=timezone.utc).timestamp()
KINDS = ("view", "cart", "purchase")
VIEW, CART, PURCHASE = 0, 1, 2

NEW_SHARE = 0.05            # products released in the last week: no events (cold start)
LATE_SHARE = 0.05           # products released in the last LATE_DAYS: events after release
LATE_DAYS = 10.0
LATE_SKEW = 3.0             # release = end - LATE_DAYS * u**LATE_SKEW: more towards the end
NEW_ARRIVAL_VISITS = 40.0   # mean visits from the "new arrivals" feature per late product...
NEW_ARRIVAL_DAYS = 0.1      # ...most within hours of the release (mean delay, days)
NEW_ARRIVAL_GAP = 3.0       # days: a shopper follows at most one new arrival per such span
OUT_OF_STOCK = 0.05
ZIPF = 1.3                  # popularity exponent within a category
EXPLORE = 0.2               # sessions that ignore the shopper's taste
DRIFT = 0.35                # share of the taste that has moved by the end of the window
SESSIONS_PER_90_DAYS = 6.5  # mean per shopper
RELATED_BLOCK = 0.35        # sessions that also browse a related category
CART_RATE = 0.16
BUY_RATE = {"main": 0.42, "accessory": 0.5}
FOLLOW_UP = 0.65            # main purchases followed by an accessory visit
FAVOURITE_BRAND = np.log(5.0)

EDITIONS = ("", " II", " III", " IV", " V", " VI")

# Share of sessions starting in each hour (UTC): quiet nights, busy evenings.
HOURS = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.5, 3.5, 4, 4, 3.5, 3.5, 4, 4.5,
                  5.5, 6.5, 7, 6, 4, 2], dtype=float)


@dataclass
class Catalogue:
    item_ids: list[str]
    titles: list[str]
    descriptions: list[str]
    category: np.ndarray          # index into vocab.CATEGORIES
    brand: np.ndarray             # index into brands
    brands: list[str]
    price: np.ndarray
    in_stock: np.ndarray
    stock: np.ndarray
    released: np.ndarray          # epoch seconds
    is_new: np.ndarray            # released in the last week, no events at all
    late: np.ndarray              # released in the last LATE_DAYS, events only after release
    model: list[str]
    spec: list[str]
    material: list[str | None]
    colour: list[str | None]
    use: list[str]
    log_popularity: np.ndarray    # hidden: Zipf within the category
    accessories: list[list[int]]  # per main product: its compatible accessories

    @property
    def n(self) -> int:
        return len(self.item_ids)

    def compatible_with(self) -> list[list[int]]:
        """Per product, the main products it is an accessory of."""
        out: list[list[int]] = [[] for _ in range(self.n)]
        for main, accs in enumerate(self.accessories):
            for acc in accs:
                out[acc].append(main)
        return out


@dataclass
class Shoppers:
    user_ids: list[str]
    segment: list[str]
    country: list[str]
    taste: np.ndarray             # (users, categories) at the start of the window
    taste_later: np.ndarray       # (users, categories) what the taste drifts towards
    price_sensitivity: np.ndarray
    favourite_brands: np.ndarray  # (users, 2) index into brands
    activity: np.ndarray          # expected sessions over the window

    @property
    def n(self) -> int:
        return len(self.user_ids)


@dataclass
class Activity:
    """Events in time order (ties: view before cart before purchase)."""

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray              # index into KINDS
    ts: np.ndarray                # whole epoch seconds


@dataclass
class DemoShop:
    seed: int
    days: int
    end: float
    catalogue: Catalogue
    shoppers: Shoppers
    activity: Activity
    categories: tuple[vocab.CategorySpec, ...] = field(default=vocab.CATEGORIES)


def generate(seed: int = 7, users: int = 5000, items: int = 2000, days: int = 90,
             end: float = DEFAULT_END) -> DemoShop:
    """The whole shop for `seed`. The catalogue depends only on seed and `items`."""
    cat_seq, user_seq, event_seq = np.random.SeedSequence(seed).spawn(3)
    cats = vocab.CATEGORIES
    catalogue = make_catalogue(np.random.Generator(np.random.PCG64(cat_seq)), items, days, end)
    shoppers = make_shoppers(np.random.Generator(np.random.PCG64(user_seq)), users, catalogue,
                             days)
    activity = simulate(np.random.Generator(np.random.PCG64(event_seq)), catalogue, shoppers,
                        days, end)
    return DemoShop(seed, days, end, catalogue, shoppers, activity, cats)


# -- catalogue -------------------------------------------------------------------------------

def _allocate(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Split `total` into integer parts proportional to weights, each at least `minimum`."""
    spare = total - minimum * len(weights)
    raw = spare * weights / weights.sum()
    counts = np.floor(raw).astype(int)
    rest = spare - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    return counts + minimum


def _capitalised(text: str) -> str:
    """'merino wool' -> 'Merino Wool', leaving 'TPU-laminated' alone."""
    return " ".join(w[:1].upper() + w[1:] for w in text.split())


def _in_sentence(noun: str) -> str:
    """'Pop-Up Tent' -> 'pop-up tent', keeping 'SD', 'USB-C', 'microSD' as they are."""
    def lower(part: str) -> str:
        return part.lower() if part[:1].isupper() and part[1:].islower() else part
    return " ".join("-".join(lower(p) for p in word.split("-")) for word in noun.split())


def _plural(noun: str) -> bool:
    last = noun.split()[-1]
    return last.endswith("s") and not last.endswith(("ss", "Lens"))


def _price(p: float) -> float:
    if p < 20:
        return max(2.99, round(p * 2) / 2 - 0.01)
    if p < 200:
        return round(p) - 0.01
    return round(p / 10) * 10 - 0.01


def make_catalogue(rng: np.random.Generator, n_items: int, days: int, end: float) -> Catalogue:
    cats = vocab.CATEGORIES
    depts = {d.name: d for d in vocab.DEPARTMENTS}
    counts = _allocate(n_items, np.array([c.share for c in cats]), minimum=3)
    brands, brand_tier, cat_brands = _brands(rng, depts)

    category = np.repeat(np.arange(len(cats)), counts)
    n = len(category)
    brand = np.empty(n, dtype=np.int64)
    log_pop = np.empty(n)
    price = np.empty(n)
    texts: list[_Text] = []
    seen_titles: set[str] = set()
    start = 0
    for ci, c in enumerate(cats):
        m = int(counts[ci])
        sl = slice(start, start + m)
        start += m
        # A few brands dominate each category.
        bw = 1.0 / np.arange(1, len(cat_brands[ci]) + 1) ** 0.7
        brand[sl] = cat_brands[ci][rng.choice(len(bw), size=m, p=bw / bw.sum())]
        log_pop[sl] = -ZIPF * np.log1p(rng.permutation(m))
        spec_idx = rng.integers(0, len(c.specs), m)
        spec_centre = (len(c.specs) - 1) / 2
        price[sl] = (c.price * brand_tier[brand[sl]] * np.exp(0.15 * (spec_idx - spec_centre))
                     * np.exp(rng.normal(0.0, c.spread, m)))
        texts += _texts(rng, c, depts[c.department], spec_idx, seen_titles)
    price = np.array([_price(p) for p in price])
    is_new, late, released, in_stock, stock = _releases(rng, n, days, end)
    accessories = _accessory_links(rng, category, brand, is_new | late)

    return Catalogue(
        item_ids=[f"p{i:05d}" for i in range(n)], titles=[t.title for t in texts],
        descriptions=[t.description for t in texts], category=category, brand=brand,
        brands=brands, price=price, in_stock=in_stock, stock=stock, released=released,
        is_new=is_new, late=late, model=[t.model for t in texts], spec=[t.spec for t in texts],
        material=[t.material for t in texts], colour=[t.colour for t in texts],
        use=[t.use for t in texts], log_popularity=log_pop, accessories=accessories,
    )


def _brands(rng: np.random.Generator, depts: dict[str, vocab.DepartmentSpec]
            ) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """All brands, each brand's price tier, and per category the brands it sells: a few
    of its department's brands (which therefore span categories) and sometimes a brand
    from another department."""
    brands: list[str] = []
    for d in vocab.DEPARTMENTS:
        for b in d.brands + vocab.CROSS_BRANDS.get(d.name, ()):
            if b not in brands:
                brands.append(b)
    brand_index = {b: i for i, b in enumerate(brands)}
    brand_tier = np.exp(rng.normal(0.0, 0.25, len(brands)))
    cat_brands: list[np.ndarray] = []
    for c in vocab.CATEGORIES:
        home = depts[c.department].brands
        cross = vocab.CROSS_BRANDS.get(c.department, ())
        pool = home + cross
        w = np.array([1.0] * len(home) + [0.35] * len(cross))
        k = min(len(pool), int(rng.integers(3, 6)))
        chosen = rng.choice(len(pool), size=k, replace=False, p=w / w.sum())
        cat_brands.append(np.array([brand_index[pool[j]] for j in chosen]))
    return brands, brand_tier, cat_brands


@dataclass
class _Text:
    """A product's words: its title, description and the attributes they mention."""

    title: str
    description: str
    model: str
    spec: str
    material: str | None
    colour: str | None
    use: str


def _texts(rng: np.random.Generator, c: vocab.CategorySpec, dept: vocab.DepartmentSpec,
           spec_idx: np.ndarray, seen_titles: set[str]) -> list[_Text]:
    """The words of a category's products (one per entry of spec_idx), titles unique
    across the shop (`seen_titles`, updated)."""
    m = len(spec_idx)
    noun_idx = rng.integers(0, len(c.nouns), m)
    model_idx = rng.integers(0, len(dept.models), m)
    use_idx = rng.integers(0, len(c.uses), m)
    feat_idx = rng.integers(0, len(c.features), m)
    adjectives = c.adjectives or dept.adjectives
    adj_idx = rng.integers(0, len(adjectives), m)
    mat_idx = rng.integers(0, max(1, len(c.materials)), m)
    col_idx = rng.integers(0, max(1, len(c.colours)), m)
    out: list[_Text] = []
    for j in range(m):
        noun, spec = c.nouns[noun_idx[j]], c.specs[spec_idx[j]]
        model = dept.models[model_idx[j]]
        material = c.materials[mat_idx[j]] if c.materials else None
        colour = c.colours[col_idx[j]] if c.colours else None
        use = c.uses[use_idx[j]]
        title = c.title.format(model=model, spec=spec, noun=noun,
                               Material=_capitalised(material or ""))
        title = _new_title(" ".join(title.split()), seen_titles)
        adj = adjectives[adj_idx[j]]
        noun_text = f"{adj} {_in_sentence(noun)}"
        if not _plural(noun):
            noun_text = ("An " if adj[0] in "aeiou" else "A ") + noun_text
        else:
            noun_text = noun_text[0].upper() + noun_text[1:]
        made = f" {c.made} {material}," if material else ""
        text = f"{noun_text}{made} for {use}. {c.features[feat_idx[j]]}"
        if colour:
            text += f" In {colour}."
        out.append(_Text(title, text, model, spec, material, colour, use))
    return out


def _new_title(title: str, seen_titles: set[str]) -> str:
    """`title`, or if the shop has it already, a newer edition of the line (II, III, …)."""
    edition = 0
    while title in seen_titles:
        edition += 1
        title = f"{title.removesuffix(EDITIONS[edition - 1])}{EDITIONS[edition]}" \
            if edition < len(EDITIONS) else f"{title} {edition}"
    seen_titles.add(title)
    return title


def _releases(rng: np.random.Generator, n: int, days: int, end: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per product: is_new, late, release time, in stock, stock.

    Cold start comes in two kinds: products imported but never seen (released in the last
    week, no events) and products released in the last days of the window, which sell
    from their release on and so reach the evaluation's held-out part unseen."""
    fresh = rng.permutation(n)
    n_new = max(1, round(NEW_SHARE * n))
    is_new = np.zeros(n, dtype=bool)
    is_new[fresh[:n_new]] = True
    late = np.zeros(n, dtype=bool)
    late[fresh[n_new:n_new + round(LATE_SHARE * n)]] = True
    released = np.where(is_new, end - rng.uniform(0.0, 7.0, n) * DAY,
                        end - (days + rng.uniform(0.0, 720.0, n)) * DAY)
    released = np.where(late, end - LATE_DAYS * DAY * rng.random(n) ** LATE_SKEW,
                        released).round()
    in_stock = is_new | late | (rng.random(n) >= OUT_OF_STOCK / (1 - NEW_SHARE - LATE_SHARE))
    stock = np.where(in_stock, 1 + rng.poisson(np.exp(rng.normal(3.0, 0.8, n))), 0)
    return is_new, late, released, in_stock, stock


def _accessory_links(rng: np.random.Generator, category: np.ndarray, brand: np.ndarray,
                     recent: np.ndarray) -> list[list[int]]:
    """Per product, its compatible accessories: 2-4 for a main product, mostly of its own
    brand, none for the others. Links point at established products only (not `recent`):
    a follow-up visit never precedes the accessory's release."""
    cats = vocab.CATEGORIES
    names = {c.name: i for i, c in enumerate(cats)}
    by_cat = [np.flatnonzero((category == ci) & ~recent) for ci in range(len(cats))]
    accessories: list[list[int]] = [[] for _ in range(len(category))]
    for item in range(len(category)):
        c = cats[category[item]]
        if not c.accessories:
            continue
        acc_cats = [names[a] for a in c.accessories]
        k = int(rng.integers(2, 5))
        order = rng.permutation(len(acc_cats))
        chosen: list[int] = []
        for slot in range(k):
            pool = by_cat[acc_cats[order[slot % len(order)]]]
            pool = pool[~np.isin(pool, chosen)]
            if not len(pool):
                continue
            w = np.where(brand[pool] == brand[item], 6.0, 1.0)
            chosen.append(int(pool[rng.choice(len(pool), p=w / w.sum())]))
        accessories[item] = chosen
    return accessories


# -- shoppers --------------------------------------------------------------------------------

def _padded(rows: list[np.ndarray], fill: int = -1) -> np.ndarray:
    width = max(1, max(len(r) for r in rows))
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def make_shoppers(rng: np.random.Generator, n_users: int, catalogue: Catalogue,
                  days: int) -> Shoppers:
    cats = vocab.CATEGORIES
    dept_names = [d.name for d in vocab.DEPARTMENTS]
    cat_dept = np.array([dept_names.index(c.department) for c in cats])
    appeal = np.array([c.appeal for c in cats])
    seg_names = list(vocab.SEGMENTS)
    seg_size = np.array([vocab.SEGMENTS[s][0] for s in seg_names])
    seg_dept = np.array([[vocab.SEGMENTS[s][1].get(d, 0.15) for d in dept_names]
                         for s in seg_names])
    seg_sens = np.array([vocab.SEGMENTS[s][2] for s in seg_names])
    countries = list(vocab.COUNTRIES)
    country_w = np.array(list(vocab.COUNTRIES.values()), dtype=float)

    segment = rng.choice(len(seg_names), size=n_users, p=seg_size / seg_size.sum())
    country = rng.choice(len(countries), size=n_users, p=country_w / country_w.sum())
    dept_w = seg_dept[segment] * rng.gamma(2.0, 1.0, (n_users, len(dept_names)))

    def taste(dept_weights: np.ndarray) -> np.ndarray:
        t = dept_weights[:, cat_dept] * appeal * rng.gamma(0.7, 1.0, (n_users, len(cats)))
        return t / t.sum(axis=1, keepdims=True)

    first = taste(dept_w)
    # Later on some interest has moved: a department gains weight, category tastes shift.
    extra = rng.integers(0, len(dept_names), n_users)
    later_w = dept_w.copy()
    later_w[np.arange(n_users), extra] += 0.5 * dept_w.sum(axis=1)
    later = taste(later_w)

    sensitivity = seg_sens[segment] + rng.normal(0.0, 0.4, n_users)
    # Favourite brands: sold in categories the shopper likes.
    cat_brands = [np.unique(catalogue.brand[catalogue.category == ci]) for ci in range(len(cats))]
    padded = _padded(cat_brands)
    sizes = np.array([len(b) for b in cat_brands])
    fav = np.empty((n_users, 2), dtype=np.int64)
    for slot in range(2):
        c = _sample_rows(rng, first)
        fav[:, slot] = padded[c, (rng.random(n_users) * sizes[c]).astype(int)]
    activity = np.exp(rng.normal(np.log(SESSIONS_PER_90_DAYS) - 0.32, 0.8, n_users)) * days / 90
    return Shoppers(
        user_ids=[f"u{i:05d}" for i in range(n_users)],
        segment=[seg_names[s] for s in segment], country=[countries[c] for c in country],
        taste=first, taste_later=later, price_sensitivity=sensitivity, favourite_brands=fav,
        activity=activity,
    )


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One column index per row of a row-stochastic matrix."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1)


# -- sessions --------------------------------------------------------------------------------

@dataclass
class _Views:
    session: np.ndarray
    item: np.ndarray
    order: np.ndarray     # position within the session
    explore: np.ndarray
    rank: np.ndarray      # 0: the product the shopper liked best in its block


def _browse(rng: np.random.Generator, catalogue: Catalogue, shoppers: Shoppers,
            cat_items: np.ndarray, z_price: np.ndarray, brand_bonus: np.ndarray,
            b_session: np.ndarray, b_user: np.ndarray, b_cat: np.ndarray, b_k: np.ndarray,
            b_explore: np.ndarray, b_offset: np.ndarray, b_time: np.ndarray) -> _Views:
    """Draw b_k[i] distinct products of category b_cat[i] for each browse block, without
    replacement, with probability ~ popularity x price fit x brand affinity (Gumbel top-k).
    Products released after the block's session started (b_time) are not on sale yet."""
    items = cat_items[b_cat]                                # (blocks, width)
    valid = items >= 0
    valid &= catalogue.released[np.where(valid, items, 0)] <= b_time[:, None]
    safe = np.where(valid, items, 0)
    score = catalogue.log_popularity[safe]
    personal = (-shoppers.price_sensitivity[b_user][:, None] * z_price[safe]
                + brand_bonus[b_user[:, None], catalogue.brand[safe]])
    score = score + np.where(b_explore[:, None], 0.0, personal)
    score = np.where(valid, score + rng.gumbel(size=score.shape), -np.inf)
    kmax = min(int(b_k.max()) if len(b_k) else 0, items.shape[1])
    top = np.argsort(-score, axis=1, kind="stable")[:, :kmax]
    rank = np.broadcast_to(np.arange(kmax), top.shape)
    picked = np.take_along_axis(items, top, axis=1)
    keep = (rank < b_k[:, None]) & np.take_along_axis(valid, top, axis=1)
    rows = np.broadcast_to(np.arange(len(b_k))[:, None], top.shape)[keep]
    return _Views(session=b_session[rows], item=picked[keep], order=b_offset[rows] + rank[keep],
                  explore=b_explore[rows], rank=rank[keep])


@dataclass
class _Floor:
    """What browsing needs, worked out once: per category its related and accessory
    categories and its browsable products (padded rows, -1 after the end); per product
    its log price standardised within its category; per shopper a bonus per brand."""

    is_main: np.ndarray
    related: np.ndarray
    related_n: np.ndarray
    acc: np.ndarray
    acc_n: np.ndarray
    cat_items: np.ndarray
    z_price: np.ndarray
    brand_bonus: np.ndarray
    overall: np.ndarray   # the mean taste, for sessions that explore


def _floor(catalogue: Catalogue, shoppers: Shoppers) -> _Floor:
    cats = vocab.CATEGORIES
    names = {c.name: i for i, c in enumerate(cats)}
    n_cats = len(cats)
    related = [[names[a] for a in c.accessories]
               + [i for i, m in enumerate(cats) if c.name in m.accessories] for c in cats]
    browsable = ~catalogue.is_new
    log_price = np.log(catalogue.price)
    z_price = np.zeros(catalogue.n)
    for ci in range(n_cats):
        sel = catalogue.category == ci
        z_price[sel] = (log_price[sel] - log_price[sel].mean()) / (log_price[sel].std() + 1e-9)
    brand_bonus = np.zeros((shoppers.n, len(catalogue.brands)))
    brand_bonus[np.arange(shoppers.n)[:, None], shoppers.favourite_brands] = FAVOURITE_BRAND
    return _Floor(
        is_main=np.array([bool(c.accessories) for c in cats]),
        related=_padded([np.array(r) for r in related]),
        related_n=np.array([len(r) for r in related]),
        acc=_padded([np.array([names[a] for a in c.accessories]) for c in cats]),
        acc_n=np.array([len(c.accessories) for c in cats]),
        cat_items=_padded([np.flatnonzero((catalogue.category == ci) & browsable)
                           for ci in range(n_cats)]),
        z_price=z_price, brand_bonus=brand_bonus, overall=shoppers.taste.mean(axis=0))


@dataclass
class _Decided:
    """Views with their shopper, which were carted and bought, and when."""

    user: np.ndarray
    item: np.ndarray
    cart: np.ndarray
    buy: np.ndarray
    view_ts: np.ndarray
    cart_ts: np.ndarray
    buy_ts: np.ndarray


def _decided(rng: np.random.Generator, catalogue: Catalogue, shoppers: Shoppers, floor: _Floor,
             user: np.ndarray, start: np.ndarray, views: _Views,
             compatible: np.ndarray) -> _Decided:
    """Carts, purchases and times for `views` of sessions with these users and start times."""
    cart, buy = _decide(rng, catalogue, shoppers, user[views.session], views, compatible,
                        floor.is_main)
    view_ts, cart_ts, buy_ts = _times(rng, views.session, views.order, start, len(views.item))
    return _Decided(user[views.session], views.item, cart, buy, view_ts, cart_ts, buy_ts)


def simulate(rng: np.random.Generator, catalogue: Catalogue, shoppers: Shoppers, days: int,
             end: float) -> Activity:
    floor = _floor(catalogue, shoppers)
    s_user, s_start, views = _sessions(rng, catalogue, shoppers, floor, days, end)
    # New arrivals are featured: shoppers who like their category come to see them.
    d_user, d_item, d_start = _new_arrival_visits(rng, catalogue, shoppers, floor.brand_bonus, end)
    n_d = len(d_user)
    d_ids = len(s_user) + np.arange(n_d)
    views = _Views(*(np.r_[getattr(views, f), new] for f, new in (
        ("session", d_ids), ("item", d_item), ("order", np.zeros(n_d, int)),
        ("explore", np.zeros(n_d, bool)), ("rank", np.zeros(n_d, int)))))
    s_user, s_start = np.r_[s_user, d_user], np.r_[s_start, d_start]
    # Phase 1 decisions, needed to know which main products were bought.
    first = _decided(rng, catalogue, shoppers, floor, s_user, s_start, views,
                     np.zeros(len(views.item), dtype=bool))
    bought_main = np.flatnonzero(first.buy & floor.is_main[catalogue.category[views.item]])
    second = _follow_ups(rng, catalogue, shoppers, floor, s_user, s_start,
                         bought_main, first)
    return _activity((first, second), end)


def _sessions(rng: np.random.Generator, catalogue: Catalogue, shoppers: Shoppers, floor: _Floor,
              days: int, end: float) -> tuple[np.ndarray, np.ndarray, _Views]:
    """Sessions (when, whose, which category, often a related one too) and their views.
    Returns each session's user and start time, and the views."""
    start = end - days * DAY
    n_sess = 1 + rng.poisson(shoppers.activity)
    s_user = np.repeat(np.arange(shoppers.n), n_sess)
    n_s = len(s_user)
    hour = rng.choice(24, size=n_s, p=HOURS / HOURS.sum())
    s_start = (start + rng.integers(0, days, n_s) * DAY + hour * 3600.0
               + rng.uniform(0, 3600, n_s))
    progress = (s_start - start) / (days * DAY)
    explore = rng.random(n_s) < EXPLORE
    w = (DRIFT * progress)[:, None]
    taste = (1 - w) * shoppers.taste[s_user] + w * shoppers.taste_later[s_user]
    taste[explore] = floor.overall
    s_cat = _sample_rows(rng, taste)
    k1 = np.minimum(1 + rng.poisson(3.2, n_s), 10)
    has_rel = (rng.random(n_s) < RELATED_BLOCK) & (floor.related_n[s_cat] > 0)
    rel_cat = floor.related[s_cat, (rng.random(n_s)
                                    * np.maximum(floor.related_n[s_cat], 1)).astype(int)]
    k2 = np.minimum(1 + rng.poisson(0.8, n_s), 5)
    ids = np.arange(n_s)
    b_session = np.concatenate([ids, ids[has_rel]])
    views = _browse(rng, catalogue, shoppers, floor.cat_items, floor.z_price, floor.brand_bonus,
                    b_session, s_user[b_session],
                    np.concatenate([s_cat, rel_cat[has_rel]]),
                    np.concatenate([k1, k2[has_rel]]),
                    np.concatenate([explore, explore[has_rel]]),
                    np.concatenate([np.zeros(n_s, int), k1[has_rel]]),
                    s_start[b_session])
    return s_user, s_start, views


def _follow_ups(rng: np.random.Generator, catalogue: Catalogue, shoppers: Shoppers,
                floor: _Floor, s_user: np.ndarray, s_start: np.ndarray, bought_main: np.ndarray,
                first: _Decided) -> _Decided:
    """Follow-up visits for the accessories of bought main products (views `bought_main`
    of `first`), soon after the purchase or within days, and what they led to."""
    n_s = len(s_user)
    bought_main = bought_main[rng.random(len(bought_main)) < FOLLOW_UP]
    f_user = first.user[bought_main]
    f_main = first.item[bought_main]
    soon = rng.random(len(f_main)) < 0.3
    delay = np.where(soon, rng.uniform(120, 3600, len(f_main)),
                     np.minimum(0.2 * DAY + rng.exponential(2.0 * DAY, len(f_main)), 13 * DAY))
    f_start = first.buy_ts[bought_main] + delay
    n_f = len(f_main)
    f_ids = n_s + np.arange(n_f)
    # The compatible accessories themselves (each seen with probability 0.75, at least one)...
    acc = _padded([np.array(catalogue.accessories[m]) for m in f_main]) if n_f else \
        np.zeros((0, 1), int)
    seen = (acc >= 0) & (rng.random(acc.shape) < 0.75)
    seen[:, 0] |= acc[:, 0] >= 0
    rows, cols = np.nonzero(seen)
    compat = _Views(session=f_ids[rows], item=acc[rows, cols], order=cols,
                    explore=np.zeros(len(rows), bool), rank=np.zeros(len(rows), int))
    # ...and a few other products of the accessory categories, as any shopper would browse.
    main_cat = catalogue.category[f_main]
    other_cat = floor.acc[main_cat, (rng.random(n_f)
                                     * np.maximum(floor.acc_n[main_cat], 1)).astype(int)]
    k_other = np.minimum(rng.poisson(1.5, n_f), 5)
    has_other = (k_other > 0) & (other_cat >= 0)
    others = _browse(rng, catalogue, shoppers, floor.cat_items, floor.z_price, floor.brand_bonus,
                     f_ids[has_other], f_user[has_other], other_cat[has_other],
                     k_other[has_other], np.zeros(has_other.sum(), bool),
                     np.full(has_other.sum(), acc.shape[1]), f_start[has_other])
    follow = _Views(*(np.concatenate([getattr(compat, f), getattr(others, f)])
                      for f in ("session", "item", "order", "explore", "rank")))
    is_compat = np.r_[np.ones(len(compat.item), bool), np.zeros(len(others.item), bool)]
    return _decided(rng, catalogue, shoppers, floor, np.r_[s_user, f_user], np.r_[s_start, f_start],
                    follow, is_compat)


def _activity(phases: tuple[_Decided, ...], end: float) -> Activity:
    """Every view, cart and purchase before `end`, in time order."""
    user = np.concatenate([p.user for p in phases])
    item = np.concatenate([p.item for p in phases])
    cart = np.concatenate([p.cart for p in phases])
    buy = np.concatenate([p.buy for p in phases])
    v_ts, c_ts, p_ts = (np.concatenate([getattr(p, f) for p in phases])
                        for f in ("view_ts", "cart_ts", "buy_ts"))
    ev_user = np.r_[user, user[cart], user[buy]]
    ev_item = np.r_[item, item[cart], item[buy]]
    ev_kind = np.r_[np.full(len(item), VIEW), np.full(cart.sum(), CART),
                    np.full(buy.sum(), PURCHASE)]
    ev_ts = np.floor(np.r_[v_ts, c_ts[cart], p_ts[buy]])
    keep = ev_ts < end
    ev_user, ev_item, ev_kind, ev_ts = ev_user[keep], ev_item[keep], ev_kind[keep], ev_ts[keep]
    order = np.lexsort((ev_kind, ev_item, ev_user, ev_ts))
    return Activity(user=ev_user[order], item=ev_item[order], kind=ev_kind[order],
                    ts=ev_ts[order])


def _new_arrival_visits(rng: np.random.Generator, catalogue: Catalogue, shoppers: Shoppers,
                        brand_bonus: np.ndarray, end: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visits to the page of each product released late in the window, from the shop's
    new-arrivals feature: most within hours of the release, by shoppers whose taste (as at
    the end of the window) favours the category, a favourite brand's fans five times as
    likely; a shopper follows at most one feature per NEW_ARRIVAL_GAP days. Returns each
    visit's user, product and start time, which is always after the release."""
    late = np.flatnonzero(catalogue.late)
    appeal = np.array([c.appeal for c in vocab.CATEGORIES])[catalogue.category[late]]
    interest = np.exp(rng.normal(-0.125, 0.5, len(late)))  # lognormal with mean 1
    item = np.repeat(late, rng.poisson(NEW_ARRIVAL_VISITS * appeal * interest))
    start = (catalogue.released[item] + rng.exponential(NEW_ARRIVAL_DAYS * DAY, len(item))
             + rng.uniform(0.0, 3600.0, len(item)))
    item, start = item[start < end], start[start < end]
    taste = (1 - DRIFT) * shoppers.taste + DRIFT * shoppers.taste_later
    user = np.empty(len(item), dtype=np.int64)
    boost = np.exp(brand_bonus - FAVOURITE_BRAND)  # 1 for a favourite brand, 1/5 otherwise
    for ci in np.unique(catalogue.category[item]):
        rows = np.flatnonzero(catalogue.category[item] == ci)
        cdf = np.cumsum(taste[:, ci])
        todo = rows
        while len(todo):  # taste-weighted draws, thinned by brand affinity
            drawn = np.minimum(np.searchsorted(cdf, rng.random(len(todo)) * cdf[-1]),
                               shoppers.n - 1)
            ok = rng.random(len(todo)) < boost[drawn, catalogue.brand[item[todo]]]
            user[todo[ok]] = drawn[ok]
            todo = todo[~ok]
    # The first visit of each shopper in each span counts back from the end.
    order = np.argsort(start, kind="stable")
    span = ((end - start[order]) // (NEW_ARRIVAL_GAP * DAY)).astype(np.int64)
    _, first = np.unique(user[order] * (span.max(initial=0) + 1) + span, return_index=True)
    keep = np.sort(order[first])
    return user[keep], item[keep], start[keep]


def _decide(rng: np.random.Generator, catalogue: Catalogue, shoppers: Shoppers,
            user: np.ndarray, views: _Views, compatible: np.ndarray,
            is_main: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which views get carted, and which carts bought."""
    fav = (shoppers.favourite_brands[user] == catalogue.brand[views.item][:, None]).any(axis=1)
    p_cart = (CART_RATE * np.where(fav, 1.6, 1.0) * np.where(views.explore, 0.6, 1.0)
              * np.where(views.rank == 0, 1.5, 1.0))
    p_cart = np.where(compatible, 0.55, p_cart)
    main = is_main[catalogue.category[views.item]]
    p_buy = np.where(main, BUY_RATE["main"], BUY_RATE["accessory"])
    p_buy = np.where(compatible, 0.65, p_buy)
    cart = rng.random(len(p_cart)) < p_cart
    buy = cart & (rng.random(len(p_buy)) < p_buy)
    return cart, buy


def _times(rng: np.random.Generator, session: np.ndarray, order: np.ndarray,
           session_start: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """View, cart and checkout times: views a minute or two apart, carts just after the
    view, checkout after the last view of the session."""
    idx = np.lexsort((order, session))
    gaps = np.empty(n)
    gaps[idx] = 10.0 + rng.exponential(70.0, n)
    sorted_session = session[idx]
    csum = np.cumsum(gaps[idx])
    first = np.r_[True, sorted_session[1:] != sorted_session[:-1]]
    base = np.maximum.accumulate(np.where(first, csum - gaps[idx], 0.0))
    offset = np.empty(n)
    offset[idx] = csum - base
    view_ts = session_start[session] + offset
    cart_ts = view_ts + rng.uniform(5.0, 90.0, n)
    last = np.zeros(len(session_start))
    np.maximum.at(last, session, offset)
    checkout = session_start + last + 100.0 + rng.uniform(0.0, 300.0, len(session_start))
    return view_ts, cart_ts, checkout[session]
