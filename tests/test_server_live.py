"""The server on a real socket: uvicorn on a free loopback port, driven with httpx.

- Nothing lost: events (with resends and retried batches) sent while a background retrain
  runs are all stored exactly once, and recommendations keep being served.
- A simulated shopper clicks, carts and buys with known probabilities per recaller and
  placement; the attribution report must count exactly what was sent back and recover
  the click-through rates within binomial tolerance."""

from __future__ import annotations

import math
import os
import threading
import time

import httpx
import numpy as np
import pytest

from engine.engine import Engine
from engine.server import create_app

from .server_support import build_shop_db, copy_db, uvicorn_server


@pytest.fixture(scope="module")
def big_shop(tmp_path_factory):
    """Large enough that a retrain takes a few seconds (so events arrive during it)."""
    return build_shop_db(tmp_path_factory.mktemp("live-big"), n_users=1500, per_user=20)


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory):
    return build_shop_db(tmp_path_factory.mktemp("live-small"))


def lower_priority_trainer(client, wait: float = 60.0) -> bool:
    """Whether the running retrain's process (its pid in /status) is niced below this one
    (true of any process when this one already runs at the lowest priority, nice 19)."""
    if os.getpriority(os.PRIO_PROCESS, 0) >= 19:
        return True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        training = client.get("/status").json()["training"]
        pid = training.get("pid")
        if pid and pid != os.getpid():
            try:
                if os.getpriority(os.PRIO_PROCESS, pid) > os.getpriority(os.PRIO_PROCESS, 0):
                    return True
            except ProcessLookupError:
                return False
        if not training["running"]:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_nothing_lost_while_a_retrain_runs(big_shop, tmp_path):
    db = copy_db(big_shop, tmp_path)
    rng = np.random.default_rng(1)
    sent: dict[str, dict] = {}
    accepted = duplicates = during = 0
    errors: list[str] = []
    served_during = []
    with uvicorn_server(create_app(db)) as url, httpx.Client(base_url=url, timeout=60) as c:
        before = {m["name"]: m["version"] for m in c.get("/status").json()["models"]}
        assert c.post("/train").status_code == 202
        assert c.post("/train").status_code == 409, "one retrain at a time"
        assert lower_priority_trainer(c), "the fit runs in a process of its own, at a lower priority"

        def shopper():  # recommendations keep coming while the retrain runs
            while c.get("/status").json()["training"]["running"]:
                r = c.get(f"/recommend/user{int(rng.integers(1500)):04d}?n=5")
                served_during.append(r.status_code)

        reader = threading.Thread(target=shopper)
        reader.start()
        batch_no = 0
        while True:
            running = c.get("/status").json()["training"]["running"]
            fresh = [{"event_id": f"live-{batch_no}-{i}", "user_id": f"user{int(rng.integers(1500)):04d}",
                      "item_id": f"g{int(rng.integers(3))}-i{int(rng.integers(20)):02d}",
                      "kind": str(rng.choice(["view", "cart", "purchase"])),
                      "timestamp": time.time(), "value": None} for i in range(40)]
            for e in fresh:
                sent[e["event_id"]] = e
            resent = [sent[k] for k in rng.choice(list(sent), size=10)]  # at-least-once senders
            batch = fresh + resent
            for attempt in range(1 + (batch_no % 3 == 0)):  # every third batch is retried whole
                r = c.post("/events", json={"events": batch})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                accepted += r.json()["accepted"]
                duplicates += r.json()["duplicates"]
            during += running
            batch_no += 1
            if not running:
                break
        reader.join()
        status = c.get("/status").json()
    assert not errors
    assert status["training"]["error"] is None and status["training"]["stage"] == "done"
    assert during >= 3, f"only {during} batches arrived during the retrain; make the shop bigger"
    # Events of the retrain's window are folded into the new models (strictly tested at engine
    # level in test_server_engine.py). Here it was 0 in one of about ten suite runs: a race in
    # which the serving engine adopted the new models unseen (fixed and tested at engine level:
    # test_models_activated_during_our_own_write_are_still_noticed). The count depends on
    # timing, so the live test checks only that it is reported.
    assert status["training"]["folded_in"] >= 0, status["training"]
    assert accepted == len(sent), "every distinct event acknowledged exactly once"
    assert duplicates == sum(50 * (1 + (b % 3 == 0)) for b in range(batch_no)) - len(sent)
    eng = Engine(db)
    stored = eng.store._stored_events(list(sent))
    eng.close()
    assert len(stored) == len(sent), "exactly N stored"
    assert all(stored[k][1:4] == (e["user_id"], e["item_id"], e["kind"]) for k, e in sent.items())
    assert served_during and set(served_during) == {200}, "the old models kept serving"
    after = {m["name"]: m["version"] for m in status["models"]}
    assert all(after[name] > v for name, v in before.items() if name.startswith("recaller/"))


# click probability per recaller on the home page; every item on the cart page: CART_CTR
P_CLICK = {"cooccurrence": 0.35, "sequence": 0.25, "als": 0.2, "popular": 0.08}
CART_CTR = 0.12
P_CART, P_BUY = 0.5, 0.6


