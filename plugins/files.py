"""Data sources `csv` and `jsonl`: a shop's catalogue, customers and history from files.

    shelfwise import csv --items items.csv --users users.csv --events events.csv
    shelfwise import jsonl exports/          # a folder holding items.jsonl, events.jsonl, …

Options (any subset, at least one): `items`, `users`, `events`, `triples`, `links`, each a
file. The location may instead be a folder holding `items.csv`, `users.csv`,
`events.csv`, `triples.csv`, `links.csv` (`.jsonl` for the jsonl source); whichever exist
are read, and an option overrides the folder's file of the same kind.

Columns are matched ignoring case, spaces and punctuation ("Body (HTML)" is `body_html`,
"userId" is `user_id`); the first accepted name found wins:

    items    item_id (id, sku, product_id, handle, variant_sku), title (name, product_name),
             description (body, body_html; HTML tags are removed), category (product_type,
             type, product_category, or the first of `categories`), brand (vendor,
             manufacturer), price (variant_price, regular_price, cost; "12.50" or "$12.50"),
             in_stock (stock, available, inventory_quantity, variant_inventory_qty, status;
             yes/no words or a count, > 0 is in stock), tags ("a, b" or "a|b"; a JSON list
             in jsonl). Every other non-empty column goes into `attrs`.
    users    user_id (customer_id, id, visitor_id); every other column goes into `attrs`.
    events   user_id (customer_id, visitor_id, session_id), item_id (product_id, sku),
             kind (event, event_type, type, action), timestamp (ts, time, date,
             created_at, event_time), value (rating, quantity, amount, revenue), event_id
             (id). Kinds are view, click, cart, purchase, rating and their aliases:
             add_to_cart → cart, order/transaction/buy → purchase, pageview/detail → view,
             rate → rating; any other kind is an error. Timestamps are ISO-8601 (naive
             means UTC) or epoch seconds (milli-, micro- and nanoseconds are recognised by
             size), from 1990 to a day ahead of now unless the option
             `allow_any_time` is set (`shelfwise import … --allow-any-time`); a value lies
             within ±1e12.
    triples  head, relation, tail (knowledge-graph facts; entities are free-form ids)
    links    item_id, entity (which knowledge-graph entity an item is)

Consecutive rows with the same item id (a Shopify export's variant and image rows) make one
item: later rows only fill in what earlier rows left blank, and the item is in stock if
any of its rows says so. Files are UTF-8 (a BOM is fine) or, failing that, Latin-1 (a
UTF-16 or binary file is refused, saying so); CSV files may be separated by commas,
semicolons or tabs, and name each column once. A field holds at most 1 MiB of text
(`MAX_FIELD` characters) and no NUL byte.

Every record carries `origin` ("events.csv line 14": the header is line 1), and bad input
raises `ImportDataError` naming the file, line and field, so nothing of the import lands.
"""

from __future__ import annotations

import csv
import functools
import html
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from engine import (
    DataSource, EngineError, Event, ImportDataError, Item, ItemEntity, Record, Triple, User,
    EVENT_KINDS, detect_encoding, event_time_window, hookimpl,
)

# -- what the files may contain ---------------------------------------------------------

FILE_KINDS = ("items", "users", "events", "triples", "links")
OPTIONS = ("allow_any_time",)  # not a file: accept any event time
MAX_FIELD = 1 << 20  # characters of one field: a 10 MB description took 96 s to import
MAX_VALUE = 1e12     # an event's value (a rating, an amount) lies within ±this

