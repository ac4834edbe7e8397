"""How far one machine goes: one shop of a given size, from its import to a warm server.

    python benchmarks/bench_scale.py --size 1m           # 1M shoppers x 100k items x 20M events
    python benchmarks/bench_scale.py --size 100k         # 100k x 20k x 2M
    python benchmarks/bench_scale.py --users 200000 --items 30000 --events 4000000 --label 200k
    python benchmarks/bench_scale.py --size demo         # the demo shop (5,000 shoppers)

Phases, each in its own Python process (bench_core's Runner: the phase's peak RSS is its
own, and a phase passing --rss-limit-mib is killed rather than let loose on the machine):

  write          the shop's items and events through Store.write (the import path every
                 source takes), streamed: events/s, the database's size. The `demo` size
                 imports the demo source itself; the bigger sizes are generated with
                 benchmarks/synthetic.py (the demo generator holds shoppers x items
                 probabilities and needs more than 18 GB at 200k x 20k)
  train          engine.train(): seconds, CPU seconds and peak RSS after every stage
                 (bench_core.StageClock), the seconds of each component
  recommend-all  engine.recommend_all(10): users/s (timed on a sample of users when the
                 whole run would pass --all-budget seconds)
  serve          `shelfwise serve` in its own process: seconds until ready, GET /recommend
                 latency (p50/p99) of a warmed server, one user at a time, then POST /events
                 batches (incremental ingestion, events/s), and the server's peak RSS

Results are merged into --out (default benchmarks/results/scale.json) under the size's
label, so the sizes can be run one at a time; the table printed at the end has every size
in the file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import numpy as np  # noqa: E402

import bench_core  # noqa: E402
import synthetic  # noqa: E402
from bench_core import Runner, _db_bytes, _rss_mib, process_rss_mib  # noqa: E402
from bench_server import start_server  # noqa: E402

# label -> (users, items, events); events None: the demo source decides (about 54 a shopper)
SIZES: dict[str, tuple[int, int, int | None]] = {
    "demo": (5_000, 2_000, None),
    "small": (10_000, 2_000, 200_000),
    "100k": (100_000, 20_000, 2_000_000),
    "300k": (300_000, 50_000, 6_000_000),
    "1m": (1_000_000, 100_000, 20_000_000),
}
WRITE_PROGRESS_S = 30.0


# == phases ===================================================================================

def _progress_printer(every_s: float = WRITE_PROGRESS_S):
    """A progress callback that prints a line at most every `every_s` seconds (the log)."""
    last = [0.0]

    def progress(stage, done, total, message=""):
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            print(f"{time.strftime('%H:%M:%S')} {stage} {done:,}/{total or '?'} {message} "
                  f"(RSS peak {_rss_mib():,.0f} MiB)", flush=True)
    return progress


def phase_write(spec: dict) -> dict:
    """Generate the shop (synthetic.py) and write it through Store.write, streamed."""
    from engine.engine import Engine

    started = time.perf_counter()
    shop = synthetic.make_shop(spec["events"], spec["users"], spec["items"], seed=spec["seed"])
    generate_s = time.perf_counter() - started
    rss_generated = _rss_mib()
    engine = Engine(spec["db"])
    records = itertools.chain(synthetic.catalogue_records(shop), synthetic.event_records(shop))
    started, cpu = time.perf_counter(), time.process_time()
    report = engine.store.write(records, progress=_progress_printer())
    seconds = time.perf_counter() - started
    rows = report.events + report.duplicates
    return {"generator": "benchmarks/synthetic.py", "generate_seconds": generate_s,
            "rss_after_generate_mib": rss_generated, "seconds": seconds,
            "timed_cpu_seconds": time.process_time() - cpu, "report": report.to_dict(),
            "events": rows, "events_per_s": rows / seconds, "db_bytes": _db_bytes(spec["db"])}


def phase_import_demo(spec: dict) -> dict:
    """Engine.import_data("demo"): the demo source's generator and Store.write together."""
    from engine.engine import Engine

    engine = Engine(spec["db"])
    started, cpu = time.perf_counter(), time.process_time()
    report = engine.import_data("demo", None, progress=_progress_printer(),
                                users=spec["users"], items=spec["items"], seed=spec["seed"])
    seconds = time.perf_counter() - started
    rows = report.events + report.duplicates
    return {"generator": "the demo source (generation included in the time)",
            "seconds": seconds, "timed_cpu_seconds": time.process_time() - cpu,
            "report": report.to_dict(), "events": rows, "events_per_s": rows / seconds,
            "db_bytes": _db_bytes(spec["db"])}


