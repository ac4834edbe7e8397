"""Rankers on the test split, end to end and on the same candidates: what `evaluate` measures,
with every ranker (fusion, bert variants) fitted on the same validation moments and scoring the
same recalled test candidates, next to each recaller's own order.

    python benchmarks/bench_bert_test.py --db ml100k.db --name ml100k
    python benchmarks/bench_bert_test.py --db demo.db --name demo \\
        --variant 'features={"max_steps": 0}' --variant 'text={}'

Steps (the database is only read):
  1. the test split of `evaluate`: each user's newest 10% of items held out;
  2. on its visible part, what `train` does: validation moments (recallers fitted before each
     user's validation cut, candidates recalled), 20% of the validation users held back
     (the `train` check); `--windows 2` adds the moments of an earlier cut too;
  3. fusion and each bert variant fitted on the same moments; fusion then refits on every
     validation user as `train` does;
  4. the recallers fitted on the whole visible part, the rankers told (`observe`);
  5. the test users' candidates recalled once; each ranker orders them, once as they are
     (comparable with a recaller's own list) and once with the pipeline's rules after it (the
     new-product slot, as `evaluate` and serving do). NDCG@10, Recall@10, coverage@10, the
     light-user and cold-start slices, the held-back check of step 2, and paired differences
     per test user against fusion and the best single recaller (95% intervals).
Writes benchmarks/results/bert-NAME-test.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._env import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--variant", action="append", default=[],
                    help='NAME=JSON bert config (default: one variant "bert" = {})')
    ap.add_argument("--windows", type=int, default=None,
                    help="validation cuts per user (default: the engine's setting)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from engine import Engine
    from engine.evaluation import holdout
    from engine.metrics import aggregate, user_metrics
    from engine.pipeline import Pipeline
    from engine.training import check_ndcg, check_split, fit_recallers, validation_examples
    from plugins.bert import BertRanker
    from plugins.fusion import FusionRanker

    variants = dict(v.split("=", 1) for v in args.variant) or {"bert": "{}"}
    console = Console(stderr=True)
    quiet = lambda *a: None  # noqa: E731
    eng = Engine(args.db)
    ps = eng.settings.pipeline
    if args.windows is not None:
        ps = ps.model_copy(update={"validation_windows": args.windows})
    data = eng.dataset()
    split = holdout(data, ps.validation_share, ps.min_interactions, history=ps.history)
    quotas, recallers, _ = eng.lineup.fresh()
    in_pipe = {n: recallers[n] for n in quotas}
    t0 = time.perf_counter()
    latest, earlier = validation_examples(split.visible, in_pipe, quotas, ps, quiet)
    fit_ex, check = check_split(latest, ps.seed, earlier)
    examples = latest + earlier
    visible = latest[0].known
    console.print(f"validation moments {len(examples)} ({len(fit_ex)} fit, {len(check)} check) "
                  f"in {time.perf_counter() - t0:.0f}s")

    rankers, fit_info = {}, {}
    f = FusionRanker()
    f.fit(fit_ex, visible)
    rankers["fusion"] = f
    for name, cfg in variants.items():
        b = BertRanker(json.loads(cfg))
        b.attach(eng.resources())
        started = time.perf_counter()
        m = b.fit(fit_ex, visible, progress=quiet)
        fit_info[name] = {"seconds": round(time.perf_counter() - started, 1),
                          **{k: v for k, v in m.items() if k not in ("recallers",)}}
        rankers[name] = b
        console.print(f"{name}: {fit_info[name]}")
    checks = {name: round(check_ndcg(r, check), 4) for name, r in rankers.items()}
    f.fit(examples, visible)  # fusion is quick: train refits it on every validation user

    fit_recallers(split.visible, recallers, quiet)
    for r in rankers.values():
        r.observe(split.visible)
    seen = np.bincount(split.visible.items, minlength=data.n_items) > 0
    cold = {str(i) for i in data.item_ids[~seen]}
    k = 10
    pipe = Pipeline(in_pipe, {n: max(q, k) for n, q in quotas.items()},
                    categories=eng.serving.catalogue().categories, new_items=cold, **eng.lineup.rules())
    recalled = pipe.recall(split.queries)
    known = np.array([len(q.exclude) for q in split.queries])
    light = np.flatnonzero(known <= int(np.quantile(known, 0.25))).tolist()
    cold_rel = [rel & cold for rel in split.relevant]
    cold_users = [j for j, rel in enumerate(cold_rel) if rel]

    per_user = {}

    def score(lists, name):
        per_user[name] = np.array([user_metrics(li, rel, k)["ndcg"] for li, rel in zip(lists, split.relevant)])
        m = aggregate(lists, split.relevant, k, data.n_items)
        out = {key: round(m[key], 4) for key in ("ndcg@10", "recall@10", "coverage@10")}
        out["light ndcg@10"] = round(aggregate([lists[j] for j in light], [split.relevant[j] for j in light],
                                               k, data.n_items)["ndcg@10"], 4)
        if cold_users:
            out["cold recall@10"] = round(aggregate([lists[j] for j in cold_users],
                                                    [cold_rel[j] for j in cold_users], k,
                                                    data.n_items)["recall@10"], 4)
        return out

    rows = {}
    for name in in_pipe:
        if in_pipe[name].text_queries:  # search answers typed queries; test users have none
            continue
        rows[name] = score([[c.item_id for c in per[name][:k]] for per in recalled], name)
    slots = pipe.new_slots
    for name, r in rankers.items():
        pipe.ranker = r
        for label, pipe.new_slots in ((name, 0), (f"{name} + rules", slots)):
            rows[label] = score([[c.item_id for c in cs] for cs in pipe.run(split.queries, k, recalled)], label)
        rows[name]["check ndcg@10"] = checks[name]

    # paired differences per test user, with a 95% interval (1.96 standard errors)
    best = max((n for n in rows if n in in_pipe), key=lambda n: rows[n]["ndcg@10"])
    def versus(name, other, column):
        d = per_user[name] - per_user[other]
        rows[name][column] = f"{d.mean():+.4f} ± {1.96 * d.std(ddof=1) / np.sqrt(len(d)):.4f}"

    for name in rankers:
        versus(name, best, f"vs {best}")
        if name != "fusion":
            versus(name, "fusion", "vs fusion")
            versus(f"{name} + rules", "fusion + rules", "vs fusion")
    table = Table(title=f"{args.name}: test split, {len(split.queries)} users, same candidates")
    cols = ["ndcg@10", "recall@10", "coverage@10", "light ndcg@10", "cold recall@10", "check ndcg@10",
            "vs fusion", f"vs {best}"]
    table.add_column("")
    for c in cols:
        table.add_column(c, justify="right")
    for name, row in rows.items():
        table.add_row(name, *(row[c] if isinstance(row.get(c), str) else f"{row[c]:.4f}" if c in row else ""
                              for c in cols))
    Console(width=200).print(table)
    result = {"db": args.db, "machine": machine(("numpy", "torch", "transformers", "implicit"),
                                                        ("plugins/bert", "engine/training.py")), "users": len(split.queries),
              "validation_moments": len(examples), "fit_moments": len(fit_ex), "check_moments": len(check),
              "windows": ps.validation_windows, "variants": variants, "fit": fit_info, "rows": rows}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bert-{args.name}-test.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
