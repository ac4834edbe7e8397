"""Data sources `shopify` and `woocommerce`: a shop's own CSV exports, as the platforms write them.

    shelfwise import shopify -o products=products.csv -o orders=orders.csv -o customers=customers.csv
    shelfwise import woocommerce -o products=products.csv -o orders=orders.csv

Options: `products` (required), `orders`, `customers` (Shopify only), each a CSV file;
`--items`, `--events` and `--users` are accepted for them too. The location may instead be
a folder holding `products.csv`, `orders.csv`, `customers.csv`. `customer_key` (or the
environment variable SHELFWISE_CUSTOMER_KEY) keys the customer hash; `allow_any_time`
accepts order times before 1990 or ahead of now.

What is read:

    products   one item per product: Shopify's Handle, or WooCommerce's SKU (its ID when it
               has none). Variant rows (Shopify rows sharing a Handle; WooCommerce
               variations naming their Parent as "id:123" or a SKU) fold into their
               product: the lowest price, in stock if any variant is, and their SKUs are
               mapped to the product so that orders and products agree.
    orders     one purchase event per order line, at the order's creation time, valued at
               quantity x line price, with a stable event id (re-importing is a no-op).
               Cancelled, refunded, voided and failed orders are skipped, and so are lines
               without an e-mail (a guest checkout at the till).
    customers  (Shopify) country, province, tags, order count and total spent; names,
               addresses, phones and notes are left out.

A customer is `c-` and 20 hex digits of HMAC-SHA256(key, lower-cased e-mail): the same
customer in orders and customers, and no e-mail address in the database. Columns are
matched ignoring case and punctuation, in any order, extra columns ignored. Bad input
raises `ImportDataError` naming the file, line and column, so nothing of the import lands.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from engine import (
    DataSource,
    EngineError,
    Event,
    ImportDataError,
    Item,
    Record,
    User,
    detect_encoding,
    event_time_window,
    hookimpl,
)
from plugins.files import (
    MAX_FIELD,
    MAX_VALUE,
    _Bad,
    _in_stock,
    _normalise,
    _number,
    _plain,
    _refuse_non_text,
    _tags,
    _text,
    _timestamp,
)

DEFAULT_CUSTOMER_KEY = "shelfwise-customer-v1"  # documented; set your own with customer_key
KEY_ENV = "SHELFWISE_CUSTOMER_KEY"
SKIPPED_STATUSES = {"cancelled", "canceled", "refunded", "voided", "failed"}
ALIASES = {"items": "products", "events": "orders", "users": "customers"}  # the CLI's names

# file -> field -> accepted column names, best first (compared after files._normalise)
SHOPIFY = {
    "products": {
        "handle": ("Handle",), "title": ("Title",), "body": ("Body (HTML)", "Body"),
        "vendor": ("Vendor",), "type": ("Type",), "category": ("Product Category",),
        "tags": ("Tags",), "published": ("Published",), "sku": ("Variant SKU",),
        "price": ("Variant Price",), "qty": ("Variant Inventory Qty",), "status": ("Status",),
    },
    "orders": {
        "order": ("Name",), "email": ("Email",), "financial": ("Financial Status",),
        "created": ("Created at",), "cancelled": ("Cancelled at",),
        "qty": ("Lineitem quantity",), "name": ("Lineitem name",),
        "price": ("Lineitem price",), "sku": ("Lineitem sku",), "id": ("Id",),
    },
    "customers": {
        "email": ("Email", "Customer Email"), "country": ("Country Code", "Default Address Country Code", "Country"),
        "province": ("Province Code", "Default Address Province Code", "Province"), "tags": ("Tags",),
        "orders": ("Total Orders", "Orders Count"), "spent": ("Total Spent",),
        "marketing": ("Accepts Email Marketing", "Accepts Marketing"),
    },
}
WOOCOMMERCE = {
    "products": {
        "id": ("ID",), "type": ("Type",), "sku": ("SKU",), "name": ("Name",),
        "published": ("Published",), "short": ("Short description",),
        "description": ("Description",), "in_stock": ("In stock?", "In stock"),
        "stock": ("Stock",), "regular": ("Regular price",), "sale": ("Sale price",),
        "categories": ("Categories",), "tags": ("Tags",), "parent": ("Parent",),
        "brand": ("Brands", "Brand"),
    },
    "orders": {
        "order": ("Order Number", "Order ID", "Order #"),
        "status": ("Order Status", "Status"), "created": ("Order Date", "Date"),
        "email": ("Customer Email", "Billing Email", "Email (Billing)", "Email"),
        "name": ("Product Name", "Item Name"), "sku": ("SKU", "Item SKU"),
        "qty": ("Quantity", "Qty"), "cost": ("Item Cost", "Item Price"),
        "total": ("Order Line Total", "Line Total", "Item Total"), "item": ("Item #", "Item ID"),
    },
}
REQUIRED = {
    ("shopify", "products"): ("handle",),
    ("shopify", "orders"): ("order", "email", "created", "qty", "price"),
    ("shopify", "customers"): ("email",),
    ("woocommerce", "products"): ("name",),
    ("woocommerce", "orders"): ("order", "status", "created", "email", "qty"),
}


class _ShopSource(DataSource):
    """Reads one platform's products, orders and customers exports."""

    files: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {}

    def read(self, location: str | None, **options: Any) -> Iterator[Record]:
        any_time = str(options.pop("allow_any_time", "")).lower() in ("1", "true", "yes", "on")
        key = str(options.pop("customer_key", "") or os.environ.get(KEY_ENV) or
                  DEFAULT_CUSTOMER_KEY).encode()
        paths = self._paths(location, options)
        tables = {kind: _Table(self.name, kind, path, self.files[kind]) for kind, path in paths.items()}
        items, skus = self.products(tables["products"])
        yield from items
        if "customers" in tables:
            yield from _shopify_customers(tables["customers"], key)
        if "orders" in tables:
            window = None if any_time else event_time_window()
            yield from self.orders(tables["orders"], skus, key, window)

    def _paths(self, location: str | None, options: dict[str, Any]) -> dict[str, str]:
        kinds = tuple(self.files)
        chosen: dict[str, str] = {}
        for name, value in options.items():
            kind = ALIASES.get(name, name)
            if kind not in kinds:
                raise EngineError(
                    f"Unknown option {name!r} for the {self.name} source. Valid options: "
                    f"{', '.join(kinds)} (each a CSV export, e.g. -o products=products.csv), "
                    f"customer_key and allow_any_time.")
            if value not in (None, ""):
                chosen[kind] = os.fspath(value)
        if location not in (None, ""):
            where = Path(location)
            if not where.is_dir():
                raise ImportDataError(os.fspath(location), None, None, (
                    "not a folder; pass the exports as options, e.g. -o products=products.csv"))
            for kind in kinds:
                if kind not in chosen and (where / f"{kind}.csv").is_file():
                    chosen[kind] = os.path.join(os.fspath(location), f"{kind}.csv")
        if "products" not in chosen:
            raise EngineError(
                f"The {self.name} source needs the products export (orders name products by "
                f"SKU; the products export says which product each SKU belongs to): "
                f"-o products=products.csv" + (" -o orders=orders.csv" if "orders" in kinds else "")
                + ", or a folder holding " + ", ".join(f"{k}.csv" for k in kinds) + ".")
        for kind, shown in chosen.items():
            path = Path(shown)
            if not path.is_file():
                problem = "is a folder, not a file" if path.is_dir() else "file not found"
                raise ImportDataError(shown, None, None, f"{problem} (given as {kind})")
        return {kind: chosen[kind] for kind in kinds if kind in chosen}

    def products(self, table: _Table) -> tuple[list[Item], dict[str, str]]:
        raise NotImplementedError

    def orders(self, table: _Table, skus: dict[str, str], key: bytes,
               window: tuple[float, float] | None) -> Iterator[Event]:
        raise NotImplementedError


