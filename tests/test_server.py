"""The HTTP API (engine.server) through the ASGI app with FastAPI's TestClient: answers,
the per-user recommendation cache, idempotent events, catalogue sync, erasure, keys,
scopes, rate limits, limits, CORS and problem+json errors. Real SQLite, real models (the
synthetic shop trained with the core plugins); the real-socket tests are in
test_server_live.py."""

from __future__ import annotations

import json
import os
import time

import pytest
from fastapi.testclient import TestClient

from engine.engine import Engine
from engine.server import create_app

from . import shop
from .server_support import build_shop_db, copy_db

NOW = time.time()


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory):
    return build_shop_db(tmp_path_factory.mktemp("server"))


@pytest.fixture
def db_path(shop_db, tmp_path):
    return copy_db(shop_db, tmp_path)


@pytest.fixture
def client(db_path):
    with TestClient(create_app(db_path)) as c:
        yield c


def event(eid, user, item, kind="view", ts=NOW, **extra):
    return {"event_id": eid, "user_id": user, "item_id": item, "kind": kind, "timestamp": ts, **extra}


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def stored_events(db_path, **where) -> int:
    eng = Engine(db_path)
    try:
        sql = " AND ".join(f"{k} = ?" for k in where) or "1"
        return eng.store.conn.execute(f"SELECT count(*) FROM events WHERE {sql}",
                                      list(where.values())).fetchone()[0]
    finally:
        eng.close()


