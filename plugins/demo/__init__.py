"""The `demo` source: a generated online shop, the embedded default for `shelfwise demo`.

Nothing is read or downloaded: `read(None, seed=7)` makes a catalogue of outdoor gear,
cameras, coffee machines, laptops, bikes and their accessories, shoppers with tastes, and
90 days of views, carts and purchases ending 2026-09-30 00:00 UTC. The same options give
the same records, so re-importing adds nothing (every event has a stable `event_id`).

Records, in order: every Item, then every User, then the Events in time order.

- Item `attrs` keep the generator's facets so search and evaluation can derive ground
  truth from them: department, role ("main" or "accessory"), model, spec, use, and where
  the category has them material and colour; released (ISO date), stock (units);
  main products list their compatible `accessories`, accessories the main products they
  are `compatible_with` (item ids). Tags repeat department, use, material and colour,
  and mark products released in the last ten days "new".
- User `attrs`: segment ("outdoor enthusiast", "home barista", ...) and country.
- Event `kind` is view, cart or purchase; `value` is the unit price paid for a purchase
  (quantity is always 1) and None for views and carts; `ts` is whole epoch seconds.
- Cold start, two kinds. About 5% of the products were released in the last week and have
  no events at all (imported, never seen). Another 5% were released during the last ten
  days, more of them towards the end, and have events only after their release: the
  shop features new arrivals, so shoppers who like the category (and the brand) come to
  look within hours. For many of those shoppers it is the last thing they looked at, so
  a chronological hold-out (`shelfwise evaluate`) has held-out items with no training
  events: a cold-start slice to measure.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine import DataSource, EngineError, Event, Item, Record, User, hookimpl

from . import _generator
from ._generator import KINDS, DemoShop, generate


BAD_OPTIONS = "Invalid demo options"


class DemoConfig(BaseModel):
    """Options of `read` (and [plugins.demo] in shelfwise.toml). Strings from the command
    line are converted."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(7, description="Random seed: the same seed gives the same shop.")
    users: int = Field(5000, ge=1, le=1_000_000, description="Shoppers (before scale).")
    items: int = Field(2000, ge=1, le=200_000, description="Products (before scale), >= 200.")
    days: int = Field(90, ge=14, le=3650, description="Days of activity, ending 2026-09-30.")
    scale: float = Field(1.0, gt=0, le=100, description="Multiplies users and items.")


def _iso_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).date().isoformat()


class DemoSource(DataSource):
    """A generated shop; `location` is not used."""

    name = "demo"
    description = "A generated online shop: catalogue, shoppers, 90 days of events."
    Config = DemoConfig

    def options(self, **options: Any) -> DemoConfig:
        """The effective options: this source's config overridden by `options`."""
        merged = {**self.config.model_dump(exclude_unset=True), **options}
        try:
            opts = DemoConfig(**merged)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "options"
                if err["type"] == "extra_forbidden":
                    problems.append(f"unknown option {field!r}")
                else:
                    problems.append(f"{field}={err.get('input')!r}: {err['msg']}")
            valid = ", ".join(f"{k} (default {f.default})"
                              for k, f in DemoConfig.model_fields.items())
            raise EngineError(f"Invalid demo options: {'; '.join(problems)}. "
                              f"Valid options: {valid}.", title=BAD_OPTIONS) from None
        if round(opts.items * opts.scale) < 200:
            raise EngineError(f"The demo shop needs at least 200 products; items={opts.items} "
                              f"with scale={opts.scale} gives {round(opts.items * opts.scale)}. "
                              f"Raise items or scale.", title=BAD_OPTIONS)
        return opts

    def generate(self, **options: Any) -> DemoShop:
        """The generated shop as arrays, ground truth included (tastes, accessory links)."""
        opts = self.options(**options)
        return generate(seed=opts.seed, users=max(1, round(opts.users * opts.scale)),
                        items=round(opts.items * opts.scale), days=opts.days)

    def read(self, location: str | None = None, **options: Any) -> Iterator[Record]:
        if location not in (None, "", "demo"):
            raise EngineError(f"The demo source generates its data and reads no file "
                              f"(got location {location!r}). Leave the location out.",
                              title=BAD_OPTIONS)
        shop = self.generate(**options)
        # Event ids name the run, so that importing another size never clashes.
        run = str(shop.seed)
        sizes = (shop.shoppers.n, shop.catalogue.n, shop.days)
        default = DemoConfig()
        if sizes != (default.users, default.items, default.days):
            run += "-u{}i{}d{}".format(*sizes)
        return records(shop, run)


def records(shop: DemoShop, run: str) -> Iterator[Record]:
    """Items, then users, then events in time order, for the shop made by run `run`."""
    cat = shop.catalogue
    cats = shop.categories
    compatible_with = cat.compatible_with()
    origin = f"demo (run {run})"
    for i in range(cat.n):
        spec = cats[cat.category[i]]
        facets = {"material": cat.material[i], "colour": cat.colour[i]}
        attrs: dict[str, Any] = {
            "department": spec.department, "role": spec.role, "model": cat.model[i],
            "spec": cat.spec[i], "use": cat.use[i],
            **{k: v for k, v in facets.items() if v is not None},
            "released": _iso_date(cat.released[i]), "stock": int(cat.stock[i]),
        }
        if cat.accessories[i]:
            attrs["accessories"] = [cat.item_ids[a] for a in cat.accessories[i]]
        if compatible_with[i]:
            attrs["compatible_with"] = [cat.item_ids[m] for m in compatible_with[i]]
        tags = [spec.department.lower(), cat.use[i], *(v for v in facets.values() if v)]
        if cat.is_new[i] or cat.late[i]:
            tags.append("new")
        yield Item(
            item_id=cat.item_ids[i], title=cat.titles[i], description=cat.descriptions[i],
            category=spec.name, brand=cat.brands[cat.brand[i]], price=float(cat.price[i]),
            tags=tuple(tags), in_stock=bool(cat.in_stock[i]), attrs=attrs,
            origin=f"{origin} item {i + 1}",
        )
    people = shop.shoppers
    for u in range(people.n):
        yield User(user_id=people.user_ids[u],
                   attrs={"segment": people.segment[u], "country": people.country[u]},
                   origin=f"{origin} user {u + 1}")
    act = shop.activity
    item_ids, user_ids, prices = cat.item_ids, people.user_ids, cat.price.tolist()
    for n, (u, i, k, ts) in enumerate(zip(act.user.tolist(), act.item.tolist(),
                                          act.kind.tolist(), act.ts.tolist())):
        yield Event(user_id=user_ids[u], item_id=item_ids[i], kind=KINDS[k], ts=ts,
                    value=prices[i] if k == _generator.PURCHASE else None,
                    event_id=f"demo-{run}-{n}", origin=f"{origin} event {n + 1}")


@hookimpl
def register_sources(register):
    register(DemoSource)
