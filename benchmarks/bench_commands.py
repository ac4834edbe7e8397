"""How fast the `shelfwise` commands start and answer, cold, before and after a change.

    python benchmarks/bench_commands.py --db demo.db                    # this tree only
    python benchmarks/bench_commands.py --db demo.db --before 12f7359   # side by side
    python benchmarks/bench_commands.py --db demo.db --before 12f7359 --db-before old.db
    python benchmarks/bench_commands.py --show benchmarks/results/commands.json

Every measurement is a new process (a shop owner's terminal, a cron job): `--help`,
`recommend USER`, `similar ITEM`, `search TEXT`, `recommend --text TEXT`, each `--repeat`
times, and `Engine.recommend_all` over the first `--users` shoppers (users per second of wall
time and per second of the process's CPU time, the better of the runs; the start not
counted: the models are loaded first). With `--before REV` the same commands run on a git worktree of REV (through
PYTHONPATH, with this virtualenv), the two versions taking turns so that the machine's load
falls on both alike. The database must have been trained (`shelfwise --db demo.db demo`);
`--db-before` gives the old version its own copy when the new one refuses older models.

Prints a table (median and best of the repeats, peak RSS) and writes JSON to
benchmarks/results/commands.json (`--out PATH`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE)]

from _env import machine  # noqa: E402

RECOMMEND_ALL = """
import itertools, sys, time
from engine import Engine
from engine.plugins import load_plugins
eng = Engine(sys.argv[1], registry=load_plugins())
eng.recommend("{user}", 10)  # models loaded: the start is not what is measured
started, cpu = time.perf_counter(), time.process_time()
done = sum(1 for _ in itertools.islice(eng.recommend_all(10), int(sys.argv[2])))
print(done / (time.perf_counter() - started), done / (time.process_time() - cpu))
"""


def commands(db: str, user: str, item: str) -> dict[str, list[str]]:
    base = [sys.executable, "-m", "engine.cli", "--db", db]
    return {
        "--help": [sys.executable, "-m", "engine.cli", "--help"],
        "recommend USER": [*base, "recommend", user],
        "similar ITEM": [*base, "similar", item],
        "search TEXT": [*base, "search", "warm tent for winter"],
        "recommend --text": [*base, "recommend", "--text", "a camera backpack"],
    }


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of a command in a new process."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=tempfile.gettempdir(),
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed:\n{err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def environment(tree: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHELFWISE_DB")}
    env["PYTHONPATH"] = str(tree or ROOT)
    return env


def first_user_and_item(db: str) -> tuple[str, str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        user = conn.execute("SELECT user_id FROM events ORDER BY id LIMIT 1").fetchone()[0]
        item = conn.execute("SELECT item_id FROM events ORDER BY id LIMIT 1").fetchone()[0]
    return user, item


def run(args) -> dict:
    user, item = first_user_and_item(args.db)
    variants = {"after": (None, args.db)}
    worktree = None
    if args.before:
        worktree = Path(tempfile.mkdtemp(prefix="shelfwise-before-"))
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        variants = {"before": (worktree, args.db_before or args.db), **variants}
    results: dict = {name: {} for name in variants}
    try:
        for _ in range(args.repeat):  # the versions take turns, command by command
            for label in commands(args.db, user, item):
                for name, (tree, db) in variants.items():
                    argv = commands(db, user, item)[label]
                    seconds, rss = timed(argv, environment(tree))
                    results[name].setdefault(label, {"seconds": [], "rss_mib": []})
                    results[name][label]["seconds"].append(seconds)
                    results[name][label]["rss_mib"].append(rss)
        for _ in range(max(1, args.repeat // 2)):  # the versions take turns here too
            for name, (tree, db) in variants.items():
                script = RECOMMEND_ALL.replace("{user}", user)
                # not from this checkout's folder: `python -c` puts the working folder first
                # on sys.path, and the old version would import this tree's engine
                out = subprocess.run([sys.executable, "-c", script, str(Path(db).resolve()), str(args.users)],
                                     env=environment(tree), capture_output=True, text=True,
                                     cwd=tempfile.gettempdir())
                if out.returncode != 0:
                    raise SystemExit(f"recommend_all ({name}) failed:\n{out.stderr[-2000:]}")
                wall, cpu = (float(v) for v in out.stdout.split()[-2:])
                cell = results[name].setdefault("recommend --all", {"users": args.users,
                                                                    "users_per_second": [],
                                                                    "users_per_cpu_second": []})
                cell["users_per_second"].append(wall)
                cell["users_per_cpu_second"].append(cpu)
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                           capture_output=True)
            shutil.rmtree(worktree, ignore_errors=True)
    return {"environment": machine(("numpy", "torch", "transformers", "sentence-transformers")),
            "db": args.db, "before": args.before, "repeat": args.repeat, "results": results}


def show(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    env = report["environment"]
    names = list(report["results"])
    table = Table(title=f"Cold commands on {Path(report['db']).name} — {env['date']}",
                  caption=f"{env['cpus_usable']} CPUs, load average at start "
                          f"{env['load_average_start'][0]:.1f}; median (best) of "
                          f"{report['repeat']} runs, each a new process")
    table.add_column("command")
    for name in names:
        label = name + (f" ({report['before']})" if name == "before" else "")
        table.add_column(f"{label} s", justify="right")
        table.add_column(f"{name} peak RSS", justify="right")
    for label in report["results"][names[-1]]:
        row = [label]
        for name in names:
            cell = report["results"][name].get(label, {})
            if "users_per_second" in cell:
                row += [f"{max(cell['users_per_second']):.0f} users/s",
                        f"{max(cell['users_per_cpu_second']):.0f} per CPU-s"]
            else:
                secs = cell.get("seconds", [])
                rss = cell.get("rss_mib", [])
                row += [f"{statistics.median(secs):.2f} ({min(secs):.2f})" if secs else "",
                        f"{max(rss):,.0f} MiB" if rss else ""]
        table.add_row(*row)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="a trained shop (shelfwise --db demo.db demo)")
    parser.add_argument("--before", help="a git revision to compare with, side by side")
    parser.add_argument("--db-before", help="the database the old version reads (default: --db)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--users", type=int, default=1000, help="shoppers for recommend --all")
    parser.add_argument("--out", default=str(HERE / "results" / "commands.json"))
    parser.add_argument("--show", help="print the table of a results JSON and stop")
    args = parser.parse_args()
    if args.show:
        show(json.loads(Path(args.show).read_text()))
        return
    if not args.db:
        parser.error("--db is required (a trained shop: shelfwise --db demo.db demo)")
    args.db = str(Path(args.db).resolve())
    if args.db_before:
        args.db_before = str(Path(args.db_before).resolve())
    report = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    show(report)


if __name__ == "__main__":
    main()
