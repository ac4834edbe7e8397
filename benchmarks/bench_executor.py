"""The local executor against the Ray executor on this machine: recommend --all, evaluate,
and the catalogue's encoding.

    python benchmarks/bench_executor.py                       # demo shop, 5,000 shoppers
    python benchmarks/bench_executor.py --train               # and `train`, on a copy
    python benchmarks/bench_executor.py --users 20000 --items 4000 --repeat 3
    python benchmarks/bench_executor.py --show benchmarks/results/executor.json

A demo shop (plugins.demo: --users shoppers, --items products) is made and trained once
with the plugins in PLUGINS (the collaborative ones, MiniLM and content recall, so that the
workers load the vector index and the diversity re-rank reads it), in --workdir. Then,
each --repeat times, local and Ray taking turns so that the machine's load falls on both:

  recommend --all   Engine.recommend_all(10): every shopper's list (the lists are compared:
                    they must be the same)
  evaluate          Engine.evaluate(k=10): the whole job (the fit on the visible part runs
                    on the driver either way) and its scoring stage alone (the metrics are
                    compared: they must be the same)
  encode            --encode products' texts through MiniLM (engine.indexing.encode), in
                    chunks of 256 on Ray; the first Ray run includes each worker's model
                    load, the best of the repeats not
  train             with --train: Engine.train on a copy of the shop (the vectors are there,
                    so the fits and the validation candidates, recalled on the executor; the
                    rankers' validation results are compared: they must be the same)

Ray is a local instance of --cpus CPUs, started once (its start is timed apart). Prints a
table (best and median of the repeats) and writes benchmarks/results/executor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _env import machine  # noqa: E402

PLUGINS = "demo,popular,als,cooccurrence,fusion,minilm,content"


def build(workdir: Path, users: int, items: int):
    from engine.engine import Engine
    from engine.plugins import load_plugins

    path = workdir / f"demo-{users}-{items}.db"
    fresh = not path.exists()
    eng = Engine(path, registry=load_plugins())
    if fresh:
        started = time.perf_counter()
        eng.import_data("demo", None, seed=7, users=users, items=items)
        eng.train()
        print(f"made and trained {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return eng


def timed(work) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def recommend_all(eng, executor):
    return timed(lambda: list(eng.recommend_all(10, executor=executor)))


def evaluate(eng, executor):
    marks: list[float] = []

    def progress(stage, done, total, message=""):
        if stage == "score":
            marks.append(time.perf_counter())

    seconds, report = timed(lambda: eng.evaluate(10, progress=progress, executor=executor))
    return seconds, marks[-1] - marks[0], [r.to_dict() for r in report.results]


def encode(eng, executor, n: int):
    from engine.components import no_progress
    from engine.indexing import encode as encode_items

    items = list(eng.store.catalogue())[:n]
    enc = eng.encoder()
    return timed(lambda: encode_items(enc, items, no_progress, executor, eng.registry))


def train(eng, executor, workdir: Path):
    """`train` on a copy of the shop (its vectors are there: nothing to encode), so the fits,
    the validation candidates (on the executor) and the activation."""
    from engine.engine import Engine

    copy = workdir / "train-copy.db"
    copy.write_bytes(eng.db.conn.serialize())
    other = Engine(copy, registry=eng.registry, settings=eng.settings)
    try:
        seconds, report = timed(lambda: other.train(executor=executor))
        return seconds, (report.rankers, report.trials, report.validation_moments)
    finally:
        other.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def measure(eng, ray_executor, repeat: int, n_encode: int, workdir: Path | None) -> dict:
    from engine.executor import LocalExecutor

    runs: dict[str, list[float]] = {}
    same = {"recommend_all": True, "evaluate": True}
    executors = {"local": LocalExecutor(), "ray": ray_executor}
    for round_ in range(repeat):
        got = {}
        for name, executor in executors.items():
            seconds, lists = recommend_all(eng, executor)
            runs.setdefault(f"recommend_all/{name}", []).append(seconds)
            got[f"rec/{name}"] = lists
            seconds, scoring, metrics = evaluate(eng, executor)
            runs.setdefault(f"evaluate/{name}", []).append(seconds)
            runs.setdefault(f"evaluate_scoring/{name}", []).append(scoring)
            got[f"eval/{name}"] = metrics
            seconds, vectors = encode(eng, executor, n_encode)
            runs.setdefault(f"encode/{name}", []).append(seconds)
            got[f"enc/{name}"] = vectors
            if workdir is not None:
                seconds, learned = train(eng, executor, workdir)
                runs.setdefault(f"train/{name}", []).append(seconds)
                got[f"train/{name}"] = learned
            print(f"round {round_ + 1}/{repeat} {name} done", file=sys.stderr)
        same["recommend_all"] &= got["rec/local"] == got["rec/ray"]
        same["evaluate"] &= got["eval/local"] == got["eval/ray"]
        if workdir is not None:
            same["train"] = same.get("train", True) and got["train/local"] == got["train/ray"]
        import numpy as np

        same["encode_max_abs_diff"] = max(same.get("encode_max_abs_diff", 0.0), float(
            np.abs(got["enc/local"] - got["enc/ray"]).max()))
    return {"seconds": runs, "same": same}


def table(out: dict) -> str:
    lines = [f"{'job':<18} {'local best':>10} {'ray best':>9} {'local med':>10} {'ray med':>8} "
             f"{'speed-up':>8}"]
    runs = out["seconds"]
    for job in ("recommend_all", "evaluate", "evaluate_scoring", "encode", "train"):
        if f"{job}/local" not in runs:
            continue
        loc, ray = runs[f"{job}/local"], runs[f"{job}/ray"]
        lines.append(f"{job:<18} {min(loc):>9.2f}s {min(ray):>8.2f}s {statistics.median(loc):>9.2f}s "
                     f"{statistics.median(ray):>7.2f}s {min(loc) / min(ray):>7.2f}x")
    lines.append(f"Ray start (local instance, {out['cpus']} CPUs): {out['ray_start_seconds']:.1f}s; "
                 f"same lists: {out['same']['recommend_all']}, same metrics: {out['same']['evaluate']}, "
                 f"same trained rankers: {out['same'].get('train', 'not run')}, "
                 f"vectors differ by at most {out['same']['encode_max_abs_diff']:.1e}")
    lines.append(f"shop: {out['shop']['users']:,} shoppers with events, {out['shop']['items']:,} "
                 f"products, {out['shop']['events']:,} events; snapshot {out['shop']['db_mib']:.1f} MiB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--encode", type=int, default=512, help="products encoded in the encode rows")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="also time `train` (on a copy of the shop)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/shelfwise-bench-executor"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "executor.json")
    ap.add_argument("--show", type=Path, help="print the table of a results file and stop")
    args = ap.parse_args()
    if args.show:
        print(table(json.loads(args.show.read_text())))
        return
    os.environ["SHELFWISE_LOAD_PLUGINS"] = PLUGINS
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    info = machine(("ray", "numpy", "torch", "hnswlib"))
    eng = build(args.workdir, args.users, args.items)
    import ray

    from engine.executor import RayExecutor

    start, _ = timed(lambda: ray.init(address="local", num_cpus=args.cpus,
                                          include_dashboard=False, log_to_driver=False))
    out = {"machine": info, "cpus": args.cpus, "ray_start_seconds": start, "repeat": args.repeat,
           "plugins": PLUGINS, "encode_items": args.encode,
           "shop": {"users": len(eng.store.users_with_events()), "items": eng.store.counts()["items"],
                    "events": eng.store.counts()["events"],
                    "db_mib": len(eng.db.conn.serialize()) / 2**20},
           "command": " ".join(["python", "benchmarks/bench_executor.py", *sys.argv[1:]])}
    out.update(measure(eng, RayExecutor(), args.repeat, args.encode, args.workdir if args.train else None))
    out["machine"]["load_average_end"] = list(os.getloadavg())
    ray.shutdown()
    eng.close()
    print(table(out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
