"""Data source `recbole`: RecBole atomic files, such as MovieLens-100K with its Freebase
knowledge graph.

    shelfwise import recbole path/to/ml-100k                 # the folder
    shelfwise import recbole path/to/datasets --name ml-100k  # when it holds several

A data set NAME is up to five tab-separated UTF-8 files (Latin-1 is accepted too) in one
folder, each headed by `field:type` columns (types token, token_seq, float, float_seq) in
any order:

    NAME.inter  user_id (or session_id), item_id, rating, timestamp → Event. With a rating
                the kind is "rating" and the value the rating; without, the kind is "view".
                Without a timestamp the line number stands in for it (file order). Rows
                with label 0 (negative samples of CTR data sets) are skipped.
    NAME.item   item_id and whatever else → Item: the title field (movie_title, title,
                name, …) plus the release year when there is one ("Toy Story (1995)"); the
                genre field (class, genre, categories) gives the category (first genre) and
                the tags (all genres); price, brand and description when present; every
                other field goes into attrs, typed by its declared type.
    NAME.user   user_id + attrs → User
    NAME.kg     head_id, relation_id, tail_id → Triple
    NAME.link   item_id, entity_id → ItemEntity

Events carry no id of their own: the store derives one from their content, so importing the
same files again adds nothing. Only the files are read; RecBole itself is never imported.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator

from engine import (
    DataSource, EngineError, Event, ImportDataError, Item, ItemEntity, Record, Triple, User,
    detect_encoding, hookimpl,
)

EXTENSIONS = ("item", "user", "inter", "kg", "link")  # the order they are read in
REQUIRED = {
    "inter": (("user_id", "session_id"), ("item_id",)),
    "item": (("item_id",),),
    "user": (("user_id",),),
    "kg": (("head_id",), ("relation_id",), ("tail_id",)),
    "link": (("item_id",), ("entity_id",)),
}
TITLE_FIELDS = ("movie_title", "title", "name", "item_name", "book_title", "product_name")
YEAR_FIELDS = ("release_year", "year", "publish_year", "year_of_publication")
GENRE_FIELDS = ("class", "genre", "genres", "categories", "category")

_YEAR = re.compile(r"\d{3,4}")


class RecBoleSource(DataSource):
    name: ClassVar[str] = "recbole"
    description: ClassVar[str] = ("RecBole atomic files (.inter .item .user .kg .link) from a "
                                  "folder, e.g. MovieLens-100K with its knowledge graph")

    def read(self, location: str | None, **options: Any) -> Iterator[Record]:
        unknown = sorted(k for k in options if k != "name")
        if unknown:
            raise EngineError(
                f"Unknown option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))} for the recbole source. Valid options: name "
                f"(which data set of the folder to read, e.g. --name ml-100k).")
        folder, dataset = _locate(location, options.get("name"))
        for ext in EXTENSIONS:
            path = folder / f"{dataset}.{ext}"
            if path.is_file():
                yield from READERS[ext](_Table(path, ext))


def _locate(location: str | None, name: str | None) -> tuple[Path, str]:
    """The folder and the data set name, from a folder (or one of its files) and --name."""
    if location is None or str(location) == "":
        raise EngineError("The recbole source needs the folder of the data set, e.g. "
                          "\"shelfwise import recbole path/to/ml-100k\".")
    where = Path(location)
    if where.is_file():
        folder, name = where.parent, name or where.stem
    elif where.is_dir():
        folder = where
    else:
        raise ImportDataError(str(location), None, None, "no such file or folder")
    found = sorted({p.stem for p in folder.iterdir()
                    if p.suffix[1:] in EXTENSIONS and p.is_file()})
    if name is None:
        if len(found) == 1:
            return folder, found[0]
        if not found:
            raise ImportDataError(str(location), None, None, (
                "no RecBole files here (NAME.inter, NAME.item, NAME.user, NAME.kg, NAME.link)"))
        raise EngineError(f"{location} holds several RecBole data sets: {', '.join(found)}. "
                          f"Choose one with the name option, e.g. --name {found[0]}.")
    if name not in found:
        raise ImportDataError(str(location), None, None, (
            f"no RecBole data set named {name!r} here; found: {', '.join(found) or 'none'}"))
    return folder, name


class _Table:
    """One atomic file: its fields (name -> column, type) and its rows with line numbers."""

    def __init__(self, path: Path, ext: str):
        self.path, self.ext, self.shown = path, ext, str(path)
        self.encoding = detect_encoding(path)
        with open(path, encoding=self.encoding, newline="") as f:
            header = f.readline().rstrip("\r\n")
        if not header.strip():
            raise ImportDataError(self.shown, 1, None,
                                  "the file is empty; the first line must name the fields")
        self.names: list[str] = []
        self.types: list[str] = []
        for cell in header.split("\t"):
            field, _, kind = cell.strip().partition(":")
            self.names.append(field)
            self.types.append(kind or "token")
        self.width = len(self.names)
        for choices in REQUIRED[ext]:
            if not any(c in self.names for c in choices):
                raise ImportDataError(self.shown, 1, None, (
                    f"missing field '{choices[0]}:token'"
                    + (f" (or {', '.join(choices[1:])})" if len(choices) > 1 else "")
                    + f"; found: {header.replace(chr(9), ', ')}"))

    def column(self, *choices: str) -> int | None:
        for choice in choices:
            if choice in self.names:
                return self.names.index(choice)
        return None

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        with open(self.path, encoding=self.encoding, newline="") as f:
            f.readline()
            for line, text in enumerate(f, start=2):
                cells = text.rstrip("\r\n").split("\t")
                if len(cells) != self.width:
                    if len(cells) < self.width:
                        if not text.strip():
                            continue
                        cells.extend([""] * (self.width - len(cells)))
                    else:
                        raise ImportDataError(self.shown, line, None, (
                            f"{len(cells)} tab-separated values but the header has "
                            f"{self.width} fields"))
                yield line, cells

    def origin(self, line: int) -> str:
        return f"{self.shown} line {line}"

    def required(self, cells: list[str], column: int, line: int) -> str:
        value = cells[column].strip()
        if not value:
            raise ImportDataError(self.shown, line, self.names[column], "is empty")
        return value

    def number(self, cells: list[str], column: int, line: int) -> float | None:
        text = cells[column].strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or "_" in text:
            raise ImportDataError(self.shown, line, self.names[column],
                                  f"{text!r} is not a number")
        return value

    def typed(self, cells: list[str], column: int, line: int) -> Any:
        """A value as its declared type says: token str, float, or lists of either."""
        kind, text = self.types[column], cells[column].strip()
        if kind == "float":
            return self.number(cells, column, line)
        if kind == "token_seq":
            return text.split()
        if kind == "float_seq":
            try:
                return [float(x) for x in text.split()]
            except ValueError:
                raise ImportDataError(self.shown, line, self.names[column],
                                      f"{text!r} is not a list of numbers") from None
        return text


def _read_inter(table: _Table) -> Iterator[Event]:
    user = table.column("user_id", "session_id")
    item = table.column("item_id")
    rating = table.column("rating")
    stamp = table.column("timestamp")
    label = table.column("label")
    kind = "view" if rating is None else "rating"
    shown = table.shown
    for line, cells in table.rows():
        if label is not None and table.number(cells, label, line) == 0:
            continue
        if stamp is None:
            ts = float(line)
        else:
            ts = table.number(cells, stamp, line)
            if ts is None:
                raise ImportDataError(shown, line, "timestamp", "is empty")
            if ts > 1e11:  # milliseconds
                ts /= 1e3
        yield Event(table.required(cells, user, line), table.required(cells, item, line), kind,
                    ts, None if rating is None else table.number(cells, rating, line), None,
                    f"{shown} line {line}")


def _read_item(table: _Table) -> Iterator[Item]:
    item = table.column("item_id")
    title = table.column(*TITLE_FIELDS)
    year = table.column(*YEAR_FIELDS)
    genre = table.column(*GENRE_FIELDS)
    price = table.column("price")
    brand = table.column("brand")
    description = table.column("description")
    used = {item, title, genre, price, brand, description}
    others = [c for c in range(table.width) if c not in used]
    for line, cells in table.rows():
        name = cells[title].strip() if title is not None else ""
        released = cells[year].strip() if year is not None else ""
        if name and _YEAR.fullmatch(released) and not name.endswith(f"({released})"):
            name = f"{name} ({released})"
        genres = tuple(dict.fromkeys(cells[genre].split())) if genre is not None else ()
        cost = table.number(cells, price, line) if price is not None else None
        if cost is not None and cost < 0:
            raise ImportDataError(table.shown, line, "price", f"{cost!r} is negative")
        attrs = {}
        for c in others:
            value = table.typed(cells, c, line)
            if value not in ("", None, []):
                attrs[table.names[c]] = value
        yield Item(
            table.required(cells, item, line), title=name,
            description=cells[description].strip() if description is not None else "",
            category=genres[0] if genres else "",
            brand=cells[brand].strip() if brand is not None else "",
            price=cost,
            tags=genres, attrs=attrs, origin=table.origin(line))


def _read_user(table: _Table) -> Iterator[User]:
    user = table.column("user_id")
    others = [c for c in range(table.width) if c != user]
    for line, cells in table.rows():
        attrs = {}
        for c in others:
            value = table.typed(cells, c, line)
            if value not in ("", None, []):
                attrs[table.names[c]] = value
        yield User(table.required(cells, user, line), attrs, table.origin(line))


def _read_kg(table: _Table) -> Iterator[Triple]:
    head, relation, tail = (table.column(f) for f in ("head_id", "relation_id", "tail_id"))
    for line, cells in table.rows():
        yield Triple(table.required(cells, head, line), table.required(cells, relation, line),
                     table.required(cells, tail, line), table.origin(line))


def _read_link(table: _Table) -> Iterator[ItemEntity]:
    item, entity = table.column("item_id"), table.column("entity_id")
    for line, cells in table.rows():
        yield ItemEntity(table.required(cells, item, line), table.required(cells, entity, line),
                         table.origin(line))


READERS = {"inter": _read_inter, "item": _read_item, "user": _read_user, "kg": _read_kg,
           "link": _read_link}


@hookimpl
def register_sources(register):
    register(RecBoleSource)