class ShopifySource(_ShopSource):
    name: ClassVar[str] = "shopify"
    description: ClassVar[str] = ("Shopify CSV exports: products, orders, customers "
                                  "(customers by a keyed hash of the e-mail)")
    files = SHOPIFY

    def products(self, table):
        groups: dict[str, dict[str, Any]] = {}
        skus: dict[str, str] = {}
        for line, row in table:
            with table.blame(line):
                handle = _text(row["handle"], "handle")
                if not handle:
                    raise _Bad("handle", "is empty; every row needs the product's handle")
                group = groups.setdefault(handle, {"origin": table.origin(line), "prices": [],
                                                   "stock": [], "skus": [], "rows": []})
                group["rows"].append(row)
                sku = _text(row["sku"], "sku")
                price = _number(row["price"], "price")
                if price is not None and price < 0:
                    raise _Bad("price", f"{row['price']!r} is negative; a price is 0 or more")
                if sku or price is not None:  # a variant row (image rows carry neither)
                    group["prices"].append(price)
                    group["stock"].append(_in_stock(row["qty"]))
                if sku:
                    skus.setdefault(sku, handle)
                    group["skus"].append(sku)
        items = []
        for handle, group in groups.items():
            first = _first_values(group["rows"])
            status = first["status"].lower()
            listed = status not in ("draft", "archived") and first["published"].lower() not in ("false", "no", "0")
            stock = [s for s in group["stock"] if s is not None]
            prices = [p for p in group["prices"] if p is not None]
            category = first["type"] or first["category"].split(">")[-1].strip()
            items.append(Item(
                handle, first["title"], _plain(first["body"]), category, first["vendor"],
                min(prices) if prices else None,
                tuple(dict.fromkeys(t for r in group["rows"] for t in _tags(r["tags"]))),
                listed and (any(stock) if stock else True),
                {"variants": len(group["skus"])} if group["skus"] else {}, group["origin"]))
            skus.setdefault(handle, handle)
            title = first["title"].lower()
            if title:
                skus.setdefault("title:" + title, handle)
        return items, skus

    def orders(self, table, skus, key, window):
        orders: dict[str, dict[str, str]] = {}
        for line, row in table:
            with table.blame(line):
                order = _order_of(orders, row, ("email", "financial", "created", "cancelled", "id"))
                if (order["cancelled"] or order["financial"].lower() in SKIPPED_STATUSES
                        or not order["email"]):
                    continue
                item = _product(skus, _text(row["sku"], "sku"), _text(row["name"], "name"),
                                " - ")
                qty = _quantity(row["qty"], "qty")
                price = _number(row["price"], "price")
                if price is None or price < 0:
                    raise _Bad("price", "is empty; every order line needs its price" if price is None
                               else f"{row['price']!r} is negative")
                yield Event(_customer(order["email"], key), item, "purchase",
                            _when(order["created"], window), _value(qty * price),
                            f"shopify:{order['id'] or order['number']}:{order['lines']}", table.origin(line))


