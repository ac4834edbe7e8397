"""HTTP server under load on loopback: recommendation latency and throughput (served from
the per-user cache and uncached), event ingestion, all idle and again while a retrain runs.

    python benchmarks/bench_server.py --db /tmp/demo2.db [--out benchmarks/results/server.json]

The database must hold the trained demo shop (`shelfwise --db demo.db demo`); it is copied
to a temporary folder first, never changed. The server is the real thing — `shelfwise
serve` in its own process (uvicorn, one engine thread) — and the load generator is a
bounded pool of httpx async clients in this process: `--concurrency` requests in flight,
a fixed number of requests per phase. Phases:

  uncached   each request a different user (nothing cached yet)
  cached     the same users again (served from the per-user cache)
  events     POST /events batches of 100 new events (stored, fed to co-occurrence)
  ... then POST /train, and the three phases again with other users while it runs.

Prints a table and writes JSON (with the machine description). On this 2-core machine
load generator and server share the CPUs, and so do other processes (see load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
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

# The demo shop's plugins without the slow, optional ones (kg, the BERT ranker), so a retrain
# is the same one `shelfwise demo` runs.
PLUGINS = "files,recbole,demo,popular,als,cooccurrence,fusion,minilm,content,search"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path | str, port: int, timeout_s: float = 120,
                 plugins: str | None = PLUGINS) -> subprocess.Popen:
    """`shelfwise serve` in a new process, once it answers /readyz; `plugins` None: every
    installed plugin."""
    env = {**os.environ, **({"SHELFWISE_LOAD_PLUGINS": plugins} if plugins else {})}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli import main; main()", "--db", str(db), "serve",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=60).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server did not become ready in {timeout_s:.0f} s")


async def load(client: httpx.AsyncClient, requests: list[tuple[str, str, dict | None]],
               concurrency: int) -> dict:
    """Run the requests with at most `concurrency` in flight; latency per request."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cached = 0
    queue = list(reversed(requests))

    async def worker():
        nonlocal cached
        while queue:
            method, url, body = queue.pop()
            started = time.perf_counter()
            r = await client.request(method, url, json=body)
            latencies.append(time.perf_counter() - started)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if method == "GET" and r.status_code == 200:
                cached += r.json().get("cached", False)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(seconds, 2),
            "per_second": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "cached_share": round(cached / max(len(latencies), 1), 3)}


def event_batches(rng, n_batches: int, size: int, tag: str, users: int, items: int) -> list:
    now = time.time()
    return [("POST", "/events", {"events": [
        {"event_id": f"bench-{tag}-{b}-{i}", "user_id": f"u{int(rng.integers(users)):05d}",
         "item_id": f"p{int(rng.integers(items)):05d}",
         "kind": str(rng.choice(["view", "cart", "purchase"], p=[0.7, 0.2, 0.1])),
         "timestamp": now} for i in range(size)]}) for b in range(n_batches)]


async def phases(base: str, args, training: bool, offset: int, rng) -> dict:
    users = [f"u{offset + i:05d}" for i in range(args.users)]
    recs = [("GET", f"/recommend/{u}?n=10&placement=bench", None) for u in users]
    out = {}
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        out["uncached"] = await load(client, recs, args.concurrency)
        out["cached"] = await load(client, recs, args.concurrency)
        batches = event_batches(rng, args.batches, 100, f"{'t' if training else 'i'}{offset}",
                                args.shop_users, args.shop_items)
        result = await load(client, batches, args.event_concurrency)
        result["events_per_second"] = round(result["per_second"] * 100, 1)
        out["events"] = result
        status = (await client.get("/status")).json()
        out["training_running_at_end"] = status["training"]["running"]
    return out