def assert_problem(response, status, field=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["ok"] is False
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


# -- reading --------------------------------------------------------------------------


def test_recommend_answers_what_the_engine_answers_with_positions_and_reasons(client, db_path):
    body = client.get("/recommend/user004?n=7&placement=home").json()
    assert body["recommendation_id"].startswith("r_") and body["placement"] == "home"
    assert [i["position"] for i in body["items"]] == list(range(1, 8))
    assert all(i["reason"] and i["source"] and i["title"] for i in body["items"])
    eng = Engine(db_path)
    expected = [r.item_id for r in eng.recommend("user004", 7)]
    eng.close()
    assert [i["item_id"] for i in body["items"]] == expected, "HTTP and the engine agree"
    assert shop.OUT_OF_STOCK not in expected


def test_the_server_warms_the_serving_caches_between_requests(db_path, monkeypatch):
    """After start (and again later: a new model starts cold) the server asks the engine to
    precompute its caches in small steps, on the engine thread, between requests, until
    there is nothing left; those steps are not requests (the queue depth stays 0)."""
    import engine.server.app as server_app

    calls, work = [], iter([3, 2, 1, 0])
    real = Engine.warm

    def spy(self, limit=64):
        calls.append((limit, real(self, limit)))  # the real step (core plugins: nothing to do)
        return next(work, 0)

    monkeypatch.setattr(Engine, "warm", spy)
    monkeypatch.setattr(server_app, "WARM_RECHECK", 0.05)
    with TestClient(create_app(db_path)) as c:
        deadline = time.monotonic() + 10
        while len(calls) < 6 and time.monotonic() < deadline:
            assert c.get("/recommend/user004", params={"n": 3}).status_code == 200
            time.sleep(0.02)
        assert c.get("/healthz").status_code == 200
    assert len(calls) >= 6, calls
    assert {limit for limit, _ in calls} == {server_app.WARM_STEP}
    assert all(done == 0 for _, done in calls)


def test_unknown_user_gets_the_cold_start_fallback_not_an_error(client):
    unknown = ids(client.get("/recommend/never-seen-before?n=5"))
    assert len(unknown) == 5
    assert unknown == ids(client.get("/popular?n=5")), "a stranger sees what visitors see"
    assert client.get("/recommend/never-seen-before?n=5").json()["fallback"] == "unknown user", "and is told"
    assert client.get("/recommend/user001?n=5").json()["fallback"] is None


def test_category_and_exclude_filter_the_answer(client):
    first = ids(client.get("/recommend/user001?n=5&category=cat2"))
    assert first and all(i.startswith("g2-") for i in first)
    again = ids(client.get(f"/recommend/user001?n=5&category=cat2&exclude={first[0]},{first[1]}"))
    assert first[0] not in again and first[1] not in again
    assert ids(client.get("/popular?n=4&category=cat1"))[0].startswith("g1-")


def test_similar_and_items(client):
    similar = ids(client.get("/similar/g1-i03?n=5&placement=product-page"))
    assert len(similar) == 5 and "g1-i03" not in similar
    assert sum(i.startswith("g1-") for i in similar) >= 4, "neighbours come from the same taste group"
    item = client.get("/items/g1-i03").json()
    assert item == {"item_id": "g1-i03", "title": "Item 3 of group 1", "description": "",
                    "category": "cat1", "brand": "", "price": 13.0, "tags": [],
                    "in_stock": True, "attrs": {}}
    assert_problem(client.get("/items/nope"), 404, "path.item_id")
    assert_problem(client.get("/similar/nope"), 404)


def test_search_without_a_search_recaller_says_so(client):
    body = assert_problem(client.get("/search?q=item"), 503)
    assert "search plugin" in body["detail"]


# -- the per-user cache ---------------------------------------------------------------


def test_cache_serves_repeat_requests_and_drops_a_user_when_their_events_arrive(client):
    first = client.get("/recommend/user010?n=5").json()
    assert first["cached"] is False
    assert client.get("/recommend/user010?n=5").json()["cached"] is True
    assert client.get("/recommend/user011?n=5").json()["cached"] is False
    top = first["items"][0]["item_id"]
    sent = client.post("/events", json={"events": [event("c1", "user010", top, "purchase")]})
    assert sent.json() == {"accepted": 1, "duplicates": 0}
    after = client.get("/recommend/user010?n=5").json()
    assert after["cached"] is False, "the user's own events invalidate their lists"
    assert top not in [i["item_id"] for i in after["items"]], "a bought item is not offered again"
    assert client.get("/recommend/user011?n=5").json()["cached"] is True, "others stay cached"
    status = client.get("/status").json()
    assert status["recommendation_cache"]["hits"] >= 2


def test_cache_is_dropped_when_the_catalogue_changes(client):
    top = ids(client.get("/recommend/user020?n=5"))[0]
    changed = client.put("/items", json={"items": [
        {"item_id": top, "title": "sold out", "category": "cat2", "in_stock": False}]})
    assert changed.status_code == 200 and changed.json()["changed"] == 1
    after = client.get("/recommend/user020?n=5").json()
    assert after["cached"] is False and top not in [i["item_id"] for i in after["items"]]
    assert client.delete(f"/items/{top}").json() == {"removed": 1}
    assert_problem(client.get(f"/items/{top}"), 404)
    assert_problem(client.delete(f"/items/{top}"), 404)


def test_a_model_activated_by_another_connection_is_picked_up(client, db_path):
    before = client.get("/recommend/user030?n=5").json()
    assert client.get("/recommend/user030?n=5").json()["cached"] is True
    other = Engine(db_path)
    versions = other.train()["versions"]
    other.close()
    after = client.get("/recommend/user030?n=5").json()
    assert after["cached"] is False, "new models drop cached lists"
    models = {m["name"]: m["version"] for m in client.get("/status").json()["models"]}
    assert all(models[name] == v for name, v in versions.items())
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in before["items"]], \
        "retrained on the same data, the same answer"


# -- events ---------------------------------------------------------------------------


def test_events_are_idempotent_and_conflicts_store_nothing(client, db_path):
    batch = [event(f"e{i}", "user050", f"g0-i{i:02d}", "view", NOW + i) for i in range(5)]
    assert client.post("/events", json={"events": batch}).json() == {"accepted": 5, "duplicates": 0}
    resend = batch[3:] + [event("e9", "user050", "g0-i09", "cart", NOW + 9)]
    assert client.post("/events", json={"events": resend}).json() == {"accepted": 1, "duplicates": 2}
    clash = [event("e10", "user050", "g0-i10"), {**batch[0], "kind": "cart"}]
    body = assert_problem(client.post("/events", json={"events": clash}), 409)
    assert "'e0'" in body["detail"]
    assert stored_events(db_path, user_id="user050", event_id="e10") == 0, "all or nothing"
    iso = event("e11", "user050", "g0-i11", ts="2026-11-25T17:00:00Z")
    millis = event("e12", "user050", "g0-i12", ts=1_795_626_000_123)  # JavaScript's Date.now()
    assert client.post("/events", json={"events": [iso, millis]}).json()["accepted"] == 2
    eng = Engine(db_path)
    times = dict(eng.store.conn.execute(
        "SELECT event_id, ts FROM events WHERE event_id IN ('e11', 'e12')").fetchall())
    eng.close()
    assert times == {"e11": 1_795_626_000.0, "e12": pytest.approx(1_795_626_000.123)}