class WooCommerceSource(_ShopSource):
    name: ClassVar[str] = "woocommerce"
    description: ClassVar[str] = ("WooCommerce CSV exports: products, orders "
                                  "(customers by a keyed hash of the e-mail)")
    files = WOOCOMMERCE

    def products(self, table):
        rows = []
        by_id: dict[str, int] = {}
        by_sku: dict[str, int] = {}
        for line, row in table:
            with table.blame(line):
                ident, sku = _text(row["id"], "id"), _text(row["sku"], "sku")
                if not ident and not sku:
                    raise _Bad("sku" if table.has("sku") else "id",
                               "is empty; every product needs an ID or a SKU")
                if not _text(row["name"], "name") and not row["parent"]:
                    raise _Bad("name", "is empty; every product needs a name")
                price = _number(row["sale"], "sale")
                price = _number(row["regular"], "regular") if price is None else price
                if price is not None and price < 0:
                    raise _Bad("regular", "is negative; a price is 0 or more")
                stock = _in_stock(row["in_stock"]) if row["in_stock"].lower() != "backorder" else True
                if stock is None:
                    stock = _in_stock(row["stock"])
                rows.append((line, row, ident, sku, price, stock))
                if ident:
                    by_id.setdefault(ident, len(rows) - 1)
                if sku:
                    by_sku.setdefault(sku, len(rows) - 1)
        items: dict[int, dict[str, Any]] = {}
        skus: dict[str, str] = {}
        parents = []
        for n, (line, row, ident, sku, price, stock) in enumerate(rows):
            parent = row["parent"]
            if parent or row["type"].lower() == "variation":
                parents.append((n, line, parent))
                continue
            published = row["published"] not in ("0", "-1")
            items[n] = {"item_id": sku or ident, "title": row["name"],
                        "description": _plain(row["description"] or row["short"]),
                        "category": _leaf(row["categories"]), "brand": row["brand"],
                        "prices": [price], "stock": [stock], "published": published,
                        "tags": _tags(row["tags"]), "variants": 0, "origin": table.origin(line)}
        for n, line, parent in parents:
            with table.blame(line):
                if not parent:
                    raise _Bad("parent", "is empty; a variation names its product (id:123 or a SKU)")
                target = by_id.get(parent[3:].strip()) if parent.lower().startswith("id:") else by_sku.get(parent)
                if target is None or target not in items:
                    raise _Bad("parent", f"{parent!r} is no product in this file; a variation "
                                         f"names its product as id:123 or by its SKU")
                _, _, ident, sku, price, stock = rows[n]
                product = items[target]
                if product["variants"] == 0:  # a variable product's own row has no price
                    product["prices"], product["stock"] = [], []
                product["variants"] += 1
                product["prices"].append(price)
                product["stock"].append(stock)
                if sku:
                    skus.setdefault(sku, product["item_id"])
                if ident:
                    skus.setdefault("id:" + ident, product["item_id"])
        result = []
        for n, product in items.items():
            prices = [p for p in product["prices"] if p is not None]
            stock = [s for s in product["stock"] if s is not None]
            _, _, ident, sku, _, _ = rows[n]
            for alias in (sku, "id:" + ident if ident else "", "title:" + product["title"].lower()):
                if alias:
                    skus.setdefault(alias, product["item_id"])
            result.append(Item(
                product["item_id"], product["title"], product["description"], product["category"],
                product["brand"], min(prices) if prices else None, product["tags"],
                product["published"] and (any(stock) if stock else True),
                {"variants": product["variants"]} if product["variants"] else {}, product["origin"]))
        return result, skus

    def orders(self, table, skus, key, window):
        orders: dict[str, dict[str, Any]] = {}
        for line, row in table:
            with table.blame(line):
                order = _order_of(orders, row, ("status", "created", "email"))
                status = order["status"].lower().removeprefix("wc-")
                if status in SKIPPED_STATUSES or not order["email"]:
                    continue
                item = _product(skus, _text(row["sku"], "sku"), _text(row["name"], "name"), " - ")
                qty = _quantity(row["qty"], "qty")
                cost = _number(row["cost"], "cost")
                if cost is not None:
                    value = qty * cost
                else:
                    value = _number(row["total"], "total")
                    if value is None:
                        raise _Bad("cost" if table.has("cost") else "total",
                                   "is empty; every order line needs its price")
                if value < 0:
                    raise _Bad("cost", "is negative; a price is 0 or more")
                yield Event(_customer(order["email"], key), item, "purchase",
                            _when(order["created"], window), _value(value),
                            f"woocommerce:{order['number']}:{row['item'] or order['lines']}",
                            table.origin(line))


