"""The `bert` ranker against `fusion` on the same candidates: quality, training time, size,
and the latency of re-ranking 100 candidates for one user (fp32 vs int8).

    python benchmarks/bench_bert.py --db ml100k.db --name ml100k
    python benchmarks/bench_bert.py --db demo.db --name demo --config '{"max_minutes": 5}'
    python benchmarks/bench_bert.py --show benchmarks/results/bert-demo.json

What it does, with the database read only:

  examples  exactly what `train` does: hold out each user's newest 10% of items, fit the
            pipeline's recallers on the rest, recall candidates for the validation users,
            and hold back 20% of them (engine.training.check_split) from every ranker.
  quality   fusion and bert fitted on the remaining examples; on the held-back users'
            candidates: NDCG@10, Recall@10, coverage@10 of bert, fusion and each recaller's
            own order (the same candidates, so the rankers differ only in their order).
  latency   bert.rank() of the first 100 merged candidates of each held-back user, one
            user per call: p50/p99 with the item states cached (a shop that has served
            before) and cold (cache emptied before every call); fp32 and int8 dynamic
            quantisation of the fine-tuned layer, with the int8 NDCG@10 and the score
            correlation. The text path is timed even when training did not keep it.
  warm-up   what a server does after start (`Engine.warm`, in steps between requests):
            the time to compute every catalogue item's states, then p50/p99 of a first
            pass over the held-back users.
  lengths   latency of the text path by context length (user_tokens 24 / 48 / 96).

The test-split quality of the README comes from `bench_bert_test.py`; this script is for
speed, size and int8 (its quality rows are the held-back validation users of one cut).
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


def percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def build_examples(eng):
    from engine.components import RankingExample
    from engine.evaluation import holdout
    from engine.pipeline import Pipeline
    from engine.training import check_split, fit_recallers

    ps = eng.settings.pipeline
    data = eng.dataset()
    quotas, recallers, _ = eng.lineup.fresh()
    split = holdout(data, ps.validation_share, ps.min_interactions, history=ps.history,
                    max_users=ps.validation_users, seed=ps.seed)
    fit_recallers(split.visible, recallers, lambda *a: None)
    cands = Pipeline(recallers, dict(quotas)).candidates(split.queries)
    examples = [RankingExample(q, c, r) for q, c, r in zip(split.queries, cands, split.relevant)]
    fit, check = check_split(examples, ps.seed)
    return data, split, fit, check, sorted(quotas)


def quality(lists, check, n_items):
    from engine.metrics import aggregate

    m = aggregate(lists, [ex.relevant for ex in check], 10, n_items)
    return {k: round(m[k], 4) for k in ("ndcg@10", "recall@10", "coverage@10")}


def timed_rank(rankers, check, n=100, cold=False, limit=200):
    """p50/p99 of rank() per ranker; the rankers take turns on each query, so a busy shared
    machine slows them alike."""
    times = {label: [] for label in rankers}
    for ex in check[:limit]:
        cands = ex.candidates[:n]
        for label, ranker in rankers.items():
            if cold:
                ranker._item_cache.clear()
            t = time.perf_counter()
            ranker.rank(ex.query, cands)
            times[label].append(time.perf_counter() - t)
    return {label: {"p50_ms": round(percentile(t, 50), 1), "p99_ms": round(percentile(t, 99), 1),
                    "calls": len(t)} for label, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db")
    ap.add_argument("--name", default="shop")
    ap.add_argument("--config", default="{}", help="[plugins.bert] settings as JSON")
    ap.add_argument("--out")
    ap.add_argument("--show")
    args = ap.parse_args()
    if args.show:
        print(json.dumps(json.loads(Path(args.show).read_text()), indent=1))
        return
    from engine import Engine
    from engine.artifacts import dump_state, load_state
    from plugins.bert import BertRanker
    from plugins.fusion import FusionRanker

    eng = Engine(args.db)
    resources = eng.resources()
    started = time.perf_counter()
    data, split, fit, check, recaller_names = build_examples(eng)
    print(f"{len(fit)} training and {len(check)} held-back validation users, "
          f"{np.mean([len(ex.candidates) for ex in check]):.0f} candidates each "
          f"({time.perf_counter() - started:.0f}s)", flush=True)
    result = {"db": str(args.db), "name": args.name, "config": json.loads(args.config),
              "fit_examples": len(fit), "check_examples": len(check),
              "mean_candidates": float(np.mean([len(ex.candidates) for ex in check])),
              "quality": {}, "machine": machine(("torch", "transformers", "numpy"))}

    for name in recaller_names:
        lists = [[c.item_id for c in sorted((c for c in ex.candidates if name in c.ranks),
                                            key=lambda c: c.ranks[name])] for ex in check]
        result["quality"][f"recaller {name}"] = quality(lists, check, data.n_items)
    fusion = FusionRanker()
    fusion.fit(fit, split.visible)
    result["quality"]["fusion"] = quality(
        [[c.item_id for c in fusion.rank(ex.query, ex.candidates)] for ex in check], check, data.n_items)

    bert = BertRanker(json.loads(args.config))
    bert.attach(resources)
    t = time.perf_counter()
    fit_report = bert.fit(fit, split.visible, progress=lambda s, d, tot, msg="": print(
        f"  {d}/{tot} {msg}", flush=True) if d and d % 50 == 0 else None)
    result["train_seconds"] = round(time.perf_counter() - t, 1)
    result["fit"] = {k: v for k, v in fit_report.items() if k != "recallers"}
    payload, fmt, meta = dump_state(bert.state())
    result["model_bytes"] = len(payload)
    result["quality"]["bert"] = quality(
        [[c.item_id for c in bert.rank(ex.query, ex.candidates)] for ex in check], check, data.n_items)
    print(json.dumps(result["quality"], indent=1), flush=True)

    # Latency: the features-only path (what serves when training did not keep the text) and
    # the text path (forced on if training did not keep it), fp32 and int8.
    text_kept = bert.net.use_text
    plain = BertRanker(json.loads(args.config))
    plain.attach(resources)
    plain.load(load_state(*dump_state(bert.state())))
    plain.net.use_text = False
    plain._prepare_serving()
    features_only = timed_rank({"features": plain}, check)["features"]
    bert.net.use_text = True
    bert._prepare_serving()
    state = bert.state()
    int8 = BertRanker({**json.loads(args.config), "quantize": True})
    int8.attach(resources)
    int8.load(load_state(*dump_state(state)))
    both = {"fp32": bert, "int8": int8}
    # What a server does between requests after start (Engine.warm, 64 items a step):
    # the catalogue's states computed before the first request; then the first pass over
    # the held-back users, nothing computed per call but the context.
    served = BertRanker(json.loads(args.config))
    served.attach(resources)
    served.load(load_state(*dump_state(state)))
    t, steps = time.perf_counter(), 0
    while served.warm(64):
        steps += 1
    warm_up = {"seconds": round(time.perf_counter() - t, 1), "items": len(served._item_cache),
               "steps": steps + 1}
    warm_up.update(timed_rank({"fp32": served}, check)["fp32"])
    timed_rank(both, check, limit=len(check))  # warm-up: every check item's states cached
    warm = timed_rank(both, check)
    cold = timed_rank(both, check, cold=True, limit=60)
    lat = {label: {"warm": warm[label], "cold": cold[label]} for label in both}
    lat["features_only"] = features_only
    lat["after_server_warm_up"] = warm_up
    print(lat, flush=True)
    a = [np.array([c.score for c in bert.rank(ex.query, ex.candidates[:100])]) for ex in check[:100]]
    b = [np.array([c.score for c in int8.rank(ex.query, ex.candidates[:100])]) for ex in check[:100]]
    corr = float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b) if len(x) > 2]))
    lat["int8_score_correlation"] = round(corr, 4)
    lat["text_path_kept_by_training"] = text_kept
    result["quality"]["bert (text path) fp32"] = quality(
        [[c.item_id for c in bert.rank(ex.query, ex.candidates)] for ex in check], check, data.n_items)
    result["quality"]["bert (text path) int8"] = quality(
        [[c.item_id for c in int8.rank(ex.query, ex.candidates)] for ex in check], check, data.n_items)
    variants = {}
    for tokens in (24, 48, 96):
        variant = BertRanker({**json.loads(args.config), "user_tokens": tokens})
        variant.attach(resources)
        variant.load(load_state(*dump_state(state)))
        variants[str(tokens)] = variant
    timed_rank(variants, check, limit=len(check))
    lengths = timed_rank(variants, check, limit=100)
    result["latency_100_candidates"] = lat
    result["latency_by_user_tokens"] = lengths
    result["total_seconds"] = round(time.perf_counter() - started, 1)

    print(f"\n{'ranker / recaller':28} NDCG@10  Recall@10  coverage@10")
    for name, q in result["quality"].items():
        print(f"{name:28} {q['ndcg@10']:.4f}   {q['recall@10']:.4f}     {q['coverage@10']:.4f}")
    print(f"\nbert: trained {result['train_seconds']}s, {result['fit'].get('steps')} steps "
          f"(best {result['fit'].get('best_stage')} step {result['fit'].get('best_step')}), "
          f"model {result['model_bytes'] / 1e6:.2f} MB")
    for label in ("fp32", "int8"):
        w, c = lat[label]["warm"], lat[label]["cold"]
        print(f"re-rank 100 candidates, {label}: warm p50 {w['p50_ms']} ms p99 {w['p99_ms']} ms; "
              f"cold p50 {c['p50_ms']} ms p99 {c['p99_ms']} ms")
    print(f"server warm-up: {warm_up['items']} items in {warm_up['seconds']} s; then, first "
          f"requests: p50 {warm_up['p50_ms']} ms p99 {warm_up['p99_ms']} ms")
    print(f"re-rank 100 candidates, recall features only: p50 {features_only['p50_ms']} ms "
          f"p99 {features_only['p99_ms']} ms")
    print(f"int8 vs fp32 score correlation {corr:.4f}; by user_tokens: {lengths}")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bert-{args.name}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
