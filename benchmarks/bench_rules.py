"""The pipeline's rules after the ranker: the new-product slot and category diversity.

    python benchmarks/bench_rules.py --db demo.db [--out benchmarks/results/rules.json]

Every row is a full `Engine.evaluate` on a copy of the database (fusion ranker, default
recallers) that differs only in `[pipeline] new_item_slots / new_item_position / diversity`:
what the rules cost in NDCG@10 and what they buy in cold-start recall and variety.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._env import machine  # noqa: E402
from engine.config import PipelineSettings, Settings  # noqa: E402
from engine.engine import Engine  # noqa: E402

warnings.simplefilter("ignore")
CONFIGS = [("no rules", dict(new_item_slots=0)),
           ("new-product slot at 3", dict(new_item_slots=1, new_item_position=3)),
           ("new-product slot last (default)", dict(new_item_slots=1, new_item_position=0)),
           ("diversity 0.1", dict(new_item_slots=0, diversity=0.1)),
           ("diversity 0.3", dict(new_item_slots=0, diversity=0.3))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="demo.db")
    ap.add_argument("--out", default="benchmarks/results/rules.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "shop.db"
        shutil.copy(args.db, db)
        for label, kw in CONFIGS:
            engine = Engine(db, settings=Settings(pipeline=PipelineSettings(ranker="fusion", **kw)))
            report = engine.evaluate(k=10)
            engine.close()
            p = next(r for r in report["results"] if r["name"] == "pipeline")
            rows.append({"config": label, "settings": kw, "metrics": p["metrics"],
                         "cold": p.get("cold_start"), "users": report["users"],
                         "cold_users": report["cold_start_users"]})
    table = Table(title=f"Rules after the ranker, {rows[0]['users']} test users "
                        f"({rows[0]['cold_users']} in the cold-start slice)")
    for col in ("configuration", "NDCG@10", "Recall@10", "coverage@10", "cold NDCG@10", "cold Recall@10"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for r in rows:
        m, c = r["metrics"], r["cold"] or {}
        table.add_row(r["config"], f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}", f"{m['coverage@10']:.3f}",
                      f"{c.get('ndcg@10', 0):.4f}", f"{c.get('recall@10', 0):.4f}")
    Console().print(table)
    Path(args.out).write_text(json.dumps({"machine": machine(("numpy",), ("engine/pipeline.py",)),
                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