# -- reading a CSV export ---------------------------------------------------------------

class _Table:
    """The rows of one export as {field: stripped text}, columns matched by name."""

    def __init__(self, platform: str, kind: str, shown: str, spec: dict[str, tuple[str, ...]]):
        self.platform, self.kind, self.shown, self.spec = platform, kind, shown, spec
        self.required = REQUIRED[(platform, kind)]
        self.columns: dict[str, str] = {}  # field -> column name as written
        self.line: int | None = None

    def has(self, field: str) -> bool:
        return field in self.columns

    def origin(self, line: int) -> str:
        return f"{self.shown} line {line}"

    def blame(self, line: int) -> _Table:
        self.line = line
        return self

    def __enter__(self) -> _Table:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if isinstance(exc, _Bad):
            column = self.columns.get(exc.field) or self.spec.get(exc.field, (exc.field,))[0]
            raise ImportDataError(self.shown, self.line, column, exc.problem) from None

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        path = Path(self.shown)
        _refuse_non_text(path, self.shown)
        csv.field_size_limit(MAX_FIELD)
        with open(path, newline="", encoding=detect_encoding(path)) as f:
            delimiter = max(",;\t", key=f.readline().count)
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter)
            try:
                header = next(reader, None)
                if not header or not any(h.strip() for h in header):
                    raise ImportDataError(self.shown, 1, None, (
                        f"the file is empty; expected a {self.platform} {self.kind} export "
                        f"whose first line names the columns"))
                where = self._match([h.strip() for h in header])
                width = len(header)
                last = reader.line_num
                for row in reader:
                    line, last = last + 1, reader.line_num
                    if not any(cell.strip() for cell in row):
                        continue
                    if len(row) > width and any(cell.strip() for cell in row[width:]):
                        raise ImportDataError(self.shown, line, None, (
                            f"{len(row)} values but the header has {width} columns (a value "
                            f"containing {delimiter!r} must be in double quotes)"))
                    values = {}
                    for field, i in where.items():
                        cell = row[i] if i < len(row) else ""
                        if len(cell) > MAX_FIELD or "\x00" in cell:
                            with self.blame(line):
                                _text(cell, field)
                        values[field] = cell.strip()
                    for field in self.spec:
                        values.setdefault(field, "")
                    yield line, values
            except csv.Error as exc:
                raise ImportDataError(self.shown, reader.line_num, None,
                                      f"unreadable CSV: {exc}") from None

    def _match(self, names: list[str]) -> dict[str, int]:
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            key = _normalise(name)
            if key and key in index:
                raise ImportDataError(self.shown, 1, name, (
                    f"column {index[key] + 1} and column {i + 1} have the same name; "
                    f"name each column once"))
            index.setdefault(key, i)
        where = {}
        for field, aliases in self.spec.items():
            found = next((index[_normalise(a)] for a in aliases if _normalise(a) in index), None)
            if found is not None:
                where[field] = found
                self.columns[field] = names[found]
            elif field in self.required:
                raise ImportDataError(self.shown, 1, aliases[0], (
                    f"missing column {aliases[0]!r}" +
                    (f" (also accepted: {', '.join(aliases[1:])})" if aliases[1:] else "") +
                    f"; is this a {self.platform} {self.kind} export? Found columns: "
                    f"{', '.join(names)}"))
        return where


