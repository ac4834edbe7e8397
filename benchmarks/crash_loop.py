"""Crash loop: kill -9 at random moments of import, train, event ingestion and erasure, and
check after every kill that nothing was lost, nothing half-written, nothing left broken.

    python benchmarks/crash_loop.py -n 300 [--seed 1] [--out benchmarks/results/crash_loop.json]

One shop database (the demo shop, 600 shoppers and 200 products, trained with the core
plugins: popular, ALS, co-occurrence, fusion) lives through every round. A round starts one
operation in a fresh process (forked from a server process that has imported the engine,
so start-up is milliseconds, not the seconds of a cold Python), waits a random time between
0 and 1.2 x that operation's uninterrupted duration (measured first), and sends SIGKILL —
unless the operation finished first, which is counted too. Operations:

  import   a CSV file of 40 new events (one transaction)
  ingest   batches of 25 new events through Engine.ingest, as POST /events stores them,
           each batch followed by the incremental model save (co-occurrence counts)
  train    a full train (writes and activates model artifacts, prunes old versions)
  erase    the erasure of a shopper (events, impressions, models rewritten, checkpoint)

After each round, in this process with a new Engine: `PRAGMA integrity_check` is "ok";
every import file and ingest batch is stored whole or not at all; an erased shopper's events
are all there or all gone, and gone from every stored model when gone; no training run is
left "running"; every active model loads (status() reports nothing broken); and
`recommend` answers a known shopper with a full list. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from _env import machine  # noqa: E402

PLUGINS = "files,demo,popular,als,cooccurrence,fusion"
OPERATIONS = ("import", "ingest", "train", "erase")
IMPORT_SIZE, BATCH, BATCHES = 40, 25, 12
SHOPPERS = 600  # in the demo shop


def _engine(db: str):
    from engine import Engine

    return Engine(db)


def _events(tag: str, n: int, rng: random.Random, users: list[str], items: list[str]):
    now = time.time()
    return [(f"{tag}-{k}", rng.choice(users), rng.choice(items), rng.choice(("view", "click", "cart")),
             now - rng.uniform(0, 86400)) for k in range(n)]


def work(op: str, db: str, tag: str, seed: int, folder: str, users: list[str]) -> None:
    """One operation, in a child process (it may be killed at any moment). New events go to
    `users`, never to the shoppers set aside for erasure."""
    from engine import Event

    rng = random.Random(seed)
    eng = _engine(db)
    items = [r[0] for r in eng.store.conn.execute("SELECT item_id FROM items")]
    if op == "import":
        path = Path(folder) / f"{tag}.csv"
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["event_id", "user_id", "item_id", "kind", "timestamp"])
            out.writerows(_events(tag, IMPORT_SIZE, rng, users, items))
        eng.import_data("csv", None, events=str(path))
    elif op == "ingest":
        for b in range(BATCHES):
            rows = _events(f"{tag}.{b}", BATCH, rng, users, items)
            eng.ingest([Event(u, i, k, t, None, e) for e, u, i, k, t in rows])
    elif op == "train":
        eng.train()
    elif op == "erase":
        eng.erase_user(tag)
    eng.close()


def check(db: str, ledger: dict) -> list[str]:
    """What is wrong with the database after a round ([] when nothing)."""
    problems = []
    raw = sqlite3.connect(db)
    try:
        if (ok := raw.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            return [f"integrity_check: {ok}"]
        counts = dict(raw.execute(
            "SELECT substr(event_id, 1, instr(event_id, '-') - 1), count(*) FROM events "
            "WHERE event_id LIKE 'r%-%' GROUP BY 1"))
    finally:
        raw.close()
    for tag, expected in ledger["writes"].items():
        found = counts.get(tag, 0)
        if found not in expected:
            problems.append(f"{tag}: {found} events stored, expected one of {sorted(expected)}")
    eng = _engine(db)
    try:
        for user, before in ledger["erased"].items():
            left = eng.store.conn.execute("SELECT count(*) FROM events WHERE user_id = ?", [user]).fetchone()[0]
            if left not in (0, before):
                problems.append(f"erasure of {user}: {left} of {before} events left")
            elif left == 0:
                blobs = eng.store.conn.execute("SELECT name FROM artifacts WHERE instr(bytes, ?) > 0 OR instr(meta, ?) > 0",
                                               [user.encode(), user]).fetchall()
                if blobs:
                    problems.append(f"erased {user} still in {[b[0] for b in blobs]}")
        running = [r["id"] for r in eng.store.runs("train") if r["status"] == "running"]
        if running:
            problems.append(f"runs left running: {running}")
        status = eng.status()
        if status.get("broken"):
            problems.append(f"models that do not load: {status['broken']}")
        recs = eng.recommend(ledger["probe_user"], 10)
        if len(recs) < 10:
            problems.append(f"recommend answered {len(recs)} items")
    except Exception as exc:  # noqa: BLE001 — any error is a finding
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        eng.close()
    return problems


def _expectations(op: str, tag: str) -> dict[str, set[int]]:
    """What each event tag may count after a kill: whole or nothing."""
    if op == "import":
        return {tag: {0, IMPORT_SIZE}}
    if op == "ingest":  # batches are tagged rN.b: counted per batch
        return {f"{tag}.{b}": {0, BATCH} for b in range(BATCHES)}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="rounds (kill attempts)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "crash_loop.json"))
    args = parser.parse_args()
    os.environ["SHELFWISE_LOAD_PLUGINS"] = PLUGINS
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rng = random.Random(args.seed)
    folder = tempfile.mkdtemp(prefix="shelfwise-crash-")
    db = str(Path(folder) / "shop.db")
    started = time.perf_counter()

    eng = _engine(db)
    eng.import_data("demo", None, seed=3, users=SHOPPERS, items=200)
    eng.train()
    shoppers = sorted(eng.store.users_with_events())
    eng.close()
    # the first ones are set aside for erasure (no new events), one more answers `recommend`
    erasable, probe, active = shoppers[:args.n // 4 + 4], shoppers[-1], shoppers[args.n // 4 + 4:]
    if len(active) < 50:
        raise SystemExit(f"-n {args.n} needs more shoppers than the {SHOPPERS} of the demo shop")

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["engine", "engine.engine", "plugins.files", "plugins.als",
                                "plugins.cooccurrence", "plugins.fusion", "plugins.popular"])
    ledger = {"writes": {}, "erased": {}, "probe_user": probe}

    def run(op: str, tag: str, delay: float | None) -> tuple[bool, float]:
        """Start `op`; kill it after `delay` seconds. (finished before the kill, seconds)."""
        proc = ctx.Process(target=work, args=(op, db, tag, rng.randrange(1 << 30), folder, active))
        t0 = time.perf_counter()
        proc.start()
        proc.join(delay)
        finished = proc.exitcode is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
        elif proc.exitcode != 0:
            raise SystemExit(f"{op} failed on its own (exit {proc.exitcode}); see its output above")
        return finished, time.perf_counter() - t0

    def erase_target() -> str:
        eng = _engine(db)
        user = rng.choice([u for u in erasable if u not in ledger["erased"]])
        ledger["erased"][user] = eng.store.conn.execute(
            "SELECT count(*) FROM events WHERE user_id = ?", [user]).fetchone()[0]
        eng.close()
        return user

    # how long each operation takes when nobody kills it (the kill moments scale with it)
    durations = {}
    for op in OPERATIONS:
        for k in range(3):  # the quickest of three
            tag = erase_target() if op == "erase" else f"r{op}{k}"
            ledger["writes"].update({t: {max(v)} for t, v in _expectations(op, tag).items()})
            durations[op] = min(durations.get(op, 1e9), run(op, tag, None)[1])
    print("uninterrupted seconds: " + ", ".join(f"{op} {s:.2f}" for op, s in durations.items()))

    stats = {op: {"rounds": 0, "killed": 0, "finished": 0} for op in OPERATIONS}
    findings = []
    for n in range(args.n):
        op = OPERATIONS[n % len(OPERATIONS)]
        tag = erase_target() if op == "erase" else f"r{n}"
        ledger["writes"].update(_expectations(op, tag))
        finished, _ = run(op, tag, rng.uniform(0, 1.2 * durations[op]))
        stats[op]["rounds"] += 1
        stats[op]["finished" if finished else "killed"] += 1
        problems = check(db, ledger)
        if problems:
            findings.append({"round": n, "operation": op, "killed": not finished, "problems": problems})
            print(f"round {n} ({op}, {'finished' if finished else 'killed'}): {problems}", flush=True)
        if (n + 1) % 20 == 0:
            print(f"{n + 1} rounds, {len(findings)} with findings, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)

    result = {"machine": machine(("sqlite-utils",)), "rounds": args.n, "seed": args.seed,
              "uninterrupted_seconds": durations, "by_operation": stats, "findings": findings,
              "erased_users": len(ledger["erased"]), "seconds": time.perf_counter() - started,
              "sqlite": sqlite3.sqlite_version}
    print(f"\n{'operation':<10}{'rounds':>8}{'killed':>8}{'finished':>10}")
    for op, s in stats.items():
        print(f"{op:<10}{s['rounds']:>8}{s['killed']:>8}{s['finished']:>10}")
    print(f"\n{len(findings)} rounds with findings out of {args.n} "
          f"({time.perf_counter() - started:.0f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
