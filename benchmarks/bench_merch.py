"""What the merchandising rules cost a request: a list of about 100 candidates, with no
rules, a typical set and a large one.

    python benchmarks/bench_merch.py [--db demo.db] [--users 300] [--out benchmarks/results/merch.json]

Without --db it makes the demo shop (5,000 shoppers, 2,000 products) and trains the
collaborative recallers and the fusion ranker on it (a minute or two). The pipeline asks
popular, co-occurrence and ALS for 40 candidates each, which merge to about 100 per
shopper. The rule sets live on their own placements of one database, so every shopper is
measured with each set in turn (interleaved: the machine's load affects all alike):

    none      no rule applies
    typical   1 filter, 2 boosts, 1 bury, 2 pins
    large     10 filters, 20 boosts, 10 burials, 10 pins (conditions of every kind)

Measured per list: the rules' own stages (the filter rules' removals, boosts and burials,
pins: `Pipeline.removals` + `Pipeline.finish`, against the same stages without rules), and
the whole `Engine.recommend` with the cache cleared. Also the one-time cost of compiling a
set (each condition evaluated over the catalogue), paid after a rule or catalogue change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._env import machine  # noqa: E402

warnings.simplefilter("ignore")
PLUGINS = "demo,popular,als,cooccurrence,fusion"
QUOTAS = {"popular": 40, "cooccurrence": 40, "als": 40}


def rule_sets(engine) -> dict[str, list[dict]]:
    """The typical and large sets, over products and fields of this shop."""
    items = list(engine.store.catalogue())
    brands = sorted({i.brand for i in items if i.brand})
    cats = sorted({i.category for i in items if i.category})
    stocked = [i.item_id for i in items if i.in_stock]
    prices = sorted(i.price for i in items if i.price is not None)
    high = prices[int(len(prices) * 0.9)] if prices else 100

    def cycle(values, k):
        return values[k % len(values)] if values else "x"

    typical = [dict(kind="filter", where=f"price > {high:g}"),
               dict(kind="boost", where=f'brand = "{cycle(brands, 0)}"', weight=5),
               dict(kind="boost", where=f'category in ["{cycle(cats, 1)}", "{cycle(cats, 2)}"] and price < {high / 2:g}',
                    weight=3),
               dict(kind="bury", where='title contains "basic" or not in_stock = true', weight=4),
               dict(kind="pin", item_id=stocked[0], position=1),
               dict(kind="pin", item_id=stocked[1], position=4)]
    large = []
    for k in range(10):
        large.append(dict(kind="filter", where=f'brand = "{cycle(brands, k + 3)}" and price > {high * (1 + k / 10):g}'))
        large.append(dict(kind="bury", where=f'category = "{cycle(cats, k)}" and price < {5 + k}', weight=1 + k))
        large.append(dict(kind="pin", item_id=stocked[2 + k], position=1 + k % 10))
    for k in range(20):
        large.append(dict(kind="boost", where=f'(brand = "{cycle(brands, k)}" or title contains "{cycle(cats, k)[:4]}") '
                                               f'and not tags contains "x{k}"', weight=1 + k % 5))
    return {"typical": typical, "large": large}


def make_shop(folder: Path) -> Path:
    from engine.engine import Engine
    from engine.plugins import load_plugins

    db = folder / "demo.db"
    eng = Engine(db, registry=load_plugins())
    eng.import_data("demo", None, seed=7)
    eng.train()
    eng.close()
    return db


def timed(fn, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="a trained shop (default: make the demo shop)")
    ap.add_argument("--users", type=int, default=300, help="shoppers measured")
    ap.add_argument("--out", default="benchmarks/results/merch.json")
    args = ap.parse_args()
    os.environ.setdefault("SHELFWISE_LOAD_PLUGINS", PLUGINS)
    from engine.candidates import merge
    from engine.config import PipelineSettings, Settings
    from engine.engine import Engine
    from engine.plugins import load_plugins

    with tempfile.TemporaryDirectory() as tmp:
        if args.db:
            db = Path(tmp) / "shop.db"
            shutil.copy(args.db, db)
        else:
            Console(stderr=True).print("Making and training the demo shop…")
            db = make_shop(Path(tmp))
        settings = Settings(pipeline=PipelineSettings(recallers=QUOTAS, ranker="fusion"))
        engine = Engine(db, registry=load_plugins(), settings=settings)
        sets = rule_sets(engine)
        for placement, rules in sets.items():
            for rule in rules:
                engine.add_rule(placement=placement, **rule)
        placements = {"none": "", **{name: name for name in sets}}

        compile_ms = {}
        for name, placement in placements.items():
            if placement:  # a fresh compile: the catalogue view is new after a catalogue change
                engine.merch._changed(engine.merch._mark)
                engine.merch._matched.clear()
                compile_ms[name] = 1e3 * timed(lambda p=placement: engine.merch.for_request(p))

        users = engine.store.users_with_events()[:args.users]
        stage = {name: [] for name in placements}
        whole = {name: [] for name in placements}
        candidates, changed = [], {name: 0 for name in placements}
        pipes = {name: engine.pipeline(placement=p) for name, p in placements.items()}
        for user in users:
            query = engine.query_for(user)
            recalled = pipes["none"].recall([query])[0]
            merged = merge(recalled)
            plain = pipes["none"]
            kept = plain.filtered(query, merged)
            ranked = plain.ranker.rank_many([query], [kept])[0]
            candidates.append(len(merged))
            base = [c.item_id for c in plain.finish(query, ranked, 10)[0]]
            for name, pipe in pipes.items():
                def stages(pipe=pipe):
                    removed = pipe.removals(query, merged.items)
                    ranked_here = ranked if not removed or pipe.merchandising is None else \
                        pipe.ranker.rank_many([query], [pipe.filtered(query, merged, removed)])[0]
                    return pipe.finish(query, ranked_here, 10)
                # the rules' stages only: the removals and what follows the ranker (the ranker's
                # second pass over fewer candidates, when a filter rule removed some, is left out)
                stage[name].append(1e6 * timed(lambda p=pipe: (p.removals(query, merged.items),
                                                                p.finish(query, ranked, 10)), repeat=5))
                if [c.item_id for c in stages()[0]] != base:
                    changed[name] += 1
                engine.recommendation_cache.clear()
                whole[name].append(1e3 * timed(lambda p=placements[name]: engine.recommend(user, 10, placement=p)))
        engine.close()

    def summary(values):
        values = sorted(values)
        return {"median": statistics.median(values), "p95": values[int(0.95 * (len(values) - 1))],
                "mean": statistics.fmean(values)}

    rows = []
    for name in placements:
        rows.append({"rules": name, "count": len(sets.get(name, [])), "stage_us": summary(stage[name]),
                     "recommend_ms": summary(whole[name]), "compile_ms": compile_ms.get(name),
                     "lists_changed": changed[name] / len(users)})
    none_stage, none_whole = rows[0]["stage_us"]["median"], rows[0]["recommend_ms"]["median"]
    table = Table(title=f"Merchandising rules on lists of {statistics.median(candidates):.0f} candidates "
                        f"(median; {len(users)} shoppers, top 10)")
    for col in ("rules", "rule stages µs (median / p95)", "+ over none", "recommend ms (median / p95)",
                "+ over none", "compile ms", "lists changed"):
        table.add_column(col, justify="left" if col == "rules" else "right")
    for r in rows:
        s, w = r["stage_us"], r["recommend_ms"]
        table.add_row(f"{r['rules']} ({r['count']})", f"{s['median']:.0f} / {s['p95']:.0f}",
                      f"{s['median'] - none_stage:+.0f} µs", f"{w['median']:.2f} / {w['p95']:.2f}",
                      f"{w['median'] - none_whole:+.2f} ms",
                      "" if r["compile_ms"] is None else f"{r['compile_ms']:.1f}", f"{r['lists_changed']:.0%}")
    Console(width=140).print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": machine(("numpy",), ("engine/pipeline.py", "engine/merchandising.py", "engine/conditions.py")),
        "candidates_median": statistics.median(candidates), "users": len(users), "quotas": QUOTAS,
        "rule_sets": sets, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