# -- values -----------------------------------------------------------------------------

def _customer(email: str, key: bytes) -> str:
    """`c-` and 20 hex digits of HMAC-SHA256(key, the lower-cased e-mail)."""
    if "@" not in email:
        raise _Bad("email", "is not an e-mail address (the customer is known by it)")
    return "c-" + hmac.new(key, email.strip().lower().encode(), hashlib.sha256).hexdigest()[:20]


def _product(skus: dict[str, str], sku: str, name: str, separator: str) -> str:
    """The product of an order line: by SKU, else by title ("Linen Shirt - M / Blue"), else
    the SKU or name itself (a product deleted since, kept as its own item)."""
    if sku and sku in skus:
        return skus[sku]
    title = name.lower()
    for candidate in (title, title.rsplit(separator, 1)[0]):
        if "title:" + candidate in skus:
            return skus["title:" + candidate]
    if not sku and not name:
        raise _Bad("sku", "is empty and so is the product name; which product was bought?")
    return sku or name


def _quantity(raw: str, field: str) -> float:
    qty = _number(raw, field)
    if qty is None or qty <= 0:
        raise _Bad(field, "is empty; every order line needs its quantity" if qty is None
                   else f"{raw!r} is not a quantity (1 or more)")
    return qty


def _value(amount: float) -> float:
    if abs(amount) > MAX_VALUE:
        raise _Bad("price", f"quantity x price is {amount:g}, beyond {MAX_VALUE:g}")
    return round(amount, 2)


def _when(raw: str, window: tuple[float, float] | None) -> float:
    try:
        moment = _timestamp(raw)
    except _Bad as bad:
        raise _Bad("created", bad.problem) from None
    if window is not None and not window[0] <= moment <= window[1]:
        when = datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds") \
            if -1e11 < moment < 1e11 else f"{moment:g} s"
        raise _Bad("created", f"{raw!r} is {when}, "
                              f"{'before 1990' if moment < window[0] else 'more than a day ahead'}; "
                              f"import with --allow-any-time if it is right")
    return moment


def _leaf(categories: str) -> str:
    """ "Clothing > Tshirts, Accessories" -> "Tshirts": the first category's last level."""
    first = categories.split(",")[0] if categories else ""
    return first.split(">")[-1].strip()


def _first_values(rows: list[dict[str, str]]) -> dict[str, str]:
    """Each field's first non-empty value over a product's rows."""
    return {field: next((r[field] for r in rows if r[field]), "") for field in rows[0]}


def _shopify_customers(table: _Table, key: bytes) -> Iterator[User]:
    for line, row in table:
        with table.blame(line):
            if not row["email"]:
                continue  # a customer without an e-mail has no orders to match
            attrs = {name: row[field] for field, name in (
                ("country", "country"), ("province", "province"), ("orders", "orders"),
                ("spent", "total_spent"), ("marketing", "accepts_marketing")) if row[field]}
            if row["tags"]:
                attrs["tags"] = list(_tags(row["tags"]))
            yield User(_customer(row["email"], key), attrs, table.origin(line))


@hookimpl
def register_sources(register):
    register(ShopifySource, WooCommerceSource)


def _order_of(orders: dict[str, dict[str, Any]], row, fields: tuple[str, ...]) -> dict[str, Any]:
    """The order a line belongs to (by its number), counting the line; the order-level
    `fields` come from the first of its lines that has them (exports leave them empty on
    the later lines)."""
    number = _text(row["order"], "order")
    if not number:
        raise _Bad("order", "is empty; every line names its order")
    order = orders.setdefault(number, {"lines": 0, "number": number})
    for field in fields:
        if not order.get(field):
            order[field] = _text(row[field], field)
    order["lines"] += 1
    return order
