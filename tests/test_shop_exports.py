"""The shopify and woocommerce sources (plugins/shops.py) against the sample exports in
examples/shop-exports/ and small hand-written files."""

from __future__ import annotations

import csv
import hashlib
import hmac
from pathlib import Path

import pytest

from engine import EngineError, ImportDataError
from engine.engine import Engine
from engine.plugins import load_plugins
from plugins import shops
from plugins.shops import ShopifySource, WooCommerceSource
from engine.testing import SourceContract
from tests.conftest import CORE_PLUGINS

SAMPLES = Path(__file__).parent.parent / "examples" / "shop-exports"
SHOPIFY = {"products": str(SAMPLES / "shopify-products.csv"),
           "orders": str(SAMPLES / "shopify-orders.csv"),
           "customers": str(SAMPLES / "shopify-customers.csv")}
WOO = {"products": str(SAMPLES / "woocommerce-products.csv"),
       "orders": str(SAMPLES / "woocommerce-orders.csv")}


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",shops")
    monkeypatch.delenv(shops.KEY_ENV, raising=False)
    eng = Engine(tmp_path / "shelfwise.db", registry=load_plugins())
    yield eng
    eng.db.close()


def table(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def customer(email, key=shops.DEFAULT_CUSTOMER_KEY):
    return "c-" + hmac.new(key.encode(), email.lower().encode(), hashlib.sha256).hexdigest()[:20]


def rows(eng, sql, *args):
    return eng.db.execute(sql, args).fetchall()


def expected_lines(orders, skipped):
    """Order lines of the sample that are not in a skipped order, with their order's fields."""
    result, order = [], {}
    for row in orders:
        if row.get("Name", row.get("Order Number")) != order.get("name"):
            order = {"name": row.get("Name", row.get("Order Number")), **row}
        if not skipped(order):
            result.append((order, row))
    return result


def test_hook_register_sources():
    found = []
    shops.register_sources(register=lambda *classes: found.extend(classes))
    assert [cls.name for cls in found] == ["shopify", "woocommerce"]
    assert all(cls.description for cls in found)


def test_shopify_sample_imports_with_variants_mapped_and_cancelled_orders_skipped(engine):
    report = engine.import_data("shopify", None, **SHOPIFY)
    products = table(SHOPIFY["products"])
    orders = table(SHOPIFY["orders"])
    kept = expected_lines(orders, lambda o: o["Cancelled at"] or o["Financial Status"] in ("refunded", "voided"))
    assert 250 <= len(orders) <= 320 and len(kept) < len(orders)  # some orders are skipped
    assert report.items == len({p["Handle"] for p in products}) == 30
    assert report.users == 60
    assert report.events == len(kept)

    handle_of = {p["Variant SKU"]: p["Handle"] for p in products}
    stored = {(u, i, round(v, 2)) for u, i, v in rows(engine, "SELECT user_id, item_id, value FROM events")}
    for order, line in kept:
        # each line is its variant's product, bought by the hashed customer, at quantity x price
        value = round(int(line["Lineitem quantity"]) * float(line["Lineitem price"]), 2)
        assert (customer(order["Email"]), handle_of[line["Lineitem sku"]], value) in stored
    assert any(int(line["Lineitem quantity"]) > 1 for _, line in kept)
    skipped = {o["Id"] for o in orders if o["Id"] and (
        o["Cancelled at"] or o["Financial Status"] in ("refunded", "voided"))}
    assert skipped
    for order_id in skipped:
        assert not rows(engine, "SELECT 1 FROM events WHERE event_id LIKE ?", f"shopify:{order_id}:%")
    assert rows(engine, "SELECT 1 FROM events WHERE event_id LIKE ?", f"shopify:{kept[0][0]['Id']}:%")
    assert not rows(engine, "SELECT 1 FROM events WHERE item_id NOT IN (SELECT item_id FROM items)")

    shirt = engine.db["items"].get("house-espresso-blend")
    assert shirt["price"] == 12.0 and shirt["category"] == "Coffee" and "<p>" not in shirt["description"]
    assert not engine.db["items"].get("gift-card")["in_stock"]  # a draft product

    again = engine.import_data("shopify", None, **SHOPIFY)
    assert again.duplicates == report.events  # stable event ids: re-importing adds nothing


def test_woocommerce_sample_imports_with_variations_mapped_to_their_parent(engine):
    report = engine.import_data("woocommerce", None, **WOO)
    products = table(WOO["products"])
    orders = table(WOO["orders"])
    kept = expected_lines(orders, lambda o: o["Order Status"] in ("cancelled", "refunded", "failed"))
    assert report.items == sum(p["Type"] != "variation" for p in products) == 30
    assert report.events == len(kept) < len(orders)

    by_id = {p["ID"]: p for p in products}
    by_sku = {p["SKU"]: p for p in products}

    def product_of(sku):
        row = by_sku[sku]
        parent = row["Parent"]
        if not parent:
            return row["SKU"]
        return (by_id[parent[3:]] if parent.startswith("id:") else by_sku[parent])["SKU"]

    stored = {(u, i, round(v, 2)) for u, i, v in rows(engine, "SELECT user_id, item_id, value FROM events")}
    for order, line in kept:
        value = round(int(line["Quantity"]) * float(line["Item Cost"]), 2)
        assert (customer(order["Email (Billing)"]), product_of(line["SKU"]), value) in stored
    assert any(by_sku[line["SKU"]]["Type"] == "variation" for _, line in kept)
    assert not rows(engine, "SELECT 1 FROM events WHERE item_id NOT IN (SELECT item_id FROM items)")
    variable = engine.db["items"].get("NS-100")  # price from its cheapest variation
    assert variable["title"] == "Ethiopia Yirgacheffe Beans" and variable["price"] == 14.5


def test_no_email_address_is_stored(engine, tmp_path):
    engine.import_data("shopify", None, **SHOPIFY)
    engine.import_data("woocommerce", None, **WOO)
    data = b"".join(p.read_bytes() for p in tmp_path.glob("shelfwise.db*"))
    emails = {r["Email"] for r in table(SHOPIFY["customers"])}
    assert len(emails) == 60
    for email in emails:
        assert email.encode() not in data
        assert email.split("@")[0].encode() not in data
    assert b"@example.com" not in data


def test_customer_key_changes_the_ids(tmp_path, monkeypatch):
    files = tmp_path / "shop"
    files.mkdir()
    (files / "products.csv").write_text("Handle,Title,Variant SKU,Variant Price\nmug,Mug,M-1,9.00\n")
    (files / "orders.csv").write_text(
        "Name,Email,Financial Status,Created at,Lineitem quantity,Lineitem price,Lineitem sku\n"
        "#1,Ann@Example.com,paid,2025-05-01 10:00:00 -0400,2,9.00,M-1\n")
    monkeypatch.delenv(shops.KEY_ENV, raising=False)
    default = list(ShopifySource().read(str(files)))[-1]
    assert default.user_id == customer("ann@example.com") and default.value == 18.0
    keyed = list(ShopifySource().read(str(files), customer_key="s3cret"))[-1]
    assert keyed.user_id == customer("ann@example.com", "s3cret")
    monkeypatch.setenv(shops.KEY_ENV, "s3cret")
    assert list(ShopifySource().read(str(files)))[-1].user_id == keyed.user_id
    # the CLI's --items / --events names work too
    aliased = list(ShopifySource().read(None, items=str(files / "products.csv"),
                                        events=str(files / "orders.csv")))
    assert aliased[-1].item_id == "mug"


def test_bad_file_names_file_line_and_column_and_writes_nothing(engine, tmp_path):
    bad = tmp_path / "orders.csv"
    text = Path(SHOPIFY["orders"]).read_text().splitlines()
    header = next(csv.reader([text[0]]))
    row = next(csv.reader([text[40]]))
    row[header.index("Lineitem quantity")] = "two"
    text[40] = ",".join(f'"{c}"' for c in row)
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(ImportDataError) as caught:
        engine.import_data("shopify", None, products=SHOPIFY["products"], orders=str(bad))
    error = caught.value
    assert (error.location, error.line, error.field) == (str(bad), 41, "Lineitem quantity")
    assert "'two' is not a number" in str(error)
    assert engine.db["items"].count == 0 and engine.db["events"].count == 0

    with pytest.raises(ImportDataError, match=r"line 1: Lineitem price: missing column"):
        wrong = tmp_path / "wrong.csv"
        wrong.write_text("Name,Email,Created at,Lineitem quantity\n#1,a@b.c,2025-05-01,1\n")
        engine.import_data("shopify", None, products=SHOPIFY["products"], orders=str(wrong))

    future = tmp_path / "woo.csv"
    future.write_text("Order Number,Order Status,Order Date,Billing Email,SKU,Quantity,Item Cost\n"
                      "1,completed,2999-01-01 10:00,a@b.c,NS-100,1,3\n")
    with pytest.raises(ImportDataError) as caught:
        engine.import_data("woocommerce", None, products=WOO["products"], orders=str(future))
    assert (caught.value.line, caught.value.field) == (2, "Order Date")
    assert engine.db["items"].count == 0

    with pytest.raises(EngineError, match="needs the products export"):
        engine.import_data("woocommerce", None, orders=WOO["orders"])
    with pytest.raises(EngineError, match="Unknown option 'customers' for the woocommerce"):
        engine.import_data("woocommerce", None, customers=SHOPIFY["customers"], **WOO)


def test_woocommerce_variation_with_unknown_parent_is_named(tmp_path):
    products = tmp_path / "products.csv"
    products.write_text("ID,Type,SKU,Name,Regular price,Parent\n"
                        "1,variable,TEE,Tee,,\n2,variation,TEE-S,Tee - S,10,id:1\n"
                        "3,variation,TEE-M,Tee - M,11,id:9\n")
    with pytest.raises(ImportDataError) as caught:
        list(WooCommerceSource().read(None, products=str(products)))
    assert (caught.value.line, caught.value.field) == (4, "Parent")


def test_shopify_export_trains_and_recommends_with_reasons(engine):
    engine.import_data("shopify", None, **SHOPIFY)
    engine.train()
    orders = table(SHOPIFY["orders"])
    email = max({o["Email"] for o in orders}, key=lambda e: sum(o["Email"] == e for o in orders))
    recs = engine.recommend(customer(email), n=5)
    assert recs and all(r.reason for r in recs)
    assert {r.item_id for r in recs} <= {i for (i,) in rows(engine, "SELECT item_id FROM items")}


def test_the_readme_path_from_a_shopify_export_to_a_campaign(tmp_path, monkeypatch):
    """README's "Your own shop, in five commands", run as written (but the TUI), from the
    repository root: import the sample exports, train, find a product, write every list."""
    import re
    import shlex

    from click.testing import CliRunner

    from engine.cli import cli

    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS + ",shops")
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    readme = (root / "README.md").read_text()
    block = re.search(r"## Your own shop, in five commands.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [shlex.split(line.split("#")[0].replace("\\\n", " ")) for line in
                block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [c[3] for c in commands] == ["import", "train", "items", "recommend", "tui"]
    db = tmp_path / "myshop.db"
    outputs = {}
    for command in commands[:4]:
        args = [a for a in command[1:] if a not in (">", "campaign.tsv")]
        args[args.index("myshop.db")] = str(db)
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (command, result.output)
        outputs[command[3]] = result.stdout
    assert "Imported 30 items, 60 users" in outputs["import"]
    assert "kettle" in outputs["items"].lower()
    rows = [line.split("\t") for line in outputs["recommend"].splitlines()[1:]]
    assert len({r[0] for r in rows}) >= 50 and all(r[0].startswith("c-") for r in rows)


class TestShopifySourceContract(SourceContract):
    def make(self):
        return ShopifySource()

    def sample(self, folder):
        return None, dict(SHOPIFY)

    def broken(self, folder):
        """One paid order line with a quantity that is not a number."""
        with open(SHOPIFY["orders"], newline="") as f:
            rows = list(csv.reader(f))
        header = rows[0]
        paid = next(r for r in rows[1:] if r[header.index("Financial Status")] == "paid")
        paid[header.index("Lineitem quantity")] = "many"
        orders = folder / "orders.csv"
        with open(orders, "w", newline="") as f:
            csv.writer(f).writerows([header, paid])
        return None, {"products": SHOPIFY["products"], "orders": str(orders)}
