"""`shelfwise serve --workers N`: several server processes on one port and one database.

Real subprocesses of the command on a loopback port, driven with httpx. A test reaches a
given process through a kept-alive connection: uvicorn's workers share the listening
socket, the kernel hands each new connection to one of them, and `GET /status` names the
process (`process.pid`) that holds it.

- An event sent to one process changes what every process recommends on its next request
  (its cached list is dropped, its co-occurrence state learns the event), and both then
  answer alike.
- Only the leader saves incremental state; one retrain at a time across processes (409 from
  the other); when the leader is killed, another process leads.
- `--workers 1` is the single process it always was."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from . import shop
from .conftest import CORE_PLUGINS
from .server_support import build_shop_db, copy_db, free_port

LATER = shop.T0 + 90 * shop.DAY  # after every event of the synthetic shop


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory):
    return build_shop_db(tmp_path_factory.mktemp("workers"))


@contextmanager
def shelfwise_serve(db: Path, *options: str, timeout: float = 90):
    """`shelfwise --db DB serve --port P *options` in its own process; yields (url, process),
    stops it with Ctrl+C (SIGINT) and checks that it ended cleanly."""
    port = free_port()
    log = open(db.parent / f"serve-{port}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", "from engine.cli import main; main()",
                             "--db", str(db), "serve", "--port", str(port), *options],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "SHELFWISE_LOAD_PLUGINS": CORE_PLUGINS})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, _tail(log)
            assert time.monotonic() < deadline, "shelfwise serve did not come up\n" + _tail(log)
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, _tail(log)
        log.close()


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-3000:]


def status(client: httpx.Client) -> dict:
    r = client.get("/status")
    assert r.status_code == 200, r.text
    return r.json()


def one_client_per_process(url: str, processes: int, tries: int = 200) -> dict[int, httpx.Client]:
    """pid -> a client whose kept-alive connection that process answers; new connections
    until every process has answered one."""
    found: dict[int, httpx.Client] = {}
    spare = []  # kept open meanwhile: the next connections are new ones
    for _ in range(tries):
        client = httpx.Client(base_url=url, timeout=60)
        pid = status(client)["process"]["pid"]
        if pid in found:
            spare.append(client)
        else:
            found[pid] = client
        if len(found) == processes:
            break
    for client in spare:
        client.close()
    assert len(found) == processes, f"only {sorted(found)} answered {tries} connections"
    return found


def incremental_saves(db: Path) -> list[dict]:
    """The stored incremental co-occurrence states' metadata (who saved what)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT meta FROM artifacts WHERE name = 'recaller/cooccurrence' "
                            "AND json_extract(meta, '$.incremental')").fetchall()
    return [json.loads(r[0]) for r in rows]