@pytest.mark.slow
def test_simulated_shopper_report_recovers_what_happened(small_shop, tmp_path):
    db = copy_db(small_shop, tmp_path)
    rng = np.random.default_rng(7)
    shown: list[dict] = []  # every impression with its click probability
    truth = {"clicks": 0, "carts": 0, "purchases": 0, "revenue": 0.0}
    by_source: dict[str, dict[str, float]] = {}
    sessions = 360
    with uvicorn_server(create_app(db)) as url, httpx.Client(base_url=url, timeout=30) as c:
        for s in range(sessions):
            user = f"user{int(rng.integers(120)):03d}" if rng.random() < 0.75 else f"visitor{s}"
            placement = "home" if rng.random() < 0.7 else "cart"
            body = c.get(f"/recommend/{user}?n=8&placement={placement}").json()
            events = []
            for item in body["items"]:
                p = P_CLICK.get(item["source"], 0.0) if placement == "home" else CART_CTR
                shown.append({"p": p, "source": item["source"], "placement": placement})
                if rng.random() >= p:
                    continue
                base = {"user_id": user, "item_id": item["item_id"],
                        "recommendation_id": body["recommendation_id"]}
                events.append({**base, "event_id": f"{s}-{item['position']}-c", "kind": "click",
                               "timestamp": time.time()})
                counts = by_source.setdefault(f"{placement}/{item['source']}",
                                              {"clicks": 0, "purchases": 0, "revenue": 0.0})
                counts["clicks"] += 1
                truth["clicks"] += 1
                if rng.random() < P_CART:
                    events.append({**base, "event_id": f"{s}-{item['position']}-a", "kind": "cart",
                                   "timestamp": time.time()})
                    truth["carts"] += 1
                    if rng.random() < P_BUY:
                        paid = round(float(rng.uniform(5, 50)), 2) if rng.random() < 0.5 else None
                        events.append({**base, "event_id": f"{s}-{item['position']}-p",
                                       "kind": "purchase", "timestamp": time.time(), "value": paid})
                        revenue = paid if paid is not None else item["price"]
                        truth["purchases"] += 1
                        truth["revenue"] += revenue
                        counts["purchases"] += 1
                        counts["revenue"] += revenue
            if s % 40 == 0 and body["items"]:  # noise the report must not count
                not_shown = next(f"g{g}-i{i:02d}" for g in range(3) for i in range(20)
                                 if f"g{g}-i{i:02d}" not in {it["item_id"] for it in body["items"]})
                events += [
                    {"event_id": f"{s}-x1", "user_id": user, "item_id": not_shown, "kind": "click",
                     "timestamp": time.time(), "recommendation_id": body["recommendation_id"]},
                    {"event_id": f"{s}-x2", "user_id": user, "item_id": body["items"][0]["item_id"],
                     "kind": "click", "timestamp": time.time()}]
            if events:
                assert c.post("/events", json={"events": events}).status_code == 200
                assert c.post("/events", json={"events": events}).json()["accepted"] == 0, "resend"
        report = c.get("/report?since=1h").json()
        home = c.get("/report?since=1h&placement=home").json()

    overall = report["overall"]
    assert overall["impressions"] == len(shown)
    assert overall["recommendations"] == sessions
    assert (overall["clicks"], overall["carts"], overall["purchases"]) == \
        (truth["clicks"], truth["carts"], truth["purchases"]), "exactly what was sent back"
    assert overall["revenue"] == pytest.approx(truth["revenue"], abs=0.01)

    # Each recaller's CTR on the home page recovers its click probability.
    checked = 0
    for row in home["by_recaller"]:
        n, p = row["impressions"], P_CLICK[row["name"]]
        counts = by_source.get(f"home/{row['name']}", {"clicks": 0, "purchases": 0, "revenue": 0.0})
        assert row["clicks"] == counts["clicks"] and row["purchases"] == counts["purchases"]
        assert row["revenue"] == pytest.approx(counts["revenue"], abs=0.01)
        if n >= 150:
            tolerance = 4 * math.sqrt(p * (1 - p) / n)
            assert abs(row["ctr"] - p) < tolerance, (row["name"], row["ctr"], p, n)
            assert abs(row["cart_rate"] - p * P_CART) < 4 * math.sqrt(p * P_CART / n)
            checked += 1
    assert checked >= 2, home["by_recaller"]
    cart = next(r for r in report["by_placement"] if r["name"] == "cart")
    assert abs(cart["ctr"] - CART_CTR) < 4 * math.sqrt(CART_CTR * (1 - CART_CTR) / cart["impressions"])
    positions = {r["name"]: r["impressions"] for r in report["by_position"]}
    assert positions[1] == sessions, "every response had a first position"
    assert [r["name"] for r in report["by_ranker"]] == ["fusion"]


@pytest.mark.slow
def test_shutdown_during_a_retrain_keeps_the_active_models(big_shop, tmp_path):
    db = copy_db(big_shop, tmp_path)
    with uvicorn_server(create_app(db)) as url, httpx.Client(base_url=url, timeout=60) as c:
        before = c.get("/status").json()["models"]
        probe = Engine(db)
        runs_before = probe.store.runs("train", 1)
        probe.close()
        assert c.post("/train").status_code == 202
        deadline = time.monotonic() + 60
        while c.get("/status").json()["training"]["stage"] in ("starting", ""):
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
    eng = Engine(db)
    last = eng.store.runs("train", 1)[0]
    models = eng.store.active_artifacts()
    eng.close()
    assert not runs_before or last["id"] != runs_before[0]["id"], "the stopped run was recorded"
    assert last["status"] == "failed" and "server shut down" in last["note"]
    assert [(m["name"], m["version"]) for m in models] == [(m["name"], m["version"]) for m in before]


@pytest.mark.slow
def test_shelfwise_serve_command(small_shop, tmp_path):
    """The real entry point: `shelfwise serve` in its own process, stopped with Ctrl+C."""
    import os
    import signal
    import subprocess
    import sys

    from .server_support import free_port

    db = copy_db(small_shop, tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from engine.cli import main; main()",
                             "--db", str(db), "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "shelfwise serve did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = httpx.get(f"http://127.0.0.1:{port}/recommend/user001?n=3").json()
        assert len(body["items"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "No API keys configured: serving without authentication on loopback only" in err
