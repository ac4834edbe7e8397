"""Requests a second with 1, 2 and 4 server processes (`shelfwise serve --workers N`) on loopback.

    python benchmarks/bench_serve_workers.py --db /tmp/demo.db [--workers 1,2,4] [--seconds 20]

The database must hold the trained demo shop (`shelfwise --db demo.db demo`); each run
serves a fresh copy of it (never the original). The load is closed-loop: `--concurrency`
clients, each sending its next request as soon as the last one is answered, over its own
kept-alive connection (the kernel hands each new connection to one process; the clients
connect 0.1 s apart, since a process takes every connection waiting when it wakes). A request is GET
/recommend for a shopper (half from 200 regulars whose lists get cached, half from all
5,000) or, one time in `--event-every`, POST /events with 5 new events (which drop those
shoppers' cached lists in every process). The rate limit is off (`--rate-limit ... 0`).
After `--warmup` seconds of the same load, `--seconds` are measured.

Prints a table and writes JSON (with the machine description and its load average). The
load generator runs in this process, on the same cores as the servers, and other jobs may
too: on a 2-core box expect 2 processes to be about the best.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._env import machine  # noqa: E402
from benchmarks.bench_server import PLUGINS, free_port  # noqa: E402

REGULARS = 200  # shoppers who come back (their lists are cached between their events)
CONNECT_GAP = 0.1  # seconds between two clients' first connections


def start(db: Path, port: int, workers: int, log: Path) -> subprocess.Popen:
    """`shelfwise serve --workers N` on `db`, ready (every process answered /readyz)."""
    env = {**os.environ, "SHELFWISE_LOAD_PLUGINS": PLUGINS}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli import main; main()", "--db", str(db), "serve",
         "--port", str(port), "--workers", str(workers), "--rate-limit", "public", "0",
         "--rate-limit", "secret", "0"], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    deadline, ready = time.monotonic() + 300, set()
    clients = []
    try:
        while len(ready) < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the server did not come up: {log.read_text()[-2000:]}")
            try:
                client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
                clients.append(client)  # kept open: the next connection may reach another process
                if client.get("/readyz").status_code == 200:
                    ready.add(client.get("/status").json()["process"]["pid"])
            except httpx.TransportError:
                time.sleep(0.3)
    finally:
        for client in clients:
            client.close()
    return proc


def rss_mib(pid: int) -> int | None:
    """A server process's resident memory (it runs on this machine)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) // 1024 for line in text.splitlines()
                 if line.startswith("VmRSS")), None)


def requests(rng, users: int, items: int, event_every: int):
    """An endless mix of requests: (method, path, body)."""
    n = 0
    while True:
        n += 1
        if n % event_every == 0:
            now = time.time()
            yield "POST", "/events", {"events": [
                {"event_id": f"bench-{n}-{i}", "user_id": f"u{int(rng.integers(users)):05d}",
                 "item_id": f"p{int(rng.integers(items)):05d}",
                 "kind": str(rng.choice(["view", "cart", "purchase"], p=[0.7, 0.2, 0.1])),
                 "timestamp": now} for i in range(5)]}
        else:
            pool = REGULARS if rng.random() < 0.5 else users
            yield "GET", f"/recommend/u{int(rng.integers(pool)):05d}?n=10", None