def bench_report(folder: Path, responses: int, rng) -> dict:
    """`shelfwise report` over a synthetic log: `responses` lists of 10 items, 5% of the
    impressions with an attributed click, cart or purchase."""
    from engine.store import attribution
    from engine.db import open_db

    db = open_db(folder / "report.db")
    now = time.time()
    sources = ["als", "cooccurrence", "content", "popular"]
    rows = [(f"r_{r:020x}", pos, f"p{int(rng.integers(2000)):05d}", sources[int(rng.integers(4))],
             "fusion", ("home", "product-page", "cart")[r % 3], f"u{r % 5000:05d}", now)
            for r in range(responses) for pos in range(1, 11)]
    picked = rng.choice(len(rows), len(rows) // 20, replace=False)
    with db.atomic():
        db.conn.executemany("INSERT INTO impressions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.conn.executemany("INSERT INTO attributed_events VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (f"e{i}", rows[j][0], rows[j][2], rows[j][6], ("click", "cart", "purchase")[i % 3], 10.0, now)
            for i, j in enumerate(picked)])
    started = time.perf_counter()
    attribution.report(db, now - 7 * 86400)
    seconds = time.perf_counter() - started
    db.close()
    return {"impressions": len(rows), "attributed_events": len(picked), "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="a trained demo shop database (copied, not changed)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "server.json"))
    ap.add_argument("--users", type=int, default=600, help="distinct users per recommendation phase")
    ap.add_argument("--batches", type=int, default=30, help="event batches (of 100) per phase")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--event-concurrency", type=int, default=4)
    ap.add_argument("--report-responses", type=int, default=100_000,
                    help="responses (of 10 impressions) in the synthetic log timed for the report")
    args = ap.parse_args()
    console = Console(width=150)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        shutil.copy(args.db, db)
        import sqlite3

        conn = sqlite3.connect(db)
        args.shop_users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        args.shop_items = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        conn.close()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(db, port)
        try:
            results = {"idle": asyncio.run(phases(base, args, False, 0, rng))}
            started = time.time()
            assert httpx.post(f"{base}/train", timeout=30).status_code == 202
            results["during_retrain"] = asyncio.run(phases(base, args, True, args.users, rng))
            while httpx.get(f"{base}/status", timeout=60).json()["training"]["running"]:
                time.sleep(1)
            status = httpx.get(f"{base}/status", timeout=60).json()
            results["retrain"] = {"seconds": round(status["training"]["finished_at"] - started, 1),
                                  "error": status["training"]["error"]}
        finally:
            server.terminate()
            server.wait(30)
        results["report"] = bench_report(Path(tmp), args.report_responses, rng)
    table = Table(title=f"Shelfwise HTTP server on loopback ({os.cpu_count()} CPUs, "
                        f"concurrency {args.concurrency} / events {args.event_concurrency})")
    for col in ("when", "phase", "requests", "req/s", "p50 ms", "p99 ms", "cached", "events/s", "statuses"):
        table.add_column(col, justify="left" if col in ("when", "phase", "statuses") else "right")
    for when in ("idle", "during_retrain"):
        for phase in ("uncached", "cached", "events"):
            r = results[when][phase]
            table.add_row(when, phase, str(r["requests"]), f"{r['per_second']:.0f}", f"{r['p50_ms']:.1f}",
                          f"{r['p99_ms']:.1f}", f"{r['cached_share']:.0%}" if phase != "events" else "",
                          f"{r.get('events_per_second', 0):,.0f}" if phase == "events" else "",
                          json.dumps(r["statuses"]))
    console.print(table)
    console.print(f"retrain: {results['retrain']['seconds']} s; still running at the end of the "
                  f"retrain phases: {results['during_retrain']['training_running_at_end']}")
    r = results["report"]
    console.print(f"report over {r['impressions']:,} impressions ({r['attributed_events']:,} "
                  f"attributed events): {r['seconds']} s")
    payload = {"machine": machine(("fastapi", "uvicorn", "httpx"), ("engine", "plugins")),
               "db": args.db, "settings": {k: v for k, v in vars(args).items() if k not in ("db", "out")},
               "plugins": PLUGINS, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
