"""The diversity re-rank's trade-off curve: accuracy against variety for λ = `[pipeline]
diversity` from 0 (the ranker's order) up, on MovieLens-100K and on the demo shop.

    python benchmarks/bench_diversity.py --demo-db demo.db     # a trained demo shop, copied
    python benchmarks/bench_diversity.py --only ml100k          # MovieLens-100K alone

Protocol: the engine's own evaluation (`shelfwise evaluate`): each user's newest 10% of
items held out, the recallers and the ranker fitted once on the rest (`fit_pipeline`, as
`evaluate` does), then every held-out user's candidates recalled, merged, filtered and
ranked once. The re-rank comes after the ranker, so each λ re-ranks those same ranked
lists (`Pipeline.finish`, the stage `run` ends with) without refitting or ranking again;
at λ = 0 the lists are checked to be exactly those of `Pipeline.run`. The pipeline:
popular, co-occurrence and ALS, 40 candidates each (about 100 after the merge), the
fusion ranker, the MiniLM item vectors of the catalogue (`minilm` encoder).

Per λ, over the held-out users' top 10:
- NDCG@10 of the held-out items, and its change against λ = 0 with a 95% interval paired
  over the same users;
- intra-list diversity: mean pairwise 1 - cosine of the items' MiniLM vectors;
- distinct categories (the demo shop's product category, MovieLens' first genre);
- coverage@10: distinct items shown to anyone / catalogue size.
Both relevance scales are measured: the ranker's order ("rank", the engine's) and its
scores min-max scaled over the pool ("score").

Latency: the re-rank of a 100-candidate ranked list to a top 10 (`Pipeline.rerank`, one BLAS
thread as in `Pipeline.run`), with diversity at λ = 0 (off) and on, interleaved per
shopper, µs (median, p95).

Writes `benchmarks/results/diversity.json`."""

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
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks._env import machine  # noqa: E402

warnings.simplefilter("ignore")
QUOTAS = {"popular": 40, "cooccurrence": 40, "als": 40}
PLUGINS = "files,recbole,demo,popular,als,cooccurrence,fusion,minilm"
LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)
K = 10
console = Console(stderr=True)


