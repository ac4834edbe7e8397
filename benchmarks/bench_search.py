"""Search quality on the demo shop: BM25 alone, vectors alone, and fused.

    python benchmarks/bench_search.py --db demo.db [--out benchmarks/results/search.json]

The database must hold the demo shop (`shelfwise --db demo.db demo`, or `import demo` and
`train`). Queries and their relevant items come from benchmarks/search_queries.py (ground
truth from the generator's facets, never from the text). Reports NDCG@10, Recall@10 and
MRR@10 per query kind for each variant of the `search` recaller, and latency per query.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.search_queries import demo_queries  # noqa: E402
from engine import Query  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.metrics import user_metrics  # noqa: E402

warnings.simplefilter("ignore")
VARIANTS = {
    "bm25 only": {"mode": "lexical"},
    "vectors only": {"mode": "semantic"},
    "hybrid w=0.2": {"mode": "hybrid", "lexical_weight": 0.2},
    "hybrid w=0.35": {"mode": "hybrid", "lexical_weight": 0.35},
    "hybrid w=0.5": {"mode": "hybrid", "lexical_weight": 0.5},
    "hybrid w=0.65": {"mode": "hybrid", "lexical_weight": 0.65},
    "hybrid w=0.8": {"mode": "hybrid", "lexical_weight": 0.8},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="demo.db")
    ap.add_argument("--out")
    args = ap.parse_args()
    engine = Engine(args.db)
    engine.refresh_vectors()
    cases = demo_queries(list(engine.store.catalogue()))
    cls = engine.registry.component("recallers", "search")
    rows = []
    for label, config in VARIANTS.items():
        recaller = cls(config)
        recaller.attach(engine.resources())
        recaller.fit(None)
        metrics, seconds = defaultdict(list), []
        for case in cases:
            started = time.perf_counter()
            found = recaller.recall([Query(text=case.query)], 10)[0]
            seconds.append(time.perf_counter() - started)
            m = user_metrics([c.item_id for c in found], case.relevant, 10)
            for kind in (case.kind, "all"):
                for name in ("ndcg", "recall", "mrr"):
                    metrics[(kind, name)].append(m[name])
        summary = {f"{kind}:{name}": statistics.fmean(v) for (kind, name), v in metrics.items()}
        summary["p50_ms"] = 1000 * statistics.median(seconds)
        rows.append({"variant": label, "config": config, **summary})
    kinds = sorted({c.kind for c in cases}) + ["all"]
    table = Table(title=f"Search on the demo shop: NDCG@10 by query kind ({len(cases)} queries)")
    table.add_column("variant")
    for kind in kinds:
        table.add_column(kind, justify="right")
    table.add_column("MRR@10 all", justify="right")
    table.add_column("p50 ms", justify="right")
    for r in rows:
        table.add_row(r["variant"], *(f"{r[f'{k}:ndcg']:.3f}" for k in kinds),
                      f"{r['all:mrr']:.3f}", f"{r['p50_ms']:.1f}")
    Console().print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"db": args.db, "queries": len(cases),
                                              "per_kind": {k: sum(c.kind == k for c in cases) for k in kinds[:-1]},
                                              "results": rows}, indent=2))


if __name__ == "__main__":
    main()
