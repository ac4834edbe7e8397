"""Time and peak memory of one `transformer` fit, alone, on each shop's whole history.

    python benchmarks/bench_transformer_fit.py --db demo.db --db ml100k.db
    python benchmarks/bench_transformer_fit.py --db demo.db --processes 1 --processes 2

Each fit is a new process (this script with `--one DB`): it reads the shop's events and item
vectors from the database (never written to), then fits the `transformer` recaller with
its default settings from scratch, early stopping included: the cold fit, as the oldest
validation cut of `train` does (the later fits start warm and take fewer epochs). Its time
is the fit's own wall clock; its memory is the sampled peak of the process and its training
partner together (the sum of their PSS, `tree_memory.py`), the Python process with torch
included.

Prints a table and writes JSON to benchmarks/results/transformer_fit.json (`--out PATH`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from _env import machine  # noqa: E402
from tree_memory import measure  # noqa: E402


def one(db: str, processes: int) -> None:
    """In the measured process: fit and print the report as the last line of JSON."""
    from engine.engine import Engine

    engine = Engine(db)
    data = engine.dataset()
    recaller = engine.make("recallers", "transformer")
    recaller.resources = engine.resources()
    recaller.config = recaller.config.model_copy(update={"processes": processes})
    started, cpu = time.perf_counter(), time.process_time()
    recaller.fit(data)
    report = recaller.report
    print(json.dumps({"events": int(data.n_events), "shoppers": int(data.n_users), "items": int(data.n_items),
                      "fit_s": round(time.perf_counter() - started, 1),
                      "fit_cpu_s_here": round(time.process_time() - cpu, 1),
                      **{k: report[k] for k in ("epochs", "best_epoch", "validation_ndcg@10", "stopped",
                                                "windows", "processes")}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", action="append", help="a shop's database (repeatable)")
    ap.add_argument("--processes", action="append", type=int, help="training processes (repeatable; "
                    "default: the plugin's default)")
    ap.add_argument("--out", default=str(HERE / "results" / "transformer_fit.json"))
    ap.add_argument("--one", nargs=2, metavar=("DB", "PROCESSES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.one[0], int(args.one[1]))
        return
    if not args.db:
        ap.error("name at least one shop's database with --db")
    from plugins.transformer import TransformerConfig

    runs = []
    for db in args.db:
        for processes in args.processes or [TransformerConfig().processes]:
            argv = [sys.executable, __file__, "--one", str(Path(db).resolve()), str(processes)]
            with tempfile.TemporaryFile("w+") as out:
                tree = measure(argv, stdout=out)
                out.seek(0)
                lines = out.read().splitlines()
            if tree["exit"] or not lines:
                raise SystemExit(f"the fit on {db} failed (exit {tree['exit']})")
            runs.append({"db": Path(db).name, **json.loads(lines[-1]), "tree": tree})
            print(f"  {db}: {runs[-1]}", flush=True)
    report = {"environment": machine(("numpy", "torch")), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))

    from rich.console import Console
    from rich.table import Table

    table = Table(title="transformer: one cold fit on the whole history",
                  caption=f"load average at start {report['environment']['load_average_start'][0]:.1f}; "
                          "peak: the PSS of the process and its partner, sampled every 50 ms")
    for col in ("shop", "events", "processes", "epochs (best)", "validation NDCG@10", "fit s", "peak MiB"):
        table.add_column(col, justify="left" if col == "shop" else "right")
    for r in runs:
        table.add_row(r["db"], f"{r['events']:,}", str(r["processes"]), f"{r['epochs']} ({r['best_epoch']})",
                      f"{r['validation_ndcg@10']:.4f}", f"{r['fit_s']:.1f}", f"{r['tree']['tree_peak_pss_mib']:,}")
    Console().print(table)


if __name__ == "__main__":
    main()
