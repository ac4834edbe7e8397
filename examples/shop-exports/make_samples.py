"""Write the sample Shopify and WooCommerce exports in this folder (deterministic: seed 17).

    python examples/shop-exports/make_samples.py

A small coffee-and-kitchen shop: 30 products (some with size or colour variants), 60
customers, about 300 order lines from May to October 2025, a few cancelled or refunded
orders and many multi-line ones. The e-mail addresses are made up (example.com).
"""

from __future__ import annotations

import csv
import random
import re
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
START = datetime(2025, 5, 1, 8, 0)
DAYS = 183

# title, type, vendor, price, tags, variant option name, variant values
PRODUCTS = [
    ("Ethiopia Yirgacheffe Beans", "Coffee", "Northside Roasters", 14.50, "coffee, light roast, single origin", "Size", ["250g", "1kg"]),
    ("Colombia Huila Beans", "Coffee", "Northside Roasters", 13.00, "coffee, medium roast, single origin", "Size", ["250g", "1kg"]),
    ("House Espresso Blend", "Coffee", "Northside Roasters", 12.00, "coffee, dark roast, espresso", "Size", ["250g", "1kg"]),
    ("Decaf Swiss Water Beans", "Coffee", "Northside Roasters", 13.50, "coffee, decaf", "Size", ["250g", "1kg"]),
    ("Guatemala Antigua Beans", "Coffee", "Hilltop Coffee Co", 15.00, "coffee, medium roast, single origin", "Size", ["250g"]),
    ("Kenya AA Beans", "Coffee", "Hilltop Coffee Co", 16.50, "coffee, light roast, single origin", "Size", ["250g"]),
    ("Earl Grey Loose Leaf", "Tea", "Leaf & Kettle", 9.00, "tea, black tea", "Size", ["100g"]),
    ("Sencha Green Tea", "Tea", "Leaf & Kettle", 11.00, "tea, green tea, japanese", "Size", ["100g"]),
    ("Chamomile Blossom Tea", "Tea", "Leaf & Kettle", 8.50, "tea, herbal, caffeine free", "Size", ["100g"]),
    ("Masala Chai Blend", "Tea", "Leaf & Kettle", 10.00, "tea, spiced, black tea", "Size", ["100g"]),
    ("Stoneware Mug", "Mugs", "Clay Studio", 18.00, "mug, stoneware, handmade", "Color", ["Sand", "Slate", "Moss"]),
    ("Enamel Camp Mug", "Mugs", "Trailware", 12.00, "mug, enamel, outdoors", "Color", ["White", "Navy"]),
    ("Double-Wall Glass Cup", "Mugs", "Clearform", 16.00, "glass, espresso", "Size", ["80ml", "250ml"]),
    ("Travel Tumbler", "Mugs", "Trailware", 24.00, "travel, insulated", "Color", ["Black", "Sage"]),
    ("Pour-Over Dripper", "Brewing", "Clay Studio", 28.00, "brewing, pour over, ceramic", "Color", ["White", "Black"]),
    ("Paper Filters (100)", "Brewing", "Clearform", 6.00, "brewing, pour over, filters", "Size", ["Size 02"]),
    ("Glass Server 600ml", "Brewing", "Clearform", 22.00, "brewing, pour over, glass", "Size", ["600ml"]),
    ("French Press", "Brewing", "Kitchen Hearth", 34.00, "brewing, immersion", "Size", ["350ml", "1L"]),
    ("Hand Grinder", "Brewing", "Kitchen Hearth", 59.00, "grinder, brewing, manual", "Size", ["Standard"]),
    ("Gooseneck Kettle", "Brewing", "Kitchen Hearth", 49.00, "kettle, pour over", "Color", ["Matte Black", "Steel"]),
    ("Digital Coffee Scale", "Brewing", "Clearform", 32.00, "scale, brewing", "Size", ["Standard"]),
    ("Moka Pot", "Brewing", "Kitchen Hearth", 29.00, "brewing, stovetop, espresso", "Size", ["3 cup", "6 cup"]),
    ("Cold Brew Bottle", "Brewing", "Clearform", 26.00, "cold brew, summer", "Size", ["1L"]),
    ("Linen Tea Towel", "Kitchen", "Homespun", 11.00, "kitchen, linen", "Color", ["Oat", "Rust"]),
    ("Walnut Serving Board", "Kitchen", "Homespun", 38.00, "kitchen, wood, gift", "Size", ["Small", "Large"]),
    ("Honey Jar with Dipper", "Kitchen", "Homespun", 14.00, "kitchen, gift, honey", "Size", ["Standard"]),
    ("Almond Biscotti", "Pantry", "Nonna's Bakery", 7.50, "snack, biscuits, pantry", "Size", ["200g"]),
    ("Dark Chocolate Bar", "Pantry", "Cacao Lane", 5.00, "chocolate, snack, pantry", "Size", ["80g"]),
    ("Canvas Apron", "Apparel", "Homespun", 36.00, "apparel, barista", "Size", ["S/M", "L/XL"]),
    ("Gift Card", "Gift Cards", "Shelfwise Coffee", 25.00, "gift", "Denominations", ["$25", "$50"]),
]
FIRST = ["Ava", "Noah", "Mia", "Liam", "Zoe", "Ethan", "Lena", "Omar", "Priya", "Lucas", "Hana",
         "Diego", "Chloe", "Jonas", "Maya", "Felix", "Aisha", "Leo", "Nora", "Sam"]