async def closed_loop(base: str, mix, concurrency: int, warmup: float, seconds: float) -> dict:
    """`concurrency` clients, each on its own connection, one request after another."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    pids: dict[int, int] = {}
    lists = {True: 0, False: 0}  # recommendation lists answered from a process's cache or not
    measuring_from = time.perf_counter() + warmup
    until = measuring_from + seconds

    async def client(i: int) -> None:
        # connect one after another: a worker takes every connection waiting when it wakes,
        # so a burst of connects would all land on one process
        await asyncio.sleep(i * CONNECT_GAP)
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            pid = (await c.get("/status")).json()["process"]["pid"]
            pids[pid] = pids.get(pid, 0) + 1
            while (now := time.perf_counter()) < until:
                method, path, body = next(mix)
                r = await c.request(method, path, json=body)
                if now >= measuring_from:
                    latencies.append(time.perf_counter() - now)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if method == "GET" and r.status_code == 200:
                        lists[r.json()["cached"]] += 1

    cpu = os.times()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    cpu_after = os.times()
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": seconds,
            "per_second": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "cached_share": round(lists[True] / max(1, lists[True] + lists[False]), 3),
            "connections_per_process": sorted(pids.values(), reverse=True),
            "rss_mib_per_process": sorted((rss_mib(pid) for pid in pids), reverse=True),
            "load_generator_cpu_seconds": round(cpu_after.user + cpu_after.system
                                                - cpu.user - cpu.system, 1)}


def run(args, workers: int, folder: Path, shop: dict) -> dict:
    db = folder / f"serve-{workers}.db"
    shutil.copy(args.db, db)
    port = free_port()
    started = time.perf_counter()
    proc = start(db, port, workers, folder / f"serve-{workers}.log")
    up = time.perf_counter() - started
    try:
        mix = requests(np.random.default_rng(workers), shop["users"], shop["items"], args.event_every)
        result = asyncio.run(closed_loop(f"http://127.0.0.1:{port}", mix, args.concurrency,
                                         args.warmup, args.seconds))
    finally:
        proc.terminate()
        proc.wait(60)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return {"workers": workers, "startup_seconds": round(up, 1), "load_average": os.getloadavg(),
            **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="a trained demo shop database (copied, not changed)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_workers.json"))
    ap.add_argument("--workers", default="1,2,4", help="process counts to compare")
    ap.add_argument("--concurrency", type=int, default=16, help="clients in the closed loop")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per process count")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds of load before measuring")
    ap.add_argument("--event-every", type=int, default=20, help="one request in this many posts events")
    ap.add_argument("--rounds", type=int, default=2, help="times each process count is measured, "
                                                          "in turn (the box's other load varies)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if any(w < 1 for w in counts):
        raise SystemExit("--workers: process counts of 1 or more, e.g. 1,2,4")
    with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as conn:
        shop = {"users": conn.execute("SELECT count(*) FROM users").fetchone()[0],
                "items": conn.execute("SELECT count(*) FROM items").fetchone()[0]}
    env = machine(("fastapi", "uvicorn", "httpx"))
    console = Console(width=140)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(1, args.rounds + 1):
            for workers in counts:
                console.print(f"round {round_no}, {workers} process(es): starting, {args.warmup:g} s "
                              f"warm-up, {args.seconds:g} s measured ...")
                results.append({"round": round_no, **run(args, workers, Path(tmp), shop)})
    table = Table(title=f"shelfwise serve --workers N on loopback ({os.cpu_count()} CPUs, "
                        f"{args.concurrency} closed-loop clients, 1 in {args.event_every} posts events)")
    for col in ("round", "processes", "req/s", "p50 ms", "p99 ms", "requests", "statuses", "cached",
                "connections per process", "MiB per process", "client CPU s", "load avg"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["round"]), str(r["workers"]), f"{r['per_second']:.1f}", f"{r['p50_ms']:.1f}",
                      f"{r['p99_ms']:.1f}", str(r["requests"]), json.dumps(r["statuses"]),
                      f"{r['cached_share']:.0%}",
                      str(r["connections_per_process"]), str(r["rss_mib_per_process"]),
                      str(r["load_generator_cpu_seconds"]),
                      f"{r['load_average'][0]:.1f}")
    console.print(table)
    summary = {str(w): {key: float(np.median([r[key] for r in results if r["workers"] == w]))
                        for key in ("per_second", "p50_ms", "p99_ms", "cached_share")} for w in counts}
    console.print("median over the rounds: " + "; ".join(
        f"{w} process(es) {m['per_second']:.1f} req/s, p50 {m['p50_ms']:.0f} ms, p99 {m['p99_ms']:.0f} ms"
        for w, m in summary.items()))
    out = {"machine": env, "db": args.db, "plugins": PLUGINS, "shop": shop,
           "settings": {k: v for k, v in vars(args).items() if k not in ("db", "out")},
           "median": summary, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