# kind -> canonical field -> accepted column names, best first (compared after _normalise)
COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "items": {
        "item_id": ("item_id", "id", "sku", "product_id", "handle", "variant_sku"),
        "title": ("title", "name", "product_name"),
        "description": ("description", "body", "body_html"),
        "category": ("category", "product_type", "type", "product_category"),
        "categories": ("categories",),
        "brand": ("brand", "vendor", "manufacturer"),
        "price": ("price", "variant_price", "regular_price", "cost"),
        "in_stock": ("in_stock", "stock", "available", "inventory_quantity",
                     "variant_inventory_qty", "inventory_qty", "status"),
        "tags": ("tags",),
    },
    "users": {
        "user_id": ("user_id", "customer_id", "id", "visitor_id"),
    },
    "events": {
        "user_id": ("user_id", "customer_id", "visitor_id", "session_id"),
        "item_id": ("item_id", "product_id", "sku"),
        "kind": ("kind", "event", "event_type", "type", "action"),
        "timestamp": ("timestamp", "ts", "time", "date", "created_at", "event_time"),
        "value": ("value", "rating", "quantity", "amount", "revenue"),
        "event_id": ("event_id", "id"),
    },
    "triples": {
        "head": ("head", "head_id", "subject"),
        "relation": ("relation", "relation_id", "predicate"),
        "tail": ("tail", "tail_id", "object"),
    },
    "links": {
        "item_id": ("item_id", "product_id", "sku", "id"),
        "entity": ("entity", "entity_id"),
    },
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "items": ("item_id",),
    "users": ("user_id",),
    "events": ("user_id", "item_id", "kind", "timestamp"),
    "triples": ("head", "relation", "tail"),
    "links": ("item_id", "entity"),
}
KEEPS_ATTRS = {"items", "users"}

# Spellings of event kinds, compared lower-case with punctuation removed.
KIND_SYNONYMS = {
    "view": "view", "pageview": "view", "detail": "view", "viewitem": "view",
    "productview": "view", "viewed": "view",
    "click": "click", "clicked": "click",
    "cart": "cart", "addtocart": "cart", "addtobasket": "cart", "carted": "cart",
    "purchase": "purchase", "transaction": "purchase", "order": "purchase", "buy": "purchase",
    "purchased": "purchase", "bought": "purchase",
    "rating": "rating", "rate": "rating", "rated": "rating",
}
_ALIASES = sorted(k for k, v in KIND_SYNONYMS.items() if k != v)
IN_STOCK_WORDS = {
    "yes": True, "y": True, "true": True, "t": True, "instock": True, "available": True,
    "active": True, "on": True,
    "no": False, "n": False, "false": False, "f": False, "outofstock": False,
    "soldout": False, "unavailable": False, "inactive": False, "draft": False,
    "archived": False, "discontinued": False, "off": False,
}
TIME_FORMATS = ("ISO-8601 like 2024-05-01T14:30:00 (optionally with Z or +02:00) "
                "or epoch seconds like 1714573800")

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_HTML_TAG = re.compile(r"<[a-zA-Z!/?][^>]*>")
_PLAIN_NUMBER = re.compile(r"\d+(\.\d+)?|\.\d+")
_EPOCH = datetime(1970, 1, 1)


class _FileSource(DataSource):
    """Reads one file per kind of record; subclasses say which format."""

    extension: ClassVar[str] = ""

    def read(self, location: str | None, **options: Any) -> Iterator[Record]:
        any_time = str(options.pop("allow_any_time", "")).lower() in ("1", "true", "yes", "on")
        window = None if any_time else event_time_window()
        for kind, path, shown in _files(self.name, self.extension, location, options):
            _refuse_non_text(path, shown)
            records = _records(kind, _rows(self.extension, path, shown, kind), shown, window)
            yield from (_merge_variants(records) if kind == "items" else records)


class CsvSource(_FileSource):
    name: ClassVar[str] = "csv"
    description: ClassVar[str] = ("CSV files: items, users, events, triples, links "
                                  "(Shopify-style product exports work as they are)")
    extension: ClassVar[str] = ".csv"


class JsonlSource(_FileSource):
    name: ClassVar[str] = "jsonl"
    description: ClassVar[str] = ("JSON Lines files (one object per line): items, users, "
                                  "events, triples, links")
    extension: ClassVar[str] = ".jsonl"


