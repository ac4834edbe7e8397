"""Peak memory and time of `shelfwise train` on the demo shop and on a 10x bigger one.

    python benchmarks/bench_memory.py                          # both shops, this tree
    python benchmarks/bench_memory.py --before 333dff6         # and an older revision, side by side
    python benchmarks/bench_memory.py --only demo --workdir /tmp/mem --keep
    python benchmarks/bench_memory.py --db-demo demo.db --db-big big.db   # reuse imported shops
    python benchmarks/bench_memory.py --only big --update     # rerun one shop, keep the other
    python benchmarks/bench_memory.py --show benchmarks/results/memory.json

The shops come from the `demo` source: "demo" is the default (5,000 shoppers, 2,000 items,
90 days: about 270,000 events) and "big" has 50,000 shoppers, 10,000 items and 67 days (about
2 million events). Each is imported once (or read from `--db-demo` / `--db-big`, which are
never written to) and its item vectors are encoded once, so that every `train` below starts
from the same copy and times fitting rather than text encoding.

Every `train` is a new process (`python -m engine.cli --db COPY train --json`) on a fresh copy
of that database; its peak memory is the larger of the process's own `ru_maxrss` (what
`/usr/bin/time -v` reports) and the sampled peak PSS of it and the processes it forks
(`tree_memory.py`), its time the wall clock. With `--before REV` the same runs happen on a git
worktree of REV (through PYTHONPATH, with this virtualenv), each shop's versions one after
the other. The table shows the validation figures `train` prints: each ranker's validation
NDCG@10 and the held-back check that chose the serving ranker.

Prints a table and writes JSON to benchmarks/results/memory.json (`--out PATH`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE)]

from _env import machine  # noqa: E402
from tree_memory import measure  # noqa: E402

SHOPS = {
    "demo": {"users": 5000, "items": 2000, "days": 90},
    "big": {"users": 50000, "items": 10000, "days": 67},
}
TARGET_GIB = {"demo": 2.0, "big": 4.0}
ENCODE = """
import sys
from engine import Engine
Engine(sys.argv[1]).refresh_vectors()
"""


def environment(tree: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHELFWISE_DB")}
    env["PYTHONPATH"] = str(tree or ROOT)
    return env


def run_child(argv: list[str], env: dict, log: Path) -> tuple[float, float, str]:
    """Wall seconds, peak memory (GiB) and stdout of one process. The peak is the larger of
    the process's own peak RSS and the sampled peak PSS of it and the processes it forks
    (`tree_memory.py`: train forks a training partner and a ranker fitted beside bert)."""
    with open(log, "wb") as err, tempfile.TemporaryFile() as out:
        found = measure(argv, env=env, cwd=tempfile.gettempdir(), stdout=out, stderr=err)
        out.seek(0)
        text = out.read().decode()
    if found["exit"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed; see {log}:\n{log.read_text()[-2000:]}")
    peak_mib = max(found["main_peak_rss_mib"], found["tree_peak_pss_mib"])
    return found["wall_s"], peak_mib / 1024, text


def counts(db: Path) -> dict:
    with sqlite3.connect(db) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("users", "items", "events")}


def prepare(name: str, given: str | None, workdir: Path) -> Path:
    """The imported shop with its item vectors encoded (a copy when given: never written)."""
    db = workdir / f"{name}.db"
    if not db.exists():
        if given:
            shutil.copyfile(given, db)
        else:
            opts = [f"-o{k}={v}" for k, v in SHOPS[name].items()]
            print(f"importing the {name} shop ({', '.join(opts)})", flush=True)
            subprocess.run([sys.executable, "-m", "engine.cli", "--db", str(db), "import", "demo",
                            *opts], env=environment(None), check=True, stdout=subprocess.DEVNULL)
    print(f"encoding the {name} shop's items (once, for every run)", flush=True)
    subprocess.run([sys.executable, "-c", ENCODE, str(db)], env=environment(None), check=True)
    return db


def summary(report: dict) -> dict:
    """What `train` said about accuracy: each ranker's validation and check NDCG@10."""
    rankers = {}
    for name, m in report.get("rankers", {}).items():
        rankers[name] = {k: m.get(k) for k in ("ndcg@10", "check_ndcg@10", "examples", "steps",
                                                "best_step", "best_stage", "uses_text",
                                                "text_skipped") if k in m}
    return {"rankers": rankers, "serving": (report.get("ranker") or {}).get("serving"),
            "why": (report.get("ranker") or {}).get("why"),
            "validation_moments": report.get("validation_moments"),
            "total_seconds": report.get("total_seconds")}


