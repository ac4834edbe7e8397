"""A bounded load run on loopback: a shop's website sending events and asking for lists at
a steady rate for several minutes, with a retrain in the middle; latency, and whether any
acknowledged event was lost or stored twice.

    python benchmarks/load_run.py --db demo.db [--seconds 300] [--retrain-at 100]
                                  [--out benchmarks/results/load_run.json]

The database must hold a trained demo shop (`shelfwise --db demo.db demo`); a copy is served
by `shelfwise serve` in its own process. The load is open-loop (requests start on schedule,
whether or not earlier ones have answered; at most --max-in-flight at once):

  events     --event-rate events a second as POST /events of --batch events; --resend of
             them repeat an event already sent (same event_id and payload: a client retry)
  recommend  --rec-rate GET /recommend/{user} a second, random shoppers
  similar    --side-rate GET /similar/{item} a second, and as many GET /search?q=...

A batch that fails (an error status or no answer) is sent again, up to 3 times, as a real
client would. At the end the stored events are counted: lost = events the server
acknowledged that are not stored; duplicated = event ids stored more than once.
Latency is reported before, during and after the retrain (POST /train at --retrain-at s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]
from benchmarks._env import machine  # noqa: E402
from benchmarks.bench_server import PLUGINS, free_port, start_server  # noqa: E402

WORDS = ["boots", "rain jacket", "coffee", "knife", "lamp", "wool socks", "tent", "tea", "mug", "backpack"]


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"requests": 0}
    a = np.array(ms)
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1)}


async def run(base: str, args, users: list[str], items: list[str]) -> dict:
    rng = random.Random(args.seed)
    sent: dict[str, dict] = {}      # event_id -> payload (the first send)
    acknowledged: set[str] = set()
    counters = {"resends": 0, "accepted": 0, "duplicates": 0, "retries": 0, "failed_batches": 0}
    latencies: dict[tuple[str, str], list[float]] = {}
    statuses: dict[str, dict[int, int]] = {}
    state = {"phase": "before", "train_started": None, "train_finished": None}
    in_flight = asyncio.Semaphore(args.max_in_flight)
    tasks: set[asyncio.Task] = set()

    async def request(client, kind: str, method: str, url: str, body=None) -> httpx.Response | None:
        phase = state["phase"]
        async with in_flight:
            started = time.perf_counter()
            try:
                r = await client.request(method, url, json=body)
            except httpx.HTTPError:
                r = None
            latencies.setdefault((kind, phase), []).append((time.perf_counter() - started) * 1000)
        code = r.status_code if r is not None else 0
        statuses.setdefault(kind, {}).setdefault(code, 0)
        statuses[kind][code] += 1
        return r

    async def post_events(client, events: list[dict]) -> None:
        for attempt in range(4):
            r = await request(client, "events", "POST", "/events", {"events": events})
            if r is not None and r.status_code == 200:
                body = r.json()
                counters["accepted"] += body["accepted"]
                counters["duplicates"] += body["duplicates"]
                acknowledged.update(e["event_id"] for e in events)
                return
            counters["retries"] += attempt < 3
        counters["failed_batches"] += 1

    def batch(n: int) -> list[dict]:
        out = []
        for k in range(args.batch):
            if sent and rng.random() < args.resend:
                counters["resends"] += 1
                out.append(sent[rng.choice(list(sent)[-5000:])])
                continue
            eid = f"load-{n}-{k}"
            event = {"event_id": eid, "user_id": rng.choice(users), "item_id": rng.choice(items),
                     "kind": rng.choices(["view", "click", "cart", "purchase"], [70, 15, 10, 5])[0],
                     "timestamp": time.time()}
            sent[eid] = event
            out.append(event)
        return out

    def spawn(coro) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def watch_training(client) -> None:
        await asyncio.sleep(args.retrain_at)
        r = await client.post("/train")
        assert r.status_code == 202, r.text
        state.update(phase="during", train_started=time.perf_counter() - t0)
        while True:
            await asyncio.sleep(1)
            training = (await client.get("/status")).json()["training"]
            if not training["running"]:
                state.update(phase="after", train_finished=time.perf_counter() - t0,
                             train_error=training.get("error"))
                return

    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        watcher = asyncio.create_task(watch_training(client))
        ticks = {"events": args.event_rate / args.batch, "recommend": args.rec_rate,
                 "similar": args.side_rate, "search": args.side_rate}
        due = {kind: 0.0 for kind in ticks}
        n = 0
        while (now := time.perf_counter() - t0) < args.seconds:
            for kind, rate in ticks.items():
                while rate and due[kind] <= now:
                    due[kind] += 1 / rate
                    if kind == "events":
                        spawn(post_events(client, batch(n)))
                        n += 1
                    elif kind == "recommend":
                        spawn(request(client, kind, "GET", f"/recommend/{rng.choice(users)}?n=10&placement=load"))
                    elif kind == "similar":
                        spawn(request(client, kind, "GET", f"/similar/{rng.choice(items)}?n=10"))
                    else:
                        spawn(request(client, kind, "GET", f"/search?q={rng.choice(WORDS)}&n=10"))
            await asyncio.sleep(max(0.0, min(due.values()) - (time.perf_counter() - t0)))
        await asyncio.gather(*list(tasks))
        sending_seconds = time.perf_counter() - t0
        if not watcher.done():
            print("waiting for the retrain to finish…", flush=True)
        await watcher
    return {"sent_unique": len(sent), "acknowledged": len(acknowledged), **counters,
            "sending_seconds": round(sending_seconds, 1),
            "retrain": {"started_s": round(state["train_started"], 1),
                        "finished_s": round(state["train_finished"], 1),
                        "error": state.get("train_error")},
            "latency": {f"{kind} {phase}": percentiles(ms) for (kind, phase), ms in sorted(latencies.items())},
            "statuses": {k: {str(c): v for c, v in sorted(s.items())} for k, s in statuses.items()},
            "_acknowledged_ids": acknowledged}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--retrain-at", type=float, default=100)
    ap.add_argument("--event-rate", type=float, default=300)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--resend", type=float, default=0.05)
    ap.add_argument("--rec-rate", type=float, default=30)
    ap.add_argument("--side-rate", type=float, default=2)
    ap.add_argument("--max-in-flight", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "load_run.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "load.db"
        shutil.copy(args.db, db)
        conn = sqlite3.connect(db)
        users = [r[0] for r in conn.execute("SELECT user_id FROM users")]
        items = [r[0] for r in conn.execute("SELECT item_id FROM items")]
        conn.close()
        port = free_port()
        server = start_server(db, port)
        try:
            result = asyncio.run(run(f"http://127.0.0.1:{port}", args, users, items))
        finally:
            server.terminate()
            server.wait(60)
        conn = sqlite3.connect(db)
        stored = dict(conn.execute("SELECT event_id, count(*) FROM events WHERE event_id LIKE 'load-%' "
                                   "GROUP BY event_id"))
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
    acknowledged = result.pop("_acknowledged_ids")
    result.update(stored=len(stored), lost=len(acknowledged - set(stored)),
                  duplicated=sum(c - 1 for c in stored.values() if c > 1), integrity_check=integrity)
    print(f"{'requests':<22}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, p in result["latency"].items():
        if p["requests"]:
            print(f"{name:<22}{p['requests']:>7}{p['p50_ms']:>9}{p['p99_ms']:>9}{p['max_ms']:>9}")
    print(f"\nstatuses: {json.dumps(result['statuses'])}")
    print(f"events: {result['sent_unique']:,} sent once + {result['resends']:,} resends; "
          f"{result['accepted']:,} accepted, {result['duplicates']:,} answered as duplicates; "
          f"stored {result['stored']:,}; lost {result['lost']}, duplicated {result['duplicated']}; "
          f"retries {result['retries']}, failed batches {result['failed_batches']}")
    print(f"retrain: started at {result['retrain']['started_s']} s, active at "
          f"{result['retrain']['finished_s']} s, error {result['retrain']['error']}; "
          f"integrity_check {integrity}")
    payload = {"machine": machine(("fastapi", "uvicorn", "httpx"), ("engine", "plugins")),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "plugins": PLUGINS,
               "result": result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