def event_row(db: Path, event_id: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT id FROM events WHERE event_id = ?", [event_id]).fetchone()[0]


def test_an_event_sent_to_one_process_changes_what_every_process_recommends(shop_db, tmp_path):
    """No incremental save meanwhile (the default 30 s): the process that did not store the
    events folds them in itself."""
    db = copy_db(shop_db, tmp_path)
    with shelfwise_serve(db, "--workers", "2") as (url, _):
        pids = event_reaches_every_process(url)
    saves = incremental_saves(db)
    assert len(saves) == 1 and saves[0]["pid"] in pids, "one of them saved, at shutdown"
    assert saves[0]["events_upto"] == event_row(db, "w3"), "with every event"


def event_reaches_every_process(url: str) -> set[int]:
    clients = one_client_per_process(url, 2)
    first, second = clients.values()
    added = first.put("/items", json={"items": [{"item_id": "fresh-x", "title": "New X", "category": "cat0"},
                                                {"item_id": "fresh-y", "title": "New Y", "category": "cat0"}]})
    assert added.status_code == 200, added.text
    before = {}
    for pid, c in clients.items():
        before[pid] = [i["item_id"] for i in c.get("/recommend/user005?n=5").json()["items"]]
        assert c.get("/recommend/user005?n=5").json()["cached"], "the second ask is served from the cache"
    bought = before[next(iter(clients))][0]
    sent = first.post("/events", json={"events": [
        {"event_id": "w1", "user_id": "user005", "item_id": bought, "kind": "purchase", "timestamp": LATER},
        {"event_id": "w2", "user_id": "newcomer", "item_id": "fresh-x", "kind": "view", "timestamp": LATER},
        {"event_id": "w3", "user_id": "newcomer", "item_id": "fresh-y", "kind": "cart", "timestamp": LATER + 1}]})
    assert sent.json() == {"accepted": 3, "duplicates": 0}, sent.text

    after, together = {}, {}
    for pid, c in clients.items():
        body = c.get("/recommend/user005?n=5").json()
        assert not body["cached"], f"process {pid} dropped its cached list"
        after[pid] = [i["item_id"] for i in body["items"]]
        assert bought not in after[pid], f"process {pid} knows user005 bought {bought}"
        similar = c.get("/similar/fresh-x?n=5").json()["items"]
        together[pid] = [i["item_id"] for i in similar if "cooccurrence" in i["sources"]]
        assert together[pid][:1] == ["fresh-y"], f"process {pid}'s co-occurrence learnt the event"
        assert status(c)["process"]["pid"] == pid, "the same connection, the same process"
    assert len({tuple(v) for v in after.values()}) == 1, after
    assert len({tuple(v) for v in together.values()}) == 1, together
    for c in clients.values():
        c.close()
    return set(clients)


def test_one_process_saves_and_trains_and_another_leads_when_it_dies(shop_db, tmp_path):
    db = copy_db(shop_db, tmp_path)
    with shelfwise_serve(db, "--workers", "2", "--save-interval", "1") as (url, _):
        leader_saves_trains_and_is_replaced(db, url)


def leader_saves_trains_and_is_replaced(db: Path, url: str) -> None:
    clients = one_client_per_process(url, 2)
    seen = {pid: status(c)["process"] for pid, c in clients.items()}
    leaders = [pid for pid, p in seen.items() if p["leader"]]
    assert len(leaders) == 1 and {p["leader_pid"] for p in seen.values()} == set(leaders), seen
    leader = leaders[0]
    follower = next(pid for pid in clients if pid != leader)

    # events stored through the follower are saved (within --save-interval 1) by the leader
    sent = clients[follower].post("/events", json={"events": [
        {"event_id": "f1", "user_id": "newcomer2", "item_id": "g0-i01", "kind": "view", "timestamp": LATER},
        {"event_id": "f2", "user_id": "newcomer2", "item_id": "g0-i02", "kind": "view", "timestamp": LATER + 1}]})
    assert sent.json()["accepted"] == 2
    row, deadline = event_row(db, "f2"), time.monotonic() + 20
    while not any(m.get("events_upto", 0) >= row for m in incremental_saves(db)):
        assert time.monotonic() < deadline, f"no save holds event {row}: {incremental_saves(db)}"
        time.sleep(0.3)
    assert {m["pid"] for m in incremental_saves(db)} == {leader}, "only the leader saves"

    # one retrain at a time, across processes
    started = clients[follower].post("/train")
    assert started.status_code == 202, started.text
    refused = clients[leader].post("/train")
    assert refused.status_code == 409 and "another server process" in refused.json()["detail"], refused.text
    training = status(clients[leader])["training"]
    assert training["running"] and training["elsewhere"] == follower
    deadline = time.monotonic() + 120
    while (training := status(clients[follower])["training"])["running"]:
        assert time.monotonic() < deadline, "the retrain did not finish"
        time.sleep(0.3)
    assert training["stage"] == "done" and training["error"] is None, training
    models = [{m["name"]: m["version"] for m in status(c)["models"]} for c in clients.values()]
    assert models[0] == models[1], "both serve the new models"

    # the leader dies: another process leads (the other worker, or the one uvicorn starts)
    for c in clients.values():
        c.close()
    os.kill(leader, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                process = status(c)["process"]
            if process["leader_pid"] not in (None, leader):
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "no process took the lead"
        time.sleep(0.3)
    new_leader = process["leader_pid"]
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/events", json={"events": [{"event_id": "f3", "user_id": "newcomer2", "item_id": "g0-i03",
                                                   "kind": "view", "timestamp": LATER + 2}]}).status_code == 200
    row, deadline = event_row(db, "f3"), time.monotonic() + 20
    while not any(m.get("events_upto", 0) >= row for m in incremental_saves(db)):
        assert time.monotonic() < deadline, "the new leader does not save"
        time.sleep(0.3)
    assert {m["pid"] for m in incremental_saves(db) if m["events_upto"] >= row} == {new_leader}


def test_one_worker_is_the_single_process_it_always_was(shop_db, tmp_path):
    db = copy_db(shop_db, tmp_path)
    with shelfwise_serve(db, "--workers", "1") as (url, proc), httpx.Client(base_url=url, timeout=60) as c:
        process = status(c)["process"]
        assert process == {"pid": proc.pid, "leader": True, "leader_pid": proc.pid}, \
            "the command's own process serves, and leads"
        assert c.post("/train").status_code == 202
        refused = c.post("/train")
        assert refused.status_code == 409 and "already in progress (see GET /status)" in refused.json()["detail"]
        assert "elsewhere" not in status(c)["training"]


@pytest.mark.slow
def test_a_product_added_through_another_process_joins_this_ones_vector_index(
        semantic_shop_db, tmp_path, monkeypatch):
    """Neither process saves (followers): this one's index catches up from the item
    vectors the other stored (real MiniLM, real HNSW)."""
    from engine.engine import Engine
    from engine.server.schemas import ItemIn

    from .server_support import SEMANTIC_PLUGINS
    from .test_server_catalogue import NEW

    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", SEMANTIC_PLUGINS)
    db = copy_db(semantic_shop_db, tmp_path)
    here = Engine(db)
    here.serving.may_save = lambda: False
    query = "knife sharpener three stage"
    saved = here.store.active_artifacts("index/")[0]["version"]
    assert NEW["item_id"] not in [r.item_id for r in here.search(query, 5)]
    there = Engine(db, registry=here.registry)
    there.serving.may_save = lambda: False
    assert there.upsert_items([ItemIn(**NEW).to_item()])["vectors"]["encoded"] == 1
    assert here.search(query, 5)[0].item_id == NEW["item_id"], "added to this index"
    there.remove_items([NEW["item_id"]])
    there.close()
    assert NEW["item_id"] not in [r.item_id for r in here.search(query, 5)], "and removed from it"
    assert here.store.active_artifacts("index/")[0]["version"] == saved, "nobody saved it"
    here.close()