# -- finding the files ------------------------------------------------------------------

def _files(source: str, ext: str, location: str | os.PathLike | None,
           options: dict[str, Any]) -> list[tuple[str, Path, str]]:
    """(kind, path, name to show) for every file of the import, checked to exist."""
    unknown = sorted(set(options) - set(FILE_KINDS) - set(OPTIONS))
    if unknown:
        raise EngineError(
            f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for the {source} source. Valid options: {', '.join(FILE_KINDS)} "
            f"(each a {ext} file, e.g. --events events{ext}) and {', '.join(OPTIONS)}.")
    chosen: dict[str, str] = {}
    if location is not None and str(location) != "":
        where = Path(location)
        if where.is_dir():
            for kind in FILE_KINDS:
                if (where / f"{kind}{ext}").is_file():
                    chosen[kind] = os.path.join(os.fspath(location), f"{kind}{ext}")
            if not chosen and not any(v is not None for v in options.values()):
                raise ImportDataError(os.fspath(location), None, None, (
                    f"the folder holds none of {', '.join(k + ext for k in FILE_KINDS)}; "
                    f"name the files with options such as --events FILE"))
        elif where.is_file():
            if where.stem.lower() not in FILE_KINDS or where.suffix.lower() != ext:
                raise ImportDataError(os.fspath(location), None, None, (
                    f"cannot tell what this file holds; pass it as one of the options "
                    f"{', '.join(FILE_KINDS)} (e.g. --events {os.fspath(location)})"))
            chosen[where.stem.lower()] = os.fspath(location)
        else:
            raise ImportDataError(os.fspath(location), None, None,
                                  "no such file or folder")
    for kind, value in options.items():
        if kind in FILE_KINDS and value is not None and str(value) != "":
            chosen[kind] = os.fspath(value)
    if not chosen:
        raise EngineError(
            f"The {source} source needs at least one file. Options: "
            f"{', '.join(FILE_KINDS)} (e.g. --items items{ext} --events events{ext}), "
            f"or a folder holding {', '.join(k + ext for k in FILE_KINDS)}.")
    found = []
    for kind in FILE_KINDS:
        if kind in chosen:
            path = Path(chosen[kind])
            if not path.is_file():
                problem = "is a folder, not a file" if path.is_dir() else "file not found"
                raise ImportDataError(chosen[kind], None, None, f"{problem} (given as {kind})")
            found.append((kind, path, chosen[kind]))
    return found