LAST = ["Khan", "Meyer", "Rossi", "Nguyen", "Okafor", "Silva", "Larsen", "Cohen", "Tanaka",
        "Murphy", "Garcia", "Novak", "Dubois", "Patel", "Berg"]
PLACES = [("US", "CA"), ("US", "NY"), ("US", "WA"), ("CA", "ON"), ("CA", "BC"), ("GB", ""),
          ("DE", ""), ("AU", "NSW")]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def catalogue(rng: random.Random) -> list[dict]:
    products = []
    for n, (title, kind, vendor, price, tags, option, values) in enumerate(PRODUCTS):
        variants = []
        for v, value in enumerate(values):
            step = {"1kg": 3.2, "$50": 2.0, "Large": 1.4, "1L": 1.3, "250ml": 1.2, "6 cup": 1.25}
            variants.append({"option": value, "sku": f"SW-{n + 1:03d}-{v + 1}",
                             "price": round(price * step.get(value, 1.0), 2),
                             "qty": rng.choice([0, 3, 8, 12, 25, 40]) if rng.random() < 0.9 else 0})
        products.append({"handle": slug(title), "title": title, "type": kind, "vendor": vendor,
                         "tags": tags, "option": option, "variants": variants, "woo_id": 100 + n * 10,
                         "body": f"<p>{title} from {vendor}. <strong>Small batch</strong>, "
                                 f"chosen by our team.</p>",
                         "status": "draft" if n == 29 else "active"})
    return products


def customers(rng: random.Random) -> list[dict]:
    people = []
    for n in range(60):
        first, last = FIRST[n % len(FIRST)], LAST[(n * 7) % len(LAST)]
        country, province = PLACES[rng.randrange(len(PLACES))]
        people.append({"id": 7000000000 + n * 1117, "first": first, "last": last,
                       "email": f"{first.lower()}.{last.lower()}{n}@example.com",
                       "country": country, "province": province,
                       "tags": rng.choice(["", "VIP", "wholesale", "newsletter", "VIP, newsletter"]),
                       "marketing": rng.choice(["yes", "no"])})
    return people


def orders(rng: random.Random, products: list[dict], people: list[dict]) -> list[dict]:
    """Orders until ~300 lines: each customer favours one or two product types."""
    types = sorted({p["type"] for p in products if p["status"] == "active"})
    taste = [rng.sample(types, 2) for _ in people]
    result, lines, number = [], 0, 1001
    moments = sorted(START + timedelta(minutes=rng.randrange(DAYS * 24 * 60)) for _ in range(220))
    for moment in moments:
        who = rng.randrange(len(people))
        liked = [p for p in products if p["type"] in taste[who] and p["status"] == "active"]
        others = [p for p in products if p["status"] == "active"]
        picks = []
        for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
            product = rng.choice(liked if rng.random() < 0.75 else others)
            if product not in [p for p, _ in picks]:
                picks.append((product, rng.choice(product["variants"])))
        state = rng.choices(["paid", "refunded", "voided", "cancelled", "partially_refunded"],
                            [88, 4, 2, 4, 2])[0]
        result.append({"number": number, "id": 5200000000 + number * 13, "who": people[who],
                       "at": moment, "state": state,
                       "lines": [(p, v, rng.choice([1, 1, 1, 2, 3])) for p, v in picks]})
        number += 1
        lines += len(picks)
        if lines >= 300:
            break
    return result