def log(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")


def open_shop(name: str, folder: Path, demo_db: str | None, ml100k: str | None):
    from engine.config import PipelineSettings, Settings
    from engine.engine import Engine
    from engine.plugins import load_plugins

    db = folder / f"{name}.db"
    settings = Settings(pipeline=PipelineSettings(recallers=QUOTAS, ranker="fusion", encoder="minilm"))
    if name == "demo":
        if demo_db:
            shutil.copy(demo_db, db)
            engine = Engine(db, registry=load_plugins(), settings=settings)
        else:
            engine = Engine(db, registry=load_plugins(), settings=settings)
            log("making the demo shop (no --demo-db)")
            engine.import_data("demo", None, seed=7)
    else:
        if ml100k is None:
            from tests.datasets import fetch_ml100k

            ml100k = str(fetch_ml100k())
        engine = Engine(db, registry=load_plugins(), settings=settings)
        engine.import_data("recbole", ml100k)
    return engine


class Shop:
    """One dataset fitted once: the held-out users' ranked candidates, ready to re-rank."""

    def __init__(self, engine, max_users: int | None):
        from engine.evaluation import holdout
        from engine.pipeline import Pipeline
        from engine.training import fit_pipeline

        self.engine = engine
        ps = engine.settings.pipeline
        started = time.perf_counter()
        engine.refresh_vectors()
        self.vector_seconds = time.perf_counter() - started
        data = engine.dataset()
        split = holdout(data, ps.validation_share, ps.min_interactions, history=ps.history,
                        max_users=max_users)
        quotas, fresh, rankers = engine.lineup.fresh()
        started = time.perf_counter()
        report = fit_pipeline(split.visible, fresh, quotas, rankers, ps)
        if report["failed"]:
            raise RuntimeError(f"fit failed: {report['failed']}")
        self.fit_seconds = time.perf_counter() - started
        seen = np.bincount(split.visible.items, minlength=data.n_items) > 0
        view = engine.serving.catalogue()
        self.index = engine.vectors()
        self.categories = view.categories
        rules = {**engine.lineup.rules(), "diversity": 0.0, "vectors": self.index}
        self.pipe = Pipeline(fresh, {n: max(q, K) for n, q in quotas.items()}, rankers[0],
                             categories=view.categories, new_items={str(i) for i in data.item_ids[~seen]},
                             **rules)
        started = time.perf_counter()
        self.queries, self.relevant = split.queries, split.relevant
        recalled = self.pipe.recall(self.queries)
        kept = self.pipe.candidates(self.queries, recalled)
        self.ranked = self.pipe.ranker.rank_many(self.queries, kept)
        self.rank_seconds = time.perf_counter() - started
        self.n_items = data.n_items
        self.candidates = statistics.median(len(r) for r in self.ranked)
        # the re-rank of stored ranked lists is the pipeline's own end: check it on a sample
        sample = list(range(min(200, len(self.queries))))
        direct = self.pipe.run([self.queries[j] for j in sample], K, [recalled[j] for j in sample])
        again = [self.pipe.finish(self.queries[j], self.ranked[j], K)[0] for j in sample]
        assert [[c.item_id for c in x] for x in direct] == [[c.item_id for c in x] for x in again], \
            "re-ranking the stored ranked lists differs from Pipeline.run"

    def measure(self, weight: float, relevance: str) -> dict:
        pipe = replace(self.pipe, diversity=weight, relevance=relevance)
        lists = [[c.item_id for c in pipe.finish(q, r, K)[0]] for q, r in zip(self.queries, self.ranked)]
        from engine.metrics import aggregate, user_metrics

        metrics = aggregate(lists, self.relevant, K, self.n_items)
        ild, cats = [], []
        for items in lists:
            vectors, found = self.index.vectors(items)
            v = vectors[found]
            if len(v) >= 2:
                sim = v @ v.T
                pairs = len(v) * (len(v) - 1)
                ild.append(float((pairs - (sim.sum() - np.trace(sim))) / pairs))
            cats.append(len({self.categories.get(i, "") for i in items} - {""}))
        changed = sum(a != b for a, b in zip(lists, self._plain)) / len(lists) if weight else 0.0
        # paired over the same users: the change of NDCG@10 against λ = 0, with a 95% interval
        diff = np.array([user_metrics(a, rel, K)["ndcg"] - user_metrics(b, rel, K)["ndcg"]
                         for a, b, rel in zip(lists, self._plain, self.relevant)])
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        return {"lambda": weight, "relevance": relevance, "ndcg@10": metrics["ndcg@10"],
                "ndcg_change": float(diff.mean()), "ndcg_change_95": [float(diff.mean() - half),
                                                                      float(diff.mean() + half)],
                "recall@10": metrics["recall@10"], "ild@10": statistics.fmean(ild),
                "categories@10": statistics.fmean(cats), "coverage@10": metrics["coverage@10"],
                "lists_changed": changed, "users": len(lists)}

    def curve(self, lambdas, relevances=("rank", "score")) -> list[dict]:
        self._plain = [[c.item_id for c in self.pipe.finish(q, r, K)[0]]
                       for q, r in zip(self.queries, self.ranked)]
        rows = []
        for relevance in relevances:
            for weight in lambdas:
                started = time.perf_counter()
                rows.append(self.measure(weight, relevance))
                log(f"  {relevance} λ={weight}: ndcg {rows[-1]['ndcg@10']:.4f} ild {rows[-1]['ild@10']:.3f} "
                    f"cats {rows[-1]['categories@10']:.2f} ({time.perf_counter() - started:.1f}s)")
        return rows

    def latency(self, weights, users: int = 300, repeat: int = 20) -> dict:
        """µs to re-rank a 100-candidate list to a top 10, λ = 0 against each weight."""
        lists = [r[:100] for r in self.ranked if len(r) >= 100][:users]
        pipes = {w: replace(self.pipe, diversity=w) for w in (0.0, *weights)}
        out: dict[float, list[float]] = {w: [] for w in pipes}
        from engine.pipeline import one_blas_thread

        with one_blas_thread():  # as on the request path (`Pipeline.run`)
            for ranked in lists:
                for w, pipe in pipes.items():  # interleaved: the machine's load affects all alike
                    started = time.perf_counter()
                    for _ in range(repeat):
                        pipe.rerank(ranked, K)
                    out[w].append(1e6 * (time.perf_counter() - started) / repeat)

        def summary(values):
            values = sorted(values)
            return {"median": statistics.median(values), "p95": values[int(0.95 * (len(values) - 1))]}
        return {"lists": len(lists), "candidates": 100,
                "us": {str(w): summary(v) for w, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-db", help="a demo shop database to copy (default: make one, slow)")
    ap.add_argument("--ml100k", help="folder of ml-100k.{inter,item,...} (default: the test cache)")
    ap.add_argument("--only", choices=("ml100k", "demo"), action="append")
    ap.add_argument("--lambdas", default=",".join(map(str, LAMBDAS)))
    ap.add_argument("--max-users", type=int, default=None, help="held-out users scored (default: all)")
    ap.add_argument("--out", default="benchmarks/results/diversity.json")
    args = ap.parse_args()
    os.environ.setdefault("SHELFWISE_LOAD_PLUGINS", PLUGINS)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or ("ml100k", "demo"):
            log(f"{name}: import / copy")
            engine = open_shop(name, Path(tmp), args.demo_db, args.ml100k)
            log(f"{name}: fit once on the held-out split")
            shop = Shop(engine, args.max_users)
            log(f"{name}: {len(shop.queries)} users, {shop.candidates:.0f} candidates (median); "
                f"fit {shop.fit_seconds:.0f}s, recall+rank {shop.rank_seconds:.0f}s")
            rows = shop.curve(lambdas)
            results[name] = {"users": len(shop.queries), "items": shop.n_items,
                             "vectors": len(shop.index) if shop.index is not None else 0,
                             "categories": len(set(shop.categories.values()) - {""}),
                             "candidates_median": shop.candidates, "fit_seconds": shop.fit_seconds,
                             "rank_seconds": shop.rank_seconds, "rows": rows,
                             "latency": shop.latency([w for w in lambdas if w > 0])}
            engine.close()

    table = Table(title=f"Diversity (MMR over MiniLM item vectors): top {K} of the held-out users")
    for col in ("data", "relevance", "λ", "NDCG@10", "Δ NDCG", "Δ 95% (paired)", "ILD@10", "categories@10",
                "coverage@10", "lists changed"):
        table.add_column(col, justify="left" if col in ("data", "relevance") else "right")
    for name, res in results.items():
        base = {r["relevance"]: r["ndcg@10"] for r in res["rows"] if r["lambda"] == 0}
        for r in res["rows"]:
            delta = r["ndcg@10"] / base[r["relevance"]] - 1 if base.get(r["relevance"]) else 0.0
            lo, hi = r["ndcg_change_95"]
            table.add_row(name, r["relevance"], f"{r['lambda']:g}", f"{r['ndcg@10']:.4f}", f"{delta:+.1%}",
                          f"{lo:+.4f} … {hi:+.4f}",
                          f"{r['ild@10']:.3f}", f"{r['categories@10']:.2f}", f"{r['coverage@10']:.3f}",
                          f"{r['lists_changed']:.0%}")
    Console(width=150).print(table)
    lat = Table(title="Re-rank of a 100-candidate list to a top 10, µs")
    for col in ("data", "λ", "median", "p95", "+ over λ=0 (median)"):
        lat.add_column(col, justify="left" if col == "data" else "right")
    for name, res in results.items():
        us = res["latency"]["us"]
        for w, s in us.items():
            lat.add_row(name, w, f"{s['median']:.0f}", f"{s['p95']:.0f}", f"{s['median'] - us['0.0']['median']:+.0f}")
    Console(width=150).print(lat)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": machine(("numpy",), ("engine/pipeline.py", "engine/diversity.py", "engine/vectors.py")),
        "k": K, "quotas": QUOTAS, "ranker": "fusion", "encoder": "minilm", "lambdas": lambdas,
        "demo_db": args.demo_db, "results": results}, indent=2))


if __name__ == "__main__":
    main()