def _refuse_non_text(path: Path, shown: str) -> None:
    """A UTF-16 or binary file, said as such (read as Latin-1 it would give odd errors
    such as "price is not a number" on line 2)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (
            len(head) >= 4 and head.count(b"\x00") * 3 >= len(head) and
            (head[1::2].count(0) * 4 >= len(head) or head[0::2].count(0) * 4 >= len(head))):
        raise ImportDataError(shown, None, None, "the file is UTF-16 text; save it as UTF-8 "
                                                 "(in a spreadsheet: CSV UTF-8) and import it again")
    controls = sum(head.count(bytes([c])) for c in range(32) if c not in (9, 10, 13))
    if head and controls * 20 > len(head):
        raise ImportDataError(shown, None, None, "this is not a text file (it holds binary data); "
                                                 "export the data as CSV or JSON Lines")


# -- rows: (line, values in canonical order, raw row, layout) ---------------------------

def _normalise(name: str) -> str:
    return _NOT_ALNUM.sub("", name.strip().lower())


@dataclass
class _Layout:
    """Where each canonical field sits in a row (a CSV column index or a JSON key)."""

    kind: str
    extract: Callable[[Any], tuple]          # row -> values in COLUMNS[kind] order
    columns: dict[str, str]                  # canonical field -> column name as written
    extras: list[tuple[Any, str]]            # (index or key, name) of the other columns
    noun: str = "column"                     # what the format calls them

    def problem(self, field: str, problem: str) -> str:
        column = self.columns.get(field)
        if column is not None and _normalise(column) != _normalise(field):
            return f"{problem} ({self.noun} {column!r})"
        return problem


def _layout(kind: str, names: list[str], keys: list[Any], absent: Any,
            getter: Callable[[list[Any]], Callable[[Any], tuple]],
            noun: str = "column") -> _Layout | str:
    """Match columns to fields; a string is the complaint about a missing required one."""
    spec = COLUMNS[kind]
    normalised = [_normalise(n) for n in names]
    used: set[int] = set()
    positions, columns = [], {}
    for field, aliases in spec.items():
        found = None
        for alias in aliases:
            target = alias.replace("_", "")
            for i, name in enumerate(normalised):
                if name == target and i not in used:
                    found = i
                    break
            if found is not None:
                break
        if found is None:
            if field in REQUIRED[kind]:
                also = ", ".join(a for a in aliases if a != field)
                return (f"missing {noun} {field!r}" + (f" (also accepted: {also})" if also else "")
                        + f"; found {noun}s: {', '.join(names) or 'none'}")
            positions.append(absent)
        else:
            used.add(found)
            positions.append(keys[found])
            columns[field] = names[found]
    extras = [(keys[i], names[i]) for i in range(len(names)) if i not in used]
    return _Layout(kind, getter(positions), columns, extras, noun)


def _index_getter(positions: list[Any]) -> Callable[[Any], tuple]:
    if len(positions) == 1:
        (only,) = positions
        return lambda row: (row[only],)
    return itemgetter(*positions)


def _key_getter(positions: list[Any]) -> Callable[[Any], tuple]:
    return lambda obj: tuple(map(obj.get, positions))


def _rows(ext: str, path: Path, shown: str, kind: str):
    return _csv_rows(path, shown, kind) if ext == ".csv" else _jsonl_rows(path, shown, kind)


def _csv_rows(path: Path, shown: str, kind: str) -> Iterator[tuple[int, tuple, Any, _Layout]]:
    # Shopify's Body (HTML) can exceed csv's default 128 KiB per field; MAX_FIELD is the cap.
    csv.field_size_limit(MAX_FIELD)
    with open(path, newline="", encoding=detect_encoding(path)) as f:
        first = f.readline()
        delimiter = max(",;\t", key=first.count)
        f.seek(0)
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise ImportDataError(shown, 1, None, (
                    f"the file is empty; the first line must name the columns, e.g. "
                    f"{','.join(REQUIRED[kind])}"))
            width = len(header)
            names = [h.strip() for h in header]
            seen: dict[str, int] = {}
            for col, name in enumerate(names, start=1):
                if name and _normalise(name) in seen:
                    raise ImportDataError(shown, 1, name, (
                        f"column {seen[_normalise(name)]} and column {col} have the same name; "
                        f"name each column once"))
                seen[_normalise(name)] = col
            # A row gets one extra "" cell, where every absent optional field points.
            layout = _layout(kind, names, list(range(width)), width, _index_getter)
            if isinstance(layout, str):
                raise ImportDataError(shown, 1, None, layout)
            extract = layout.extract
            last = reader.line_num
            for row in reader:
                line = last + 1
                last = reader.line_num
                if len(row) != width:
                    if not row:
                        continue
                    if len(row) < width:
                        row.extend([""] * (width - len(row)))
                    elif any(cell.strip() for cell in row[width:]):
                        raise ImportDataError(shown, line, None, (
                            f"{len(row)} values but the header has {width} columns "
                            f"(a value containing {delimiter!r} must be in double quotes)"))
                    else:
                        del row[width:]
                row.append("")
                yield line, extract(row), row, layout
        except csv.Error as exc:
            problem = (f"a field is longer than {MAX_FIELD:,} characters (the limit of one "
                       f"field)") if "field larger than field limit" in str(exc) else \
                f"unreadable CSV: {exc}"
            raise ImportDataError(shown, reader.line_num, None, problem) from None


class _TwiceNamed(ValueError):
    """A JSON object naming one field twice (json.loads would keep the last silently)."""


def _one_name_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _TwiceNamed(f"the field {twice!r} appears twice in one object; which value is meant?")
    return obj


def _jsonl_rows(path: Path, shown: str, kind: str) -> Iterator[tuple[int, tuple, Any, _Layout]]:
    layouts: dict[tuple, _Layout] = {}
    loads = json.JSONDecoder(object_pairs_hook=_one_name_each).decode
    with open(path, encoding=detect_encoding(path)) as f:
        for line, text in enumerate(f, start=1):
            try:
                obj = loads(text)
            except _TwiceNamed as exc:
                raise ImportDataError(shown, line, None, str(exc)) from None
            except json.JSONDecodeError as exc:
                if not text.strip():
                    continue
                raise ImportDataError(shown, line, None, (
                    f"not valid JSON: {exc.msg} at column {exc.colno}")) from None
            if type(obj) is not dict:
                raise ImportDataError(shown, line, None, (
                    f"expected a JSON object like {{\"{REQUIRED[kind][0]}\": …}}, "
                    f"found {type(obj).__name__}"))
            keys = tuple(obj)
            layout = layouts.get(keys)
            if layout is None:
                names = [str(k) for k in keys]
                layout = _layout(kind, names, names, None, _key_getter, noun="field")
                if isinstance(layout, str):
                    raise ImportDataError(shown, line, None, layout)
                layouts[keys] = layout
            yield line, layout.extract(obj), obj, layout


# -- values -----------------------------------------------------------------------------

class _Bad(Exception):
    """A bad value: the field and what is wrong with it (the caller adds file and line)."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _text(value: Any, field: str) -> str:
    if type(value) is str:
        if len(value) > MAX_FIELD:
            raise _Bad(field, f"is {len(value):,} characters long; a field holds at most {MAX_FIELD:,}")
        if "\x00" in value:
            raise _Bad(field, "contains a NUL byte (\\x00): the file is not plain text")
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(field, f"expected text or a number, found {json.dumps(value)}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _required(value: Any, field: str) -> str:
    text = value.strip() if type(value) is str else _text(value, field)
    if not text:
        raise _Bad(field, "is empty; every row needs one")
    return text


def _number(value: Any, field: str) -> float | None:
    """A finite number: 12.5, "12.5" or "$12.50"; None when empty."""
    if type(value) is str:
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            number = _money(text, field)
        else:
            if "_" in text:
                raise _Bad(field, f"{value!r} is not a number")
    elif value is None:
        return None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise _Bad(field, f"{json.dumps(value)} is not a number")
    if not math.isfinite(number):
        raise _Bad(field, f"{value!r} is not a finite number")
    return number


def _money(text: str, field: str) -> float:
    """ "$12.50", "€ 12.50": a currency sign, then a plain number."""
    if unicodedata.category(text[0]) == "Sc":
        rest = text[1:].strip()
        if _PLAIN_NUMBER.fullmatch(rest):
            return float(rest)
    hint = " (write decimals with a dot and no thousands separator: 1234.50)" if "," in text else ""
    raise _Bad(field, f"{text!r} is not a number{hint}")


def _timestamp(value: Any) -> float:
    """Epoch seconds (UTC) from ISO-8601 or an epoch number (ms, µs, ns by size)."""
    if type(value) is str:
        text = value.strip()
        if len(text) >= 10 and text[4] == "-":
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                moment = _utc_suffixed(text)
                if moment is None:
                    raise _Bad("timestamp", f"{value!r} is not a time; use {TIME_FORMATS}") from None
            if moment.tzinfo is None:
                return (moment - _EPOCH).total_seconds()
            return moment.timestamp()
        try:
            seconds = float(text)
        except ValueError:
            problem = "is empty; every event needs a time" if not text else \
                f"{value!r} is not a time; use {TIME_FORMATS}"
            raise _Bad("timestamp", problem) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif value is None:
        raise _Bad("timestamp", "is empty; every event needs a time")
    else:
        raise _Bad("timestamp", f"{json.dumps(value)} is not a time; use {TIME_FORMATS}")
    if not math.isfinite(seconds):
        raise _Bad("timestamp", f"{value!r} is not a time; use {TIME_FORMATS}")
    if seconds > 1e11:  # milliseconds, microseconds (GA4 exports) or nanoseconds
        seconds /= 1e3 if seconds < 1e14 else 1e6 if seconds < 1e17 else 1e9
    return seconds


def _utc_suffixed(text: str) -> datetime | None:
    """ "2024-05-01 14:30:00 UTC", as databases print times, or None."""
    head, _, zone = text.rpartition(" ")
    if zone.upper() in ("UTC", "GMT", "Z"):
        try:
            return datetime.fromisoformat(head).replace(tzinfo=timezone.utc)
        except ValueError:
            return None
    return None


def _kind(value: Any) -> str:
    return _kind_of(value if type(value) is str else _text(value, "kind"))


@functools.lru_cache(maxsize=4096)  # a file spells its few kinds over and over
def _kind_of(raw: str) -> str:
    text = raw.strip().lower()
    if not text:
        raise _Bad("kind", "is empty; every event needs one (view, click, cart, purchase, rating…)")
    key = _NOT_ALNUM.sub("", text)
    if not key:
        raise _Bad("kind", f"{raw!r} is not an event kind (view, click, cart, purchase, rating…)")
    found = KIND_SYNONYMS.get(key)
    if found is None:
        raise _Bad("kind", f"{raw!r} is not an event kind Shelfwise knows. Kinds: "
                           f"{', '.join(EVENT_KINDS)}; also accepted: {', '.join(_ALIASES)}")
    return found


def _in_stock(value: Any) -> bool | None:
    """True/False, or None when the row does not say."""
    if value is None or type(value) is bool:
        return value
    if isinstance(value, (int, float)):
        return value > 0
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        word = IN_STOCK_WORDS.get(_NOT_ALNUM.sub("", text.lower()))
        if word is not None:
            return word
        try:
            return float(text) > 0
        except ValueError:
            pass
    raise _Bad("in_stock", (
        f"{value!r} is not a stock value; use a count (> 0 is in stock) or one of "
        f"{', '.join(w for w, ok in IN_STOCK_WORDS.items() if ok)} / "
        f"{', '.join(w for w, ok in IN_STOCK_WORDS.items() if not ok)}"))


def _tags(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        parts = [_text(v, "tags") for v in value]
    elif isinstance(value, str):
        parts = value.split("|" if "|" in value else ",")
    else:
        raise _Bad("tags", f"{json.dumps(value)} is not a list of tags")
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _first_category(value: Any) -> str:
    if isinstance(value, list):
        return _text(value[0], "categories") if value else ""
    text = _text(value, "categories")
    return text.split("|" if "|" in text else ",")[0].strip()


def _plain(text: str) -> str:
    """Text from an HTML fragment (Shopify's Body (HTML)); plain text is left alone."""
    if "<" in text and _HTML_TAG.search(text):
        return " ".join(html.unescape(_HTML_TAG.sub(" ", text)).split())
    if "&" in text and ";" in text:
        return html.unescape(text)
    return text


def _attrs(row: Any, layout: _Layout) -> dict[str, Any]:
    attrs = {}
    for key, name in layout.extras:
        value = row[key]
        if isinstance(value, str):
            value = value.strip()
        if value is not None and value != "":
            attrs[name] = value
    return attrs


# -- records ----------------------------------------------------------------------------

def _item(vals: tuple, row: Any, layout: _Layout, origin: str) -> dict[str, Any]:
    item_id, title, description, category, categories, brand, price, stock, tags = vals
    amount = _number(price, "price")
    if amount is not None and amount < 0:
        raise _Bad("price", f"{price!r} is negative; a price is 0 or more")
    return {
        "item_id": _required(item_id, "item_id"), "title": _text(title, "title"),
        "description": _plain(_text(description, "description")),
        "category": _text(category, "category") or (
            _first_category(categories) if categories not in (None, "") else ""),
        "brand": _text(brand, "brand"), "price": amount, "in_stock": _in_stock(stock),
        "tags": _tags(tags), "attrs": _attrs(row, layout), "origin": origin,
    }


def _user(vals: tuple, row: Any, layout: _Layout, origin: str) -> User:
    return User(_required(vals[0], "user_id"), _attrs(row, layout), origin)


def _event(vals: tuple, row: Any, layout: _Layout, origin: str,
           window: tuple[float, float] | None = None) -> Event:
    user, item, kind, ts, value, event_id = vals
    user = _text(user, "user_id")
    item = _text(item, "item_id")
    if not user or not item:
        raise _Bad("user_id" if not user else "item_id", "is empty; every row needs one")
    moment = _timestamp(ts)
    if window is not None and not window[0] <= moment <= window[1]:
        when = datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds") \
            if -1e11 < moment < 1e11 else f"{moment:g} s"
        raise _Bad("timestamp", f"{ts!r} is {when}, {'before 1990' if moment < window[0] else 'more than a day ahead'}"
                                f"; check the unit (seconds, not milliseconds) or import with "
                                f"--allow-any-time")
    amount = None if value == "" or value is None else _number(value, "value")
    if amount is not None and abs(amount) > MAX_VALUE:
        raise _Bad("value", f"{value!r} is beyond ±{MAX_VALUE:g}")
    return Event(user, item, _kind(kind), moment, amount, _text(event_id, "event_id") or None, origin)


def _triple(vals: tuple, row: Any, layout: _Layout, origin: str) -> Triple:
    head, relation, tail = vals
    return Triple(_required(head, "head"), _required(relation, "relation"),
                  _required(tail, "tail"), origin)


def _link(vals: tuple, row: Any, layout: _Layout, origin: str) -> ItemEntity:
    return ItemEntity(_required(vals[0], "item_id"), _required(vals[1], "entity"), origin)


BUILDERS = {"items": _item, "users": _user, "events": _event, "triples": _triple, "links": _link}


def _records(kind: str, rows: Iterator[tuple[int, tuple, Any, _Layout]], shown: str,
             window: tuple[float, float] | None = None) -> Iterator[Any]:
    build = functools.partial(_event, window=window) if kind == "events" else BUILDERS[kind]
    for line, vals, row, layout in rows:
        try:
            yield build(vals, row, layout, f"{shown} line {line}")
        except _Bad as bad:
            if isinstance(row, list) and not any(cell.strip() for cell in row):
                continue  # a row of empty cells, as spreadsheets leave at the end
            raise ImportDataError(shown, line, bad.field, layout.problem(bad.field, bad.problem)) \
                from None


def _merge_variants(rows: Iterator[dict[str, Any]]) -> Iterator[Item]:
    """One Item per run of rows with the same item id; later rows fill in the blanks."""
    current: dict[str, Any] | None = None
    for row in rows:
        if current is not None and row["item_id"] == current["item_id"]:
            for key, value in row.items():
                if key == "tags":
                    current[key] = tuple(dict.fromkeys(current[key] + value))
                elif key == "attrs":
                    current[key] = {**value, **current[key]}
                elif key == "in_stock":
                    if value is not None:
                        current[key] = bool(current[key]) or value
                elif current[key] in ("", None):
                    current[key] = value
            continue
        if current is not None:
            yield _finish_item(current)
        current = row
    if current is not None:
        yield _finish_item(current)


def _finish_item(fields: dict[str, Any]) -> Item:
    if fields["in_stock"] is None:
        fields["in_stock"] = True
    return Item(**fields)


@hookimpl
def register_sources(register):
    register(CsvSource, JsonlSource)