def run(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="shelfwise-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Path | None] = {"after": None}
    worktree = None
    if args.before:
        worktree = Path(tempfile.mkdtemp(prefix="shelfwise-before-"))
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        variants = {"before": worktree, **variants}
    results: dict = {}
    try:
        for shop in args.only or list(SHOPS):
            base = prepare(shop, getattr(args, f"db_{shop}"), workdir)
            results[shop] = {"shop": {**SHOPS[shop], **counts(base)}}
            for name, tree in variants.items():
                copy = workdir / f"{shop}-{name}.db"
                shutil.copyfile(base, copy)
                log = workdir / f"{shop}-{name}.log"
                print(f"train on {shop} ({name}) ...", flush=True)
                argv = [sys.executable, "-m", "engine.cli", "--db", str(copy), "train", "--json"]
                seconds, gib, out = run_child(argv, environment(tree), log)
                report = json.loads(out.strip().splitlines()[-1])
                results[shop][name] = {"seconds": seconds, "peak_rss_gib": gib, **summary(report)}
                print(f"  {seconds:.0f} s, peak RSS {gib:.2f} GiB", flush=True)
                copy.unlink()
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                           capture_output=True)
            shutil.rmtree(worktree, ignore_errors=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"environment": machine(("numpy", "scipy", "torch", "implicit")),
            "before": args.before, "targets_gib": TARGET_GIB, "results": results}


def show(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    env = report["environment"]
    table = Table(title=f"shelfwise train: peak memory — {env['date']}",
                  caption=f"{env['cpus_usable']} CPUs, {env['memory_mib']:,} MiB, load average at "
                          f"start {env['load_average_start'][0]:.1f}; one new process per run; "
                          f"NDCG@10: validation (held-back check)")
    for col in ("shop (users / items / events)", "version", "train s", "peak RSS", "target",
                "fusion NDCG@10", "bert NDCG@10", "serving"):
        table.add_column(col, justify="left" if col in ("version", "serving") or col.startswith("shop")
                         else "right")
    for shop, res in report["results"].items():
        info = res["shop"]
        for name in ("before", "after"):
            if name not in res:
                continue
            r = res[name]
            label = name + (f" ({report['before']})" if name == "before" else "")

            def ndcg(ranker: str) -> str:
                m = r["rankers"].get(ranker)
                if not m:
                    return ""
                check = m.get("check_ndcg@10")
                return f"{m.get('ndcg@10', 0):.4f}" + (f" ({check:.4f})" if check is not None else "")

            gib = r["peak_rss_gib"]
            target = report["targets_gib"].get(shop)
            table.add_row(f"{shop} ({info['users']:,} / {info['items']:,} / {info['events']:,})",
                          label, f"{r['seconds']:.0f}", f"{gib:.2f} GiB",
                          f"{'met' if gib <= target else 'missed'} (≤ {target:g})" if target else "",
                          ndcg("fusion"), ndcg("bert"), r.get("serving") or "")
    Console(width=max(Console().width, 140)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="a git revision to compare with, side by side")
    parser.add_argument("--only", action="append", choices=list(SHOPS), help="only this shop (repeatable)")
    parser.add_argument("--db-demo", help="an imported demo shop to use (copied, never written)")
    parser.add_argument("--db-big", help="an imported big shop to use (copied, never written)")
    parser.add_argument("--workdir", help="keep the databases and logs here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", default=str(HERE / "results" / "memory.json"))
    parser.add_argument("--update", action="store_true", help="replace only the shops run now "
                        "in an existing results JSON (the others and their environment are kept)")
    parser.add_argument("--show", help="print the table of a results JSON and stop")
    args = parser.parse_args()
    if args.show:
        show(json.loads(Path(args.show).read_text()))
        return
    for key in ("db_demo", "db_big"):
        if getattr(args, key):
            setattr(args, key, str(Path(getattr(args, key)).resolve()))
    report = run(args)
    out = Path(args.out)
    if args.update and out.exists():  # keep the other shops' results of an earlier run
        old = json.loads(out.read_text())
        report["results"] = {**old.get("results", {}), **report["results"]}
        report["earlier_environments"] = [*old.get("earlier_environments", []), old["environment"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    show(report)


if __name__ == "__main__":
    main()
