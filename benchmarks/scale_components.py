"""Each recaller's fit alone on one shop's database: seconds, CPU seconds, the growth of
resident memory during the fit (VmHWM, reset before each fit) and the saved model's size.

    python benchmarks/scale_components.py --db /tmp/scale-1m.db --out benchmarks/results/scale-components-1m.json
    python benchmarks/scale_components.py --db DB --components cooccurrence,als

For a size whose whole `train` does not fit in the time at hand (bench_scale.py's 1M shop on
a shared 2-core machine): the event-heavy recallers one by one, on the same Dataset that
`train` reads (Store.dataset), with the plugins' default settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from benchmarks._env import machine  # noqa: E402

DEFAULT = "cooccurrence,sequence,als,popular"


def vm(field: str) -> float:
    """This process's VmRSS or VmHWM in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current resident size."""
    Path("/proc/self/clear_refs").write_text("5")


def fit_one(engine, data, name: str) -> dict:
    from engine.artifacts import dump_state

    recaller = engine.make("recallers", name)
    gc.collect()
    reset_peak()
    before = vm("VmRSS")
    started, cpu = time.perf_counter(), time.process_time()
    recaller.fit(data)
    out = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
           "rss_before_mib": before, "peak_rss_mib": vm("VmHWM")}
    out["fit_growth_mib"] = out["peak_rss_mib"] - before
    payload = dump_state(recaller.state())[0]
    out["model_bytes"] = len(payload)
    out["peak_rss_with_saving_mib"] = vm("VmHWM")
    print(f"{name}: {out['seconds']:,.0f} s ({out['cpu_seconds']:,.0f} CPU-s), peak RSS "
          f"{out['peak_rss_mib']:,.0f} MiB ({out['fit_growth_mib']:+,.0f} during the fit), "
          f"model {len(payload) / 2**20:,.0f} MiB", flush=True)
    del recaller, payload
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--components", default=DEFAULT)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from engine.engine import Engine

    engine = Engine(args.db)
    started, cpu = time.perf_counter(), time.process_time()
    data = engine.dataset()
    doc = {"db": args.db, "environment": machine(("numpy", "scipy", "implicit"), ("engine", "plugins")),
           "dataset": {"seconds": time.perf_counter() - started,
                       "cpu_seconds": time.process_time() - cpu, "peak_rss_mib": vm("VmHWM"),
                       "users": data.n_users, "items": data.n_items, "events": data.n_events},
           "components": {}}
    print(f"dataset: {data.n_users:,} users, {data.n_items:,} items, {data.n_events:,} events in "
          f"{doc['dataset']['seconds']:,.0f} s, peak RSS {doc['dataset']['peak_rss_mib']:,.0f} MiB",
          flush=True)
    for name in [c.strip() for c in args.components.split(",") if c.strip()]:
        doc["components"][name] = fit_one(engine, data, name)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")  # what is done so far
    return 0


if __name__ == "__main__":
    sys.exit(main())
