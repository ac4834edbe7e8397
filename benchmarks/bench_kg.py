"""Knowledge-graph recall: `kg` alone (meta-paths vs random walk with restart), the pipeline
with and without `kg` (all held-out users and the lightest quarter), and request latency.

    python benchmarks/bench_kg.py --ml100k ML100K_FOLDER --demo DEMO_DB [--out benchmarks/results/kg.json]

ML-100K is imported into a scratch database from RecBole's atomic files (with its `.kg` and
`.link` graph); the demo shop must already be imported (`shelfwise --db demo.db demo`), and is
copied first so the original is not touched. Every row is a full `Engine.evaluate` (per-user
chronological holdout, full ranking, fusion weights tuned on validation users) with the same
seed, so rows differ only by configuration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._env import machine  # noqa: E402
from engine.config import PipelineSettings, Settings  # noqa: E402
from engine.engine import Engine  # noqa: E402

warnings.simplefilter("ignore")
BASE = {"popular": 100, "als": 100, "cooccurrence": 100, "content": 100}


def configurations(quick: bool) -> list[tuple[str, dict, dict]]:
    """(label, recaller quotas, kg settings)."""
    rows = [("kg meta-path", {"kg": 100}, {"method": "meta_path"}),
            ("kg walk (rwr)", {"kg": 100}, {"method": "rwr"}),
            ("pipeline without kg", BASE, {}),
            ("pipeline + kg meta-path (50)", {**BASE, "kg": 50}, {"method": "meta_path"}),
            ("pipeline + kg meta-path (100)", {**BASE, "kg": 100}, {"method": "meta_path"}),
            ("pipeline + kg walk (100)", {**BASE, "kg": 100}, {"method": "rwr"})]
    if not quick:
        rows[2:2] = [("kg meta-path, no prior", {"kg": 100}, {"method": "meta_path", "popularity": 0}),
                     ("kg walk, restart 0.3", {"kg": 100}, {"method": "rwr", "restart": 0.3})]
    return rows


def latency(db: Path, users: int = 300, n: int = 100) -> dict:
    """Per-request kg recall time for `users` users, after fitting on everything."""
    out = {}
    for method in ("meta_path", "rwr"):
        engine = Engine(db, settings=Settings(plugins={"kg": {"method": method}}))
        data = engine.dataset()
        kg = engine.make("recallers", "kg")
        started = time.perf_counter()
        kg.fit(data)
        fit_s = time.perf_counter() - started
        ids = engine.store.users_with_events()
        pick = np.random.default_rng(0).choice(len(ids), min(users, len(ids)), replace=False)
        queries = [engine.query_for(ids[i]) for i in pick]
        times = []
        for q in queries:
            t = time.perf_counter()
            kg.recall([q], n)
            times.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        kg.recall(queries, n)
        batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
        out[method] = {"fit_s": fit_s, "p50_ms": float(np.percentile(times, 50)),
                       "p99_ms": float(np.percentile(times, 99)), "batched_ms_per_user": batch_ms,
                       "entities": int(kg.w.shape[1]), "links": int(kg.w.nnz)}
        engine.close()
    return out


def run(label: str, db: Path, quick: bool, console: Console) -> dict:
    rows = []
    for name, quotas, kg in configurations(quick):
        settings = Settings(pipeline=PipelineSettings(recallers=quotas, ranker="fusion"),
                            plugins={"kg": kg} if kg else {})
        engine = Engine(db, settings=settings)
        started = time.perf_counter()
        report = engine.evaluate(k=10)
        engine.close()
        result = next(r for r in report["results"] if r["name"] == "pipeline")
        row = {"config": name, "recallers": quotas, "kg": kg, "seconds": time.perf_counter() - started,
               "users": report["users"], "light_users": report["light_users"],
               "light_user_max_items": report["light_user_max_items"],
               "metrics": result["metrics"], "light": result["light_users"],
               "cold": result.get("cold_start"),
               "weights": report["ranker_validation"].get("weights")}
        rows.append(row)
        console.print(f"[{label}] {name}: NDCG@10 {row['metrics']['ndcg@10']:.4f} "
                      f"(light {row['light']['ndcg@10']:.4f}) in {row['seconds']:.0f}s")
    return {"rows": rows, "latency": latency(db)}


def show(label: str, result: dict, console: Console) -> None:
    first = result["rows"][0]
    table = Table(title=f"{label}: {first['users']} held-out users; light = the "
                        f"{first['light_users']} with ≤{first['light_user_max_items']} items")
    for col in ("configuration", "NDCG@10", "Recall@10", "coverage", "light NDCG@10", "light Recall@10",
                "fusion weight of kg"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for r in result["rows"]:
        m, lt = r["metrics"], r["light"]
        w = (r["weights"] or {}).get("kg")
        table.add_row(r["config"], f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}", f"{m['coverage@10']:.3f}",
                      f"{lt['ndcg@10']:.4f}", f"{lt['recall@10']:.4f}", "" if w is None else f"{w:g}")
    console.print(table)
    lat = Table(title=f"{label}: kg recall latency per user (100 candidates)")
    for col in ("method", "fit s", "p50 ms", "p99 ms", "batched ms/user", "entities", "links"):
        lat.add_column(col, justify="right")
    for method, v in result["latency"].items():
        lat.add_row(method, f"{v['fit_s']:.2f}", f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}",
                    f"{v['batched_ms_per_user']:.2f}", f"{v['entities']:,}", f"{v['links']:,}")
    console.print(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml100k", help="folder with RecBole's ml-100k atomic files")
    ap.add_argument("--demo", help="a database holding the demo shop (copied, not modified)")
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    ap.add_argument("--out", default="benchmarks/results/kg.json")
    args = ap.parse_args()
    console = Console()
    results = {"machine": machine(("numpy", "scipy", "implicit", "torch"), ("plugins/kg.py",))}
    with tempfile.TemporaryDirectory() as tmp:
        if args.ml100k:
            db = Path(tmp) / "ml.db"
            Engine(db).import_data("recbole", args.ml100k)
            results["ml100k"] = run("MovieLens-100K", db, args.quick, console)
            show("MovieLens-100K", results["ml100k"], console)
        if args.demo:
            db = Path(tmp) / "demo.db"
            shutil.copy(args.demo, db)
            results["demo"] = run("demo shop", db, args.quick, console)
            show("demo shop", results["demo"], console)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