def write(name: str, header: list[str], rows: list[list]) -> None:
    with open(HERE / name, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)


def shopify(products, people, history) -> None:
    header = ["Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags",
              "Published", "Option1 Name", "Option1 Value", "Variant SKU", "Variant Grams",
              "Variant Inventory Tracker", "Variant Inventory Qty", "Variant Price",
              "Variant Compare At Price", "Variant Requires Shipping", "Image Src", "Status"]
    rows = []
    for p in products:
        for i, v in enumerate(p["variants"]):
            head = [p["title"], p["body"], p["vendor"], "Food, Beverages & Tobacco", p["type"],
                    p["tags"], "TRUE"] if i == 0 else ["", "", "", "", "", "", ""]
            rows.append([p["handle"], *head, p["option"] if i == 0 else "", v["option"], v["sku"],
                         250, "shopify", v["qty"], f"{v['price']:.2f}", "", "TRUE",
                         f"https://cdn.example.com/{p['handle']}.jpg" if i == 0 else "",
                         p["status"] if i == 0 else ""])
    write("shopify-products.csv", header, rows)

    header = ["Name", "Email", "Financial Status", "Paid at", "Fulfillment Status", "Fulfilled at",
              "Accepts Marketing", "Currency", "Subtotal", "Shipping", "Taxes", "Total",
              "Discount Code", "Created at", "Lineitem quantity", "Lineitem name",
              "Lineitem price", "Lineitem compare at price", "Lineitem sku",
              "Lineitem requires shipping", "Lineitem fulfillment status", "Billing Name",
              "Shipping Country", "Cancelled at", "Payment Method", "Refunded Amount", "Vendor", "Id"]
    rows = []
    for o in history:
        subtotal = sum(v["price"] * q for _, v, q in o["lines"])
        stamp = o["at"].strftime("%Y-%m-%d %H:%M:%S -0400")
        paid = o["state"] != "voided"
        cancelled = (o["at"] + timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S -0400") \
            if o["state"] == "cancelled" else ""
        financial = "refunded" if o["state"] == "cancelled" else o["state"]
        refunded = f"{subtotal:.2f}" if financial == "refunded" else (
            f"{subtotal / 3:.2f}" if financial == "partially_refunded" else "0.00")
        for i, (p, v, q) in enumerate(o["lines"]):
            order = [o["who"]["email"], financial, stamp if paid else "",
                     "fulfilled" if not cancelled else "unfulfilled", stamp if not cancelled else "",
                     o["who"]["marketing"], "USD", f"{subtotal:.2f}", "5.00", "0.00",
                     f"{subtotal + 5:.2f}", "", stamp]
            if i:
                order = [o["who"]["email"]] + [""] * 12
            rows.append([f"#{o['number']}", *order, q, f"{p['title']} - {v['option']}",
                         f"{v['price']:.2f}", "", v["sku"], "true", "fulfilled",
                         f"{o['who']['first']} {o['who']['last']}" if not i else "",
                         o["who"]["country"] if not i else "", cancelled if not i else "",
                         "Shopify Payments" if not i else "", refunded if not i else "",
                         p["vendor"], o["id"] if not i else ""])
    write("shopify-orders.csv", header, rows)

    header = ["Customer ID", "First Name", "Last Name", "Email", "Accepts Email Marketing",
              "Default Address Company", "Default Address Address1", "Default Address City",
              "Default Address Province Code", "Default Address Country Code",
              "Default Address Zip", "Phone", "Total Spent", "Total Orders", "Note",
              "Tax Exempt", "Tags"]
    spent: dict[str, float] = {}
    count: dict[str, int] = {}
    for o in history:
        email = o["who"]["email"]
        spent[email] = spent.get(email, 0) + sum(v["price"] * q for _, v, q in o["lines"])
        count[email] = count.get(email, 0) + 1
    rows = [[f"'{c['id']}", c["first"], c["last"], c["email"], c["marketing"], "",
             f"{10 + n} Market Street", "Springfield", c["province"], c["country"], "12345",
             f"+1 555 01{n:02d}", f"{spent.get(c['email'], 0):.2f}", count.get(c["email"], 0),
             "", "no", c["tags"]] for n, c in enumerate(people)]
    write("shopify-customers.csv", header, rows)


def woocommerce(products, history) -> None:
    header = ["ID", "Type", "SKU", "Name", "Published", "Is featured?", "Visibility in catalog",
              "Short description", "Description", "In stock?", "Stock", "Regular price",
              "Sale price", "Categories", "Tags", "Images", "Parent", "Attribute 1 name",
              "Attribute 1 value(s)", "Brands"]
    rows = []
    for p in products:
        published = 1 if p["status"] == "active" else -1
        variable = len(p["variants"]) > 1
        base = f"NS-{p['woo_id']}"
        values = ", ".join(v["option"] for v in p["variants"])
        first = p["variants"][0]
        rows.append([p["woo_id"], "variable" if variable else "simple", base, p["title"], published,
                     0, "visible", f"{p['title']} from {p['vendor']}.", p["body"],
                     "" if variable else int(first["qty"] > 0), "" if variable else first["qty"],
                     "" if variable else f"{first['price']:.2f}", "",
                     f"Shop > {p['type']}", p["tags"], f"https://cdn.example.com/{p['handle']}.jpg",
                     "", p["option"], values, p["vendor"]])
        if variable:
            for i, v in enumerate(p["variants"]):
                parent = f"id:{p['woo_id']}" if i % 2 == 0 else base
                rows.append([p["woo_id"] + i + 1, "variation", v["sku"], f"{p['title']} - {v['option']}",
                             1, 0, "visible", "", "", int(v["qty"] > 0), v["qty"],
                             f"{v['price']:.2f}", "", "", "", "", parent, p["option"],
                             v["option"], ""])
    write("woocommerce-products.csv", header, rows)

    header = ["Order Number", "Order Status", "Order Date", "Customer Note", "First Name (Billing)",
              "Last Name (Billing)", "Email (Billing)", "Country Code (Billing)",
              "Payment Method Title", "Cart Discount Amount", "Order Subtotal Amount",
              "Order Shipping Amount", "Order Total Amount", "Item #", "SKU", "Product Name",
              "Quantity", "Item Cost", "Order Line Total"]
    status = {"paid": "completed", "partially_refunded": "completed", "refunded": "refunded",
              "voided": "failed", "cancelled": "cancelled"}
    rows = []
    for o in history:
        subtotal = sum(v["price"] * q for _, v, q in o["lines"])
        for i, (p, v, q) in enumerate(o["lines"]):
            sku = v["sku"] if len(p["variants"]) > 1 else f"NS-{p['woo_id']}"
            rows.append([o["number"] + 4000, status[o["state"]], o["at"].strftime("%Y-%m-%d %H:%M"),
                         "", o["who"]["first"], o["who"]["last"], o["who"]["email"],
                         o["who"]["country"], "Credit card", "0", f"{subtotal:.2f}", "5.00",
                         f"{subtotal + 5:.2f}", i + 1, sku,
                         f"{p['title']} - {v['option']}" if len(p["variants"]) > 1 else p["title"],
                         q, f"{v['price']:.2f}", f"{v['price'] * q:.2f}"])
    write("woocommerce-orders.csv", header, rows)


def main() -> None:
    rng = random.Random(17)
    products = catalogue(rng)
    people = customers(rng)
    history = orders(rng, products, people)
    shopify(products, people, history)
    woocommerce(products, history)


if __name__ == "__main__":
    main()