def _sample_events(db: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(user_id, item_id) of `n` events picked at random by row id (no scan of the table)."""
    conn = sqlite3.connect(db)
    try:
        top = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        ids = np.random.default_rng(seed).choice(top, size=min(n * 2, top), replace=False) + 1
        rows = conn.execute(f"SELECT user_id, item_id FROM events WHERE id IN "
                            f"({','.join(map(str, ids.tolist()))})").fetchall()
    finally:
        conn.close()
    return rows[:n]


def _latencies(client, users: list[str]) -> dict:
    times, statuses = [], {}
    for user in users:
        t = time.perf_counter()
        r = client.get(f"/recommend/{user}", params={"n": 10})
        times.append(time.perf_counter() - t)
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    ms = np.array(times) * 1000
    return {"requests": len(users), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "statuses": statuses}


def _ingest(client, pairs: list[tuple[str, str]], batches: int, size: int) -> dict:
    """POST /events: `batches` batches of `size` new events (views and carts of known
    shoppers and items, each shopper paired with items of other picked events)."""
    rng = np.random.default_rng(1)
    accepted, seconds, now, m = 0, 0.0, time.time(), len(pairs)
    for b in range(batches):
        body = {"events": [{"event_id": f"scale-{b}-{i}", "user_id": pairs[(b * size + i) % m][0],
                            "item_id": pairs[(b * size + 7 * i + 1) % m][1],
                            "kind": "cart" if rng.random() < 0.2 else "view",
                            "timestamp": now + b + i / size}
                           for i in range(size)]}
        t = time.perf_counter()
        r = client.post("/events", json=body)
        seconds += time.perf_counter() - t
        r.raise_for_status()
        accepted += r.json()["accepted"]
    return {"batches": batches, "batch_size": size, "accepted": accepted, "seconds": seconds,
            "events_per_s": accepted / seconds if seconds else 0.0}


def phase_serve(spec: dict) -> dict:
    """A `shelfwise serve` process: ready time, warm latency, ingestion, its peak RSS."""
    import httpx

    from benchmarks.bench_server import free_port

    pairs = _sample_events(spec["db"], spec["users"] + spec["warmup"], spec["seed"])
    port = free_port()
    started = time.perf_counter()
    server = start_server(spec["db"], port, spec["ready_timeout_s"], plugins=None)
    ready_s = time.perf_counter() - started
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            t = time.perf_counter()
            warm = _latencies(client, [u for u, _ in pairs[:spec["warmup"]]])
            warm["seconds"] = time.perf_counter() - t
            latency = _latencies(client, [u for u, _ in pairs[spec["warmup"]:]])
            rss_serving = process_rss_mib(server.pid, "VmHWM")
            ingest = _ingest(client, pairs, spec["batches"], spec["batch_size"])
        server_peak = process_rss_mib(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(60)
    return {"ready_seconds": ready_s, "warmup": warm, "latency": latency, "ingest": ingest,
            "server_peak_rss_after_recommend_mib": rss_serving, "server_peak_rss_mib": server_peak}


PHASES = {**bench_core.PHASES, "write": phase_write, "import-demo": phase_import_demo,
          "serve": phase_serve}


# == one size ==================================================================================

STEPS = ("write", "train", "recommend-all", "serve")


def run_size(run: Runner, label: str, users: int, items: int, events: int | None,
             args: argparse.Namespace, steps: tuple[str, ...] = STEPS,
             earlier: dict | None = None) -> dict:
    """Run `steps` of one size; the results of steps not run are kept from `earlier` (a
    previous run of the same label on the same database, with --workdir and --keep)."""
    db = str(run.work / f"scale-{label}.db")
    out: dict[str, Any] = {"label": label, "users": users, "items": items, "events": events}
    out.update({k: v for k, v in (earlier or {}).items()
                if k in ("write", "train", "recommend_all", "serve")})
    shape = f"{users:,} users x {items:,} items x {f'{events:,}' if events else 'demo'} events"
    if "write" in steps and events is None:
        out["write"] = run.phase(f"{label}: import the demo shop ({shape})", "import-demo",
                                 db=db, users=users, items=items, seed=7)
    elif "write" in steps:
        out["write"] = run.phase(f"{label}: generate and Store.write ({shape})", "write",
                                 db=db, users=users, items=items, events=events, seed=2)
    if "error" in out.get("write", {}):
        return out
    if "train" in steps:
        out["train"] = run.phase(f"{label}: engine.train()", "train", db=db, echo=True)
    if "error" in out.get("train", {}):
        return out
    if "recommend-all" in steps:
        out["recommend_all"] = run.phase(
            f"{label}: engine.recommend_all(10)", "recommend-all", db=db, n=10,
            probe=args.all_probe, sample=args.all_sample, budget_s=args.all_budget)
    if "serve" in steps:
        out["serve"] = run.phase(
            f"{label}: shelfwise serve: GET /recommend x {args.latency_users}, POST /events",
            "serve", db=db, users=args.latency_users, warmup=args.warmup, seed=3,
            batches=args.batches, batch_size=args.batch_size, ready_timeout_s=args.ready_timeout)
    return out


# == reporting =================================================================================

def _mib(x: float | None) -> str:
    return "—" if x is None else f"{x / 1024:,.1f} GiB" if x >= 1024 else f"{x:,.0f} MiB"


def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


def top_components(train: dict, k: int = 3) -> list[tuple[str, float]]:
    stages = sorted(train["stages"].items(), key=lambda kv: -kv[1]["seconds"])
    return [(name, st["seconds"]) for name, st in stages[:k]]


def summary_row(res: dict) -> dict:
    """One line of the table: every cost of one size (None where a phase did not finish)."""
    w, t, a, s = (res.get(k) for k in ("write", "train", "recommend_all", "serve"))
    peak = max((r["rss_peak_mib"] for r in (w, t, a) if _ok(r)), default=None)
    return {
        "size": res["label"], "users": t["users"] if _ok(t) else res["users"],
        "items": t["items"] if _ok(t) else res["items"],
        "events": w["events"] if _ok(w) else res["events"],
        "import_events_per_s": w["events_per_s"] if _ok(w) else None,
        "import_events_per_cpu_s": w["events"] / w["timed_cpu_seconds"] if _ok(w) else None,
        "train_seconds": t["seconds"] if _ok(t) else None,
        "train_cpu_seconds": t["cpu_seconds"] if _ok(t) else None,
        "train_top": top_components(t) if _ok(t) else [],
        "train_peak_rss_mib": t["rss_peak_mib"] if _ok(t) else None,
        "peak_rss_mib": peak,
        "db_bytes": next((r["db_bytes"] for r in (t, w) if _ok(r)), None),
        "p50_ms": s["latency"]["p50_ms"] if _ok(s) else None,
        "p99_ms": s["latency"]["p99_ms"] if _ok(s) else None,
        "server_peak_rss_mib": s["server_peak_rss_mib"] if _ok(s) else None,
        "all_users_per_s": a["users_per_s"] if _ok(a) else None,
        "ingest_events_per_s": s["ingest"]["events_per_s"] if _ok(s) else None,
        "failed": [k for k in ("write", "train", "recommend_all", "serve") if res.get(k) and not _ok(res[k])],
    }


def print_table(console, rows: list[dict]) -> None:
    from rich.table import Table

    def num(x, fmt="{:,.0f}"):
        return "—" if x is None else fmt.format(x)

    table = Table(title="How far one machine goes")
    for col in ("size", "users × items", "events", "import ev/s (per CPU-s)", "train (CPU)", "top stages",
                "peak RSS (train)", "DB", "p50 / p99 ms", "server RSS", "--all users/s",
                "ingest ev/s", "failed"):
        table.add_column(col, justify="left" if col in ("size", "top stages", "failed") else "right")
    for r in rows:
        table.add_row(
            r["size"], f"{r['users']:,} × {r['items']:,}", num(r["events"]),
            f"{num(r['import_events_per_s'])} ({num(r.get('import_events_per_cpu_s'))})",
            f"{num(r['train_seconds'], '{:,.0f} s')} ({num(r.get('train_cpu_seconds'), '{:,.0f} s')})",
            ", ".join(f"{n} {s:,.0f} s" for n, s in r["train_top"]),
            _mib(r["train_peak_rss_mib"]), "—" if r["db_bytes"] is None else _mib(r["db_bytes"] / 2**20),
            "—" if r["p50_ms"] is None else f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}",
            _mib(r["server_peak_rss_mib"]), num(r["all_users_per_s"], "{:,.1f}"),
            num(r["ingest_events_per_s"]), ", ".join(r["failed"]))
    console.print(table)


def print_stages(console, res: dict) -> None:
    t = res.get("train")
    if not _ok(t):
        return
    console.print(f"[bold]{res['label']}: train stages[/] (seconds, CPU seconds, peak RSS so far)")
    for stage, st in t["stages"].items():
        console.print(f"  {stage:<28} {st['seconds']:>9,.1f} s {st['cpu_seconds']:>9,.1f} CPU-s "
                      f"{_mib(st['peak_rss_mib']):>10}", highlight=False)


# == main ======================================================================================

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), help="a preset size (or --users/--items/--events)")
    p.add_argument("--users", type=int)
    p.add_argument("--items", type=int)
    p.add_argument("--events", type=int)
    p.add_argument("--label", help="the size's name in the results (default: --size, or UxIxE)")
    p.add_argument("--settings", help="a shelfwise.toml for every phase (default: the defaults)")
    p.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    p.add_argument("--workdir", help="where the database goes (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (and the database)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated steps to run ({', '.join(STEPS)}); the others keep "
                        f"their results from --out (use with --workdir and --keep)")
    p.add_argument("--rss-limit-mib", type=float, default=16_384,
                   help="kill a phase whose resident memory passes this (default 16 GiB)")
    p.add_argument("--all-probe", type=int, default=200)
    p.add_argument("--all-sample", type=int, default=2_000)
    p.add_argument("--all-budget", type=float, default=300, help="recommend_all seconds at most")
    p.add_argument("--latency-users", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batches", type=int, default=20, help="POST /events batches")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--ready-timeout", type=float, default=1800)
    p.add_argument("--table", action="store_true",
                   help="only print the table of every size in --out (nothing is run)")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.phase and not args.table:
        if args.size:
            users, items, events = SIZES[args.size]
            args.users, args.items = args.users or users, args.items or items
            args.events = args.events or events
        if not (args.users and args.items):
            p.error("give --size, or --users and --items (and --events; without it the demo source)")
        if args.events is not None and args.events < args.users:
            p.error(f"--events {args.events:,} is less than --users {args.users:,}: every "
                    f"shopper needs an event")
        args.label = args.label or args.size or f"{args.users}x{args.items}x{args.events}"
        args.steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
        unknown = sorted(set(args.steps) - set(STEPS))
        if unknown:
            p.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        bench_core.run_phase_here(args.phase, args.spec, args.result, PHASES)
        return 0
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=170)
    if args.table:
        sizes = json.loads(Path(args.out).read_text())["sizes"].values()
        for res in sizes:
            print_stages(console, res)
        print_table(console, [summary_row(res) for res in sizes])
        return 0
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="shelfwise-scale-"))
    (work / "home").mkdir(parents=True, exist_ok=True)
    settings = Path(args.settings).read_text() if args.settings else ""
    run = Runner(work, console, settings=settings, script=Path(__file__),
                 rss_limit_mib=args.rss_limit_mib)
    env = bench_core.environment()
    env["settings"] = settings
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"benchmark": "scale", "sizes": {}}
    started = time.perf_counter()
    try:
        res = run_size(run, args.label, args.users, args.items, args.events, args, args.steps,
                       doc["sizes"].get(args.label))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    # every invocation that added to this size: its steps, machine, commit and settings
    res["runs"] = (doc["sizes"].get(args.label) or {}).get("runs", []) + [
        {"steps": list(args.steps), "seconds": time.perf_counter() - started, "environment": env}]
    res["summary"] = summary_row(res)
    doc = json.loads(out.read_text()) if out.exists() else doc  # other sizes may have finished
    doc["sizes"][args.label] = res
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print_stages(console, res)
    print_table(console, [r["summary"] for r in doc["sizes"].values()])
    console.print(f"Results written to {out} ({res['runs'][-1]['seconds']:,.0f} s).")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
