"""Grid search of the `als` hyper-parameters on the validation split (never the test split).

    python benchmarks/tune_als.py --db shelfwise.db [--out benchmarks/results/tune_als-NAME.json]

The split is the evaluation protocol's: each user's newest 10% of items are the test part
and are set aside untouched; of the rest, the newest 10% per user are the validation part
that the grid is scored on (NDCG@10, full ranking). The defaults in plugins/als come from
running this on the demo shop and on MovieLens-100K (README, "Tuning").
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engine.engine import Engine
from engine.evaluation import holdout
from engine.metrics import aggregate

warnings.simplefilter("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="shelfwise.db")
    ap.add_argument("--factors", default="32,64,128")
    ap.add_argument("--regularization", default="0.1,1,5")
    ap.add_argument("--alpha", default="0.25,0.5,1,2")
    ap.add_argument("--users", type=int, default=2000, help="validation users scored")
    ap.add_argument("--out")
    args = ap.parse_args()

    engine = Engine(args.db)
    als_cls = engine.registry.component("recallers", "als")
    data = engine.dataset()
    test = holdout(data, 0.1, 5)
    val = holdout(test.visible, 0.1, 5, history=200, max_users=args.users)
    grid = itertools.product(*(map(float, getattr(args, k).split(",")) for k in ("factors", "regularization", "alpha")))
    rows = []
    for factors, reg, alpha in grid:
        recaller = als_cls({"factors": int(factors), "regularization": reg, "alpha": alpha})
        started = time.perf_counter()
        recaller.fit(val.visible)
        lists = [[c.item_id for c in cs] for cs in recaller.recall(val.queries, 10)]
        m = aggregate(lists, val.relevant, 10, data.n_items)
        rows.append({"factors": int(factors), "regularization": reg, "alpha": alpha,
                     "ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"],
                     "seconds": time.perf_counter() - started})
    rows.sort(key=lambda r: -r["ndcg@10"])
    table = Table(title=f"ALS on the validation split of {args.db} ({len(val.queries)} users)")
    for col in ("factors", "regularization", "alpha", "ndcg@10", "recall@10", "seconds"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["factors"]), f"{r['regularization']:g}", f"{r['alpha']:g}",
                      f"{r['ndcg@10']:.4f}", f"{r['recall@10']:.4f}", f"{r['seconds']:.1f}")
    Console().print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"db": args.db, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
