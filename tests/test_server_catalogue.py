"""Catalogue sync over HTTP with the semantic layer (real MiniLM weights, real HNSW index):
a product added with PUT /items is encoded and indexed at once, so search, similar items
and content recall show it without a retrain."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from engine.server import create_app

from .server_support import SEMANTIC_PLUGINS, copy_db

NEW = {"item_id": "p09999", "title": "Provence 3-Stage Knife Sharpener",
       "description": "A heavy-duty knife sharpener made of corundum, for kitchen knives. "
                      "Three stages, a non-slip base for safety.",
       "category": "Knife Sharpeners", "brand": "Küchenwerk", "price": 39.99,
       "tags": ["kitchen", "corundum"]}


@pytest.mark.slow
def test_a_new_product_is_recommendable_without_a_retrain(semantic_shop_db, tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", SEMANTIC_PLUGINS)
    db = copy_db(semantic_shop_db, tmp_path)
    with TestClient(create_app(db)) as c:
        def trained():
            return {m["name"]: m["version"] for m in c.get("/status").json()["models"]
                    if not m["name"].startswith("index/")}

        before = trained()
        shown = c.get("/recommend/u00000?n=20").json()["items"]
        assert NEW["item_id"] not in [i["item_id"] for i in shown]
        assert c.get("/search?q=knife sharpener three stage&n=5").status_code == 200
        changed = c.put("/items", json={"items": [NEW]}).json()
        assert changed["changed"] == 1 and changed["vectors"]["encoded"] == 1
        found = c.get("/search?q=knife sharpener three stage&n=5").json()["items"]
        assert found[0]["item_id"] == NEW["item_id"]
        similar = c.get(f"/similar/{NEW['item_id']}?n=5").json()["items"]
        assert sum(i["category"] == "Knife Sharpeners" for i in similar) >= 3
        recs = c.get("/recommend/u00000?n=20").json()
        assert recs["cached"] is False, "a catalogue change drops cached lists"
        new = [i for i in recs["items"] if i["item_id"] == NEW["item_id"]]
        assert new and new[0]["source"] == "content" and "new arrival" in new[0]["reason"]
        assert c.delete(f"/items/{NEW['item_id']}").json() == {"removed": 1}
        assert NEW["item_id"] not in [i["item_id"] for i in c.get("/search?q=knife sharpener three stage&n=5").json()["items"]]
        assert trained() == before, "no retrain: only the vector index changed"