@pytest.mark.parametrize("bad, field", [
    ({"event_id": "has space"}, "events.0.event_id"),
    ({"user_id": ""}, "events.0.user_id"),
    ({"kind": "teleport"}, "events.0.kind"),
    ({"timestamp": "yesterday"}, "events.0.timestamp"),
    ({"timestamp": "2026-11-25T17:00:00"}, "events.0.timestamp"),
    ({"value": "NaN"}, "events.0.value"),
    ({"value": False}, "events.0.value"),       # a boolean is not a number
    ({"value": 2e12}, "events.0.value"),        # beyond ±1e12
    ({"timestamp": 86400}, "events.0.timestamp"),             # 1970: before 1990
    ({"timestamp": NOW + 3 * 86400}, "events.0.timestamp"),   # more than a day ahead
    ({"timestamp": True}, "events.0.timestamp"),
    ({"recommendation_id": "r_zz"}, "events.0.recommendation_id"),
    ({"surprise": 1}, "events.0.surprise"),
])
def test_bad_events_name_the_field_at_fault(client, bad, field):
    assert_problem(client.post("/events", json={"events": [{**event("x1", "u", "i"), **bad}]}),
                   422, field)


def test_batch_and_body_limits(client, db_path):
    too_many = [event(f"b{i}", "user060", "g1-i01", ts=NOW + i) for i in range(501)]
    assert_problem(client.post("/events", json={"events": too_many}), 422, "events")
    assert_problem(client.post("/events", json={"events": []}), 422, "events")
    padded = json.dumps({"events": [event("h1", "user060", "g1-i01")]}) + " " * (1 << 20)
    body = assert_problem(client.post("/events", content=padded,
                                      headers={"content-type": "application/json"}), 413)
    assert "1,048,576 bytes" in body["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield padded[:1000].encode()
        for _ in range(20):
            yield b" " * 65536

    assert_problem(client.post("/events", content=chunks(),
                               headers={"content-type": "application/json"}), 413)
    assert stored_events(db_path, event_id="h1") == 0 and stored_events(db_path, event_id="b0") == 0


def test_what_the_schema_refuses_is_refused_and_documented(client):
    """The server and /openapi.json agree (test_api_contract fuzzes the rest)."""
    item = {"item_id": "n1", "title": "New"}
    assert_problem(client.put("/items", json={"items": [{**item, "in_stock": 0}]}), 422, "items.0.in_stock")
    assert_problem(client.put("/items", json={"items": [{**item, "price": True}]}), 422, "items.0.price")
    assert_problem(client.get("/search?q=%C2%85"), 422, "query.q")  # only a (Unicode) space
    assert_problem(client.get("/report?since=000000000000000"), 422, "query.since")
    assert client.get("/report?since=12h").status_code == 200
    latin1 = '{"events": [{"event_id": "caf\u00e9"}]}'.encode("latin-1")  # not UTF-8
    body = client.post("/events", content=latin1, headers={"content-type": "application/json"})
    assert body.status_code in (400, 422) and body.headers["content-type"] == "application/problem+json"
    documented = client.get("/openapi.json").json()["paths"]["/events"]["post"]["responses"]
    assert str(body.status_code) in documented
    exclude = next(p for p in client.get("/openapi.json").json()["paths"]["/recommend/{user_id}"]["get"]
                   ["parameters"] if p["name"] == "exclude")
    assert "pattern" in exclude["schema"]["items"], "the ids' pattern is part of the contract"


def test_options_and_405_list_every_method_of_the_path(client):
    answer = client.options("/items/g0-i01")
    assert answer.status_code == 204 and answer.headers["allow"] == "DELETE, GET, OPTIONS"
    refused = client.post("/items/g0-i01")
    assert refused.status_code == 405 and refused.headers["allow"] == "DELETE, GET, OPTIONS"


def test_ids_in_paths_and_queries_are_checked(client):
    assert_problem(client.get("/recommend/bad%20id"), 422, "path.user_id")
    body = assert_problem(client.get("/recommend/user001?exclude=ok,bad%20one"), 422, "query.exclude.0")
    assert body["detail"] == ("query.exclude.0: 'ok,bad one' is not a list of ids separated by commas "
                              "(each 1-128 letters, digits and . _ : @ + -)")
    assert_problem(client.get("/recommend/user001?n=0"), 422, "query.n")
    assert_problem(client.get("/recommend/user001?n=5&n=50"), 422, "query.n")
    assert client.get("/recommend/user001?exclude=g0-i01&exclude=g0-i02").status_code == 200
    assert_problem(client.get("/recommend/user001?placement=a%20b"), 422, "query.placement")


# -- erasure --------------------------------------------------------------------------


def test_erasing_a_user_removes_events_impressions_attribution_and_cache(client, db_path):
    shown = client.get("/recommend/user070?n=5&placement=home").json()
    item = shown["items"][0]["item_id"]
    client.post("/events", json={"events": [
        event("er1", "user070", item, "click", recommendation_id=shown["recommendation_id"])]})
    client.get("/recommend/user070?n=5")
    assert client.get("/report?since=1h").json()["overall"]["clicks"] == 1
    erased = client.delete("/users/user070").json()
    imported = sum(e.user_id == "user070" for e in shop.events(120))
    assert erased["events"] == imported + 1 and erased["impressions"] == 10
    assert erased["attributed_events"] == 1 and erased["cached_lists"] == 1
    assert erased["log_emptied"] is True and erased["models_rewritten"] == []  # no bert here
    assert stored_events(db_path, user_id="user070") == 0
    report = client.get("/report?since=1h").json()["overall"]
    assert report["clicks"] == 0 and report["impressions"] == 0
    after = client.get("/recommend/user070?n=5").json()
    assert after["cached"] is False
    assert [i["item_id"] for i in after["items"]] == ids(client.get("/popular?n=5")), \
        "an erased user is a stranger"


# -- keys, scopes, rate limits, CORS --------------------------------------------------


def test_keys_and_scopes(db_path):
    eng = Engine(db_path)
    public, secret = eng.create_key("public", "web"), eng.create_key("secret", "backend")
    eng.close()
    with TestClient(create_app(db_path)) as c:
        assert_problem(c.get("/recommend/user001"), 401, "header.authorization")
        assert_problem(c.get("/recommend/user001", headers={"X-API-Key": "sw_pk_forged"}), 401)
        pub = {"Authorization": f"Bearer {public['key']}"}
        sec = {"X-API-Key": secret["key"]}
        assert c.get("/recommend/user001", headers=pub).status_code == 200
        views = {"events": [event("k1", "user001", "g1-i01", "view"), event("k2", "user001", "g1-i02", "cart")]}
        assert c.post("/events", json=views, headers=pub).json()["accepted"] == 2
        buy = {"events": [event("k3", "user001", "g1-i01", "view"), event("k4", "user001", "g1-i01", "purchase")]}
        body = assert_problem(c.post("/events", json=buy, headers=pub), 403, "events.1.kind")
        assert "secret key" in body["detail"]
        assert c.post("/events", json=buy, headers=sec).json()["accepted"] == 2
        for method, path in (("delete", "/users/user001"), ("put", "/items"), ("post", "/train"),
                             ("get", "/status"), ("get", "/report")):
            assert_problem(c.request(method, path, headers=pub, json={"items": []}), 403)
        assert c.get("/status", headers=sec).json()["api_keys"] == 2
        assert c.get("/healthz").status_code == 200, "probes need no key"
        eng = Engine(db_path)
        eng.revoke_key(public["id"])
        eng.close()
        c.app.state.keys.ttl = 0
        assert_problem(c.get("/recommend/user001", headers=pub), 401)


def test_without_keys_only_loopback_clients_are_served(db_path):
    """No key configured (or the last one revoked while serving on 0.0.0.0): a client from
    the network is refused, the shop's own machine is not."""
    app = create_app(db_path)
    with TestClient(app, client=("203.0.113.7", 50000)) as remote:
        body = assert_problem(remote.get("/recommend/user001"), 401, "header.authorization")
        assert "loopback" in body["detail"]
        assert_problem(remote.post("/train"), 401)
    with TestClient(create_app(db_path), client=("127.0.0.1", 50000)) as local:
        assert local.get("/recommend/user001").status_code == 200


def test_an_unexpected_error_is_problem_json_without_internals(db_path, caplog):
    app = create_app(db_path)

    def boom():
        raise RuntimeError("no such table: /srv/shop/private.db")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        body = assert_problem(c.get("/boom"), 500)
    assert "private.db" not in body["detail"] and "RuntimeError" in body["detail"]
    error_id = body["detail"].rsplit("error id ", 1)[1].rstrip(".")
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_rate_limit_answers_429_with_retry_after(db_path):
    eng = Engine(db_path)
    one, other = (eng.create_key("public")["key"] for _ in range(2))
    eng.close()
    with TestClient(create_app(db_path, rate_limits={"public": 30, "secret": 0})) as c:
        codes = [c.get("/popular?n=2", headers={"X-API-Key": one}).status_code for _ in range(5)]
        assert codes == [200] * 5, "a burst of 10 seconds' worth passes"
        body = assert_problem(c.get("/popular?n=2", headers={"X-API-Key": one}), 429)
        assert "30 requests a minute" in body["detail"]
        response = c.get("/popular?n=2", headers={"X-API-Key": one})
        assert response.status_code == 429 and 1 <= int(response.headers["Retry-After"]) <= 2
        assert c.get("/popular?n=2", headers={"X-API-Key": other}).status_code == 200, "per key"


def test_cors_allows_only_configured_origins(db_path):
    shop_origin = "https://shop.example"
    with TestClient(create_app(db_path, cors_origins=[shop_origin])) as c:
        preflight = {"Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}
        ok = c.options("/events", headers={"Origin": shop_origin, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == shop_origin
        other = c.options("/events", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
        got = c.get("/popular?n=1", headers={"Origin": shop_origin})
        assert got.headers["access-control-allow-origin"] == shop_origin


# -- the document and the probes ------------------------------------------------------


def test_openapi_document_covers_every_endpoint(client):
    doc = client.get("/openapi.json").json()
    expected = {("get", "/recommend/{user_id}"), ("get", "/similar/{item_id}"), ("get", "/search"),
                ("get", "/items/{item_id}"), ("get", "/popular"), ("post", "/events"),
                ("put", "/items"), ("delete", "/items/{item_id}"), ("delete", "/users/{user_id}"),
                ("post", "/train"), ("get", "/status"), ("get", "/report"), ("get", "/healthz"),
                ("get", "/readyz")}
    found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= found
    events = doc["paths"]["/events"]["post"]
    assert "409" in events["responses"] and "422" in events["responses"]
    schema = doc["components"]["schemas"]["EventIn"]
    assert {"event_id", "user_id", "item_id", "kind", "timestamp"} <= set(schema["required"])
    assert client.get("/docs").status_code == 200


def test_readyz_needs_trained_models(client, tmp_path):
    assert client.get("/readyz").json() == {"ok": True, "ready": True}
    with TestClient(create_app(tmp_path / "empty.db")) as empty:
        assert empty.get("/healthz").json() == {"ok": True}
        body = assert_problem(empty.get("/readyz"), 503)
        assert "shelfwise train" in body["detail"]


# -- CLI: serve, report, keys ---------------------------------------------------------


def cli(db_path, *args):
    from click.testing import CliRunner

    from engine.cli import cli as group

    return CliRunner().invoke(group, ["--db", str(db_path), *args])


def test_cli_keys_are_printed_once_and_stored_hashed(db_path):
    created = cli(db_path, "keys", "create", "--scope", "public", "--name", "web shop")
    assert created.exit_code == 0, created.output
    key = created.output.split()[0]
    assert key.startswith("sw_pk_") and len(key) > 30
    listed = cli(db_path, "keys", "list", "--json")
    assert key not in listed.output
    [row] = json.loads(listed.output)
    assert row["scope"] == "public" and row["name"] == "web shop" and row["revoked_at"] is None
    raw = b"".join(open(path, "rb").read() for path in (db_path, f"{db_path}-wal")
                   if os.path.exists(path))
    assert key.encode() not in raw, "only the hash is stored"
    assert cli(db_path, "keys", "revoke", str(row["id"])).exit_code == 0
    missing = cli(db_path, "keys", "revoke", "99")
    assert missing.exit_code == 1 and "No API key with id 99" in missing.output
    bad = cli(db_path, "keys", "create", "--scope", "admin")
    assert bad.exit_code == 2 and "admin" in bad.output


def test_cli_serve_refuses_a_public_address_without_keys(db_path):
    result = cli(db_path, "serve", "--host", "0.0.0.0")
    assert result.exit_code == 1
    assert "No API keys are configured" in result.output and "keys create" in result.output


def test_cli_report_matches_the_http_report(client, db_path):
    body = client.get("/recommend/user090?n=4&placement=home").json()
    first = body["items"][0]
    client.post("/events", json={"events": [
        event("r1", "user090", first["item_id"], "click", recommendation_id=body["recommendation_id"]),
        event("r2", "user090", first["item_id"], "purchase", value=42.5,
              recommendation_id=body["recommendation_id"])]})
    as_json = cli(db_path, "report", "--since", "1h", "--json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    http = client.get("/report?since=1h").json()
    assert report["by_recaller"] == http["by_recaller"]
    assert report["overall"]["purchases"] == 1 and report["overall"]["revenue"] == 42.5
    assert report["overall"]["ctr"] == pytest.approx(1 / 4)
    table = cli(db_path, "report", "--since", "1h")
    assert "Recommendations by recaller" in table.output and "42.50" in table.output
    bad = cli(db_path, "report", "--since", "soon")
    assert bad.exit_code == 1 and "not a duration" in bad.output


# -- background training --------------------------------------------------------------


def wait_for_training(c, headers=None) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        training = c.get("/status", headers=headers).json()["training"]
        if not training["running"]:
            return training
        time.sleep(0.1)
    raise AssertionError("training did not finish")


def test_train_on_a_thread_activates_new_models_and_reports_failures(db_path, tmp_path):
    with TestClient(create_app(db_path, train_in_process=False)) as c:
        before = {m["name"]: m["version"] for m in c.get("/status").json()["models"]}
        started = c.post("/train")
        assert started.status_code == 202 and started.json()["training"]["in"] == "thread"
        training = wait_for_training(c)
        assert training["error"] is None and training["stage"] == "done" and training["run_id"]
        after = {m["name"]: m["version"] for m in c.get("/status").json()["models"]}
        assert all(after[name] == v + 1 for name, v in before.items())
        assert c.get("/recommend/user001?n=3").status_code == 200
    with TestClient(create_app(tmp_path / "empty.db", train_in_process=False)) as c:
        assert c.post("/train").status_code == 202
        training = wait_for_training(c)
        assert training["stage"] == "failed" and "no events" in training["error"]


# -- merchandising rules ----------------------------------------------------------------


def test_rules_need_a_secret_key(db_path):
    eng = Engine(db_path)
    public, secret = eng.create_key("public", "web"), eng.create_key("secret", "backend")
    eng.close()
    pub, sec = {"X-API-Key": public["key"]}, {"X-API-Key": secret["key"]}
    rule = {"kind": "filter", "where": "price > 25"}
    with TestClient(create_app(db_path)) as c:
        assert_problem(c.get("/rules", headers=pub), 403, "header.authorization")
        assert_problem(c.post("/rules", json=rule, headers=pub), 403)
        added = c.post("/rules", json=rule, headers=sec)
        assert added.status_code == 201, added.text
        assert_problem(c.delete(f"/rules/{added.json()['id']}", headers=pub), 403)
        assert [r["id"] for r in c.get("/rules", headers=sec).json()] == [added.json()["id"]]
        assert c.delete(f"/rules/{added.json()['id']}", headers=sec).json()["status"] == "removed"


@pytest.fixture
def plain_client(db_path):
    """A server whose lists are the ranker's order (diversity off): the rules' exact moves."""
    (db_path.parent / "shelfwise.toml").write_text("[pipeline]\ndiversity = 0\n")
    with TestClient(create_app(db_path)) as c:
        yield c


def test_rules_added_through_the_api_shape_the_next_answer(plain_client):
    client = plain_client
    plain = ids(client.get("/recommend/user004?n=6&placement=home"))
    cached = client.get("/recommend/user004?n=6&placement=home").json()
    assert cached["cached"] is True
    pin = client.post("/rules", json={"kind": "pin", "item_id": plain[5], "position": 1,
                                      "placement": "home", "until": "2099-12-31"})
    assert pin.status_code == 201, pin.text
    assert pin.json() | {"created_at": 0} == {
        "id": 1, "kind": "pin", "item_id": plain[5], "position": 1, "where": None, "weight": None,
        "placement": "home", "category": None, "until": "2099-12-31", "created_at": 0,
        "status": "active", "note": "", "description": f"pin {plain[5]} at 1"}
    home = client.get("/recommend/user004?n=6&placement=home").json()
    assert home["cached"] is False and home["items"][0]["item_id"] == plain[5]
    assert home["items"][0]["rules"] == ["pinned by rule 1"] and home["items"][1]["rules"] == []
    assert ids(client.get("/recommend/user004?n=6&placement=cart")) == plain, "another placement"
    boost = client.post("/rules", json={"kind": "bury", "where": f'item_id = "{plain[0]}"', "weight": 2})
    assert boost.status_code == 201, boost.text
    assert ids(client.get("/recommend/user004?n=6"))[:3] == [plain[1], plain[2], plain[0]]
    cut = client.post("/rules", json={"kind": "filter", "where": f'item_id in ["{plain[1]}", "{plain[2]}"]'})
    assert cut.status_code == 201 and plain[1] not in ids(client.get("/recommend/user004?n=6"))
    out_of_stock = client.post("/rules", json={"kind": "pin", "item_id": shop.OUT_OF_STOCK, "position": 2})
    assert out_of_stock.json()["status"] == "not shown" and "out of stock" in out_of_stock.json()["note"]
    listed = client.get("/rules").json()
    assert [(r["id"], r["kind"], r["status"]) for r in listed] == [
        (1, "pin", "active"), (2, "bury", "active"), (3, "filter", "active"), (4, "pin", "not shown")]
    assert [r["id"] for r in client.get("/rules?placement=cart").json()] == [2, 3, 4]
    assert client.delete("/rules/1").status_code == 200
    assert ids(client.get("/recommend/user004?n=6&placement=home"))[0] != plain[5]
    assert_problem(client.delete("/rules/1"), 404)


def test_a_rule_that_cannot_work_is_refused_with_the_reason(client):
    body = assert_problem(client.post("/rules", json={"kind": "boost", "where": "brand > 3", "weight": 2}),
                          422, "boost.where")
    assert "Invalid condition at position 7: brand is text: compare it with =, !=, in, contains" in body["detail"]
    assert_problem(client.post("/rules", json={"kind": "boost", "where": "price > 3"}), 422, "boost.weight")
    assert_problem(client.post("/rules", json={"kind": "filter", "where": "price > 3", "weight": 1}), 422)
    assert_problem(client.post("/rules", json={"kind": "pin", "item_id": "g1-i01", "position": 1,
                                               "until": "2026-13-01"}), 422, "pin.until")
    assert_problem(client.post("/rules", json={"kind": "pin", "item_id": "nope", "position": 1}), 404)
    assert_problem(client.post("/rules", json={"kind": "promote", "where": "price > 3"}), 422)
    assert client.get("/rules").json() == []
    doc = client.get("/openapi.json").json()
    assert {"get", "post"} <= set(doc["paths"]["/rules"]) and "delete" in doc["paths"]["/rules/{rule_id}"]
    where = doc["components"]["schemas"]["BoostIn"]["properties"]["where"]
    assert where["pattern"].startswith("^") and where["maxLength"] == 1000, "the language is in the schema"
