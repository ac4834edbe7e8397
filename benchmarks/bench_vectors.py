"""Vector index benchmark: engine.vectors.VectorIndex (hnswlib) against exact search.

    python benchmarks/bench_vectors.py                    # 100k and 2k items (about 10 minutes)
    python benchmarks/bench_vectors.py --quick            # 10k and 2k items (under a minute)
    python benchmarks/bench_vectors.py --vectors items.npy  # the small set: real vectors
    python benchmarks/bench_vectors.py --sweep 16:100,16:200,24:200,32:200  # M:ef_construction

Two data sets, both 384-d like all-MiniLM-L6-v2:

  large   100,000 synthetic items: 1,000 Gaussian clusters of log-normal sizes, each with its
          own spread, normalised to unit length (10,000 with --quick)
  demo    2,000 items, the demo catalogue's size: synthetic the same way, or real vectors
          from --vectors (an .npy array of shape (n, dim); rows are normalised here)

Queries are 1,000 held-out vectors (never indexed) from the same clusters, perturbed with
a little noise, as a shopper's profile is near items but not on one. The reference is exact
search (numpy dot products over every item).

For each set: build time (threads=1, the deterministic default, and threads=all CPUs), the
size of the saved index and its metadata, save/load time; for ef in 32, 64, 128, 256:
recall@10, single-query latency p50/p99 (one VectorIndex.query call per query, as the engine
makes them) and batch throughput (all queries in one call); and queries filtered to a random
1% and 10% of the items: through the default policy (exact search up to brute_force_limit
eligible items, the graph above it), through the graph alone and by exact search alone.

--sweep builds the large set once per M:ef_construction pair and reports recall@10 per ef,
build time and size: the evidence for VectorIndex's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._env import machine  # noqa: E402

from engine.vectors import VectorIndex  # noqa: E402

DIM = 384
K = 10
EFS = (32, 64, 128, 256)
FULL = {"large": 100_000, "demo": 2_000, "queries": 1_000, "filtered_queries": 200}
QUICK = {"large": 10_000, "demo": 2_000, "queries": 200, "filtered_queries": 50}
SEED = 20_24


# == data ===================================================================================

def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def clustered(n: int, n_queries: int, dim: int = DIM, clusters: int = 1_000,
              seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(items, queries): unit vectors around `clusters` random centres. Cluster sizes are
    log-normal (a few big categories, many small ones); each cluster's spread differs
    (noise of norm 0.5-1.0 around a unit centre: cosine 0.7-0.9 to the centre). Queries
    are extra draws from the same clusters, then moved a little further (noise norm 0.3)."""
    rng = np.random.default_rng(seed)
    clusters = min(clusters, max(1, n // 20))
    centres = unit(rng.standard_normal((clusters, dim)))
    weights = rng.lognormal(0.0, 1.0, clusters)
    spread = rng.uniform(0.5, 1.0, clusters).astype(np.float32)
    which = rng.choice(clusters, size=n + n_queries, p=weights / weights.sum())
    out = np.empty((n + n_queries, dim), np.float32)
    for start in range(0, len(out), 20_000):  # float32 in chunks: memory stays ~2x the data
        c = which[start:start + 20_000]
        noise = rng.standard_normal((len(c), dim), dtype=np.float32) / np.sqrt(dim)
        out[start:start + len(c)] = unit(centres[c] + spread[c, None] * noise)
    items, held_out = out[:n], out[n:]
    return items, perturb(held_out, rng)


def perturb(x: np.ndarray, rng: np.random.Generator, scale: float = 0.3) -> np.ndarray:
    return unit(x + scale * rng.standard_normal(x.shape, dtype=np.float32) / np.sqrt(x.shape[1]))


def real(path: str, n_queries: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Real vectors: a random tenth is held out (never indexed) and perturbed into queries."""
    x = unit(np.load(path, allow_pickle=False).astype(np.float32))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    held = order[: max(1, len(x) // 10)]
    items = x[np.sort(order[len(held):])]
    return items, perturb(x[held][np.arange(n_queries) % len(held)], rng)


def exact_top(q: np.ndarray, x: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Row indices of the exact top-k of each query (restricted to `rows` if given)."""
    pool = x if rows is None else x[rows]
    out = np.empty((len(q), min(k, len(pool))), np.int64)
    for start in range(0, len(q), 100):
        sims = q[start:start + 100] @ pool.T
        top = np.argpartition(-sims, out.shape[1] - 1, axis=1)[:, :out.shape[1]]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start:start + 100] = np.take_along_axis(top, order, axis=1)
    return out if rows is None else rows[out]


def recall(hits: list[list[tuple[str, float]]], truth: np.ndarray, ids: list[str]) -> float:
    found = sum(len({i for i, _ in row} & {ids[j] for j in want}) for row, want in zip(hits, truth))
    return found / truth.size


# == measurements ===========================================================================

def latencies(index: VectorIndex, q: np.ndarray, k: int = K, **kwargs) -> tuple[list, np.ndarray]:
    """One query call per row: (hits, milliseconds per call)."""
    hits, ms = [], np.empty(len(q))
    for i, row in enumerate(q):
        t = time.perf_counter()
        hits.append(index.query(row, k, **kwargs)[0])
        ms[i] = (time.perf_counter() - t) * 1e3
    return hits, ms


def pct(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def build(ids, x, **params) -> tuple[VectorIndex, float]:
    t = time.perf_counter()
    index = VectorIndex.build(ids, x, **params)
    return index, time.perf_counter() - t


def bench_set(name: str, x: np.ndarray, q: np.ndarray, n_filtered: int, console,
              params: dict) -> dict[str, Any]:
    n = len(x)
    ids = [f"{name}-{i:06d}" for i in range(n)]
    out: dict[str, Any] = {"items": n, "dim": int(x.shape[1]), "queries": len(q),
                           "params": dict(params)}
    console.print(f"[bold]{name}[/]: {n:,} items x {x.shape[1]}, {len(q):,} queries")

    t = time.perf_counter()
    truth = exact_top(q, x, K)
    out["exact_batch_ms_per_query"] = (time.perf_counter() - t) * 1e3 / len(q)

    threads = os.cpu_count() or 1
    if threads > 1:
        other, seconds = build(ids, x, threads=threads, **params)
        del other  # one index in memory at a time
        out["build_seconds_all_threads"] = seconds
        out["build_threads"] = threads
        console.print(f"  build, {threads} threads: {seconds:.1f} s")
    index, seconds = build(ids, x, threads=1, **params)
    out["build_seconds"] = seconds
    console.print(f"  build, 1 thread: {seconds:.1f} s")

    t = time.perf_counter()
    payload, meta = index.to_bytes()
    out["save_seconds"] = time.perf_counter() - t
    out["index_bytes"] = len(payload)
    out["meta_bytes"] = len(json.dumps(meta))
    out["vector_bytes"] = int(x.nbytes)
    t = time.perf_counter()
    loaded = VectorIndex.from_bytes(payload, meta)
    out["load_seconds"] = time.perf_counter() - t
    del payload, meta, loaded

    out["by_ef"] = {}
    for ef in EFS:
        index.ef = ef
        hits, ms = latencies(index, q)
        t = time.perf_counter()
        batch = index.query(q, K)
        batch_s = time.perf_counter() - t
        r = recall(hits, truth, ids)
        assert batch == hits, "a batch query answered differently from single queries"
        out["by_ef"][ef] = {"recall@10": r, **pct(ms), "batch_qps": len(q) / batch_s}
        console.print(f"  ef={ef}: recall@10 {r:.4f}, p50 {np.percentile(ms, 50):.3f} ms")
    index.ef = params["ef"]

    # Recallers ask for a hundred candidates or more: ef is then raised to k.
    truth100 = exact_top(q, x, 100)
    t = time.perf_counter()
    hits = index.query(q, 100)
    batch_s = time.perf_counter() - t
    _, ms = latencies(index, q[: max(10, len(q) // 4)], k=100)
    out["k100"] = {"recall@100": recall(hits, truth100, ids), **pct(ms),
                   "batch_qps": len(q) / batch_s}
    console.print(f"  k=100: recall@100 {out['k100']['recall@100']:.4f}")

    rng = np.random.default_rng(SEED + 1)
    fq = q[:n_filtered]
    out["filtered"] = {}
    for share in (0.01, 0.10):
        rows = np.sort(rng.choice(n, size=max(K, int(n * share)), replace=False))
        allowed = {ids[i] for i in rows}
        ftruth = exact_top(fq, x, K, rows)
        entry: dict[str, Any] = {"eligible": len(rows)}
        policies = (("default", index.brute_force_limit), ("graph", 0), ("exact", n + 1))
        for policy, limit in policies:
            index.brute_force_limit = limit
            hits, ms = latencies(index, fq, allowed=allowed)
            assert all(len(row) == K and {i for i, _ in row} <= allowed for row in hits)
            entry[policy] = {"recall@10": recall(hits, ftruth, ids), **pct(ms)}
        index.brute_force_limit = params["brute_force_limit"]
        few = max(10, n_filtered // 4)
        hits, ms = latencies(index, fq[:few], allowed=allowed.__contains__)
        entry["predicate"] = {"recall@10": recall(hits, ftruth[:few], ids), **pct(ms),
                              "queries": len(hits)}
        out["filtered"][f"{share:.0%}"] = entry
        console.print(f"  allowed={share:.0%}: default p50 {entry['default']['p50_ms']:.2f} ms, "
                      f"graph {entry['graph']['p50_ms']:.2f} ms "
                      f"(recall {entry['graph']['recall@10']:.3f}), "
                      f"exact {entry['exact']['p50_ms']:.2f} ms")

    # Where exact search stops being cheaper than the filtered graph: the evidence for
    # brute_force_limit. Same queries, growing random allowed sets.
    out["crossover"] = []
    cq = q[: max(10, n_filtered // 4)]
    for eligible in (500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000):
        if eligible > n // 2:
            break
        rows = np.sort(rng.choice(n, size=eligible, replace=False))
        allowed = {ids[i] for i in rows}
        point: dict[str, Any] = {"eligible": eligible}
        for policy, limit in (("graph", 0), ("exact", n + 1)):
            index.brute_force_limit = limit
            _, ms = latencies(index, cq, allowed=allowed)
            point[f"{policy}_p50_ms"] = float(np.percentile(ms, 50))
        out["crossover"].append(point)
        console.print(f"  {eligible:,} eligible: graph {point['graph_p50_ms']:.2f} ms, "
                      f"exact {point['exact_p50_ms']:.2f} ms")
    index.brute_force_limit = params["brute_force_limit"]
    return out


def sweep(grid: list[tuple[int, int]], x: np.ndarray, q: np.ndarray, console) -> list[dict]:
    ids = [f"s-{i:06d}" for i in range(len(x))]
    truth = exact_top(q, x, K)
    rows = []
    for M, efc in grid:
        index, seconds = build(ids, x, M=M, ef_construction=efc, threads=os.cpu_count() or 1)
        payload, _ = index.to_bytes()
        row = {"M": M, "ef_construction": efc, "build_seconds": seconds,
               "build_threads": os.cpu_count() or 1, "index_bytes": len(payload), "by_ef": {}}
        for ef in EFS:
            index.ef = ef
            hits, ms = latencies(index, q)
            row["by_ef"][ef] = {"recall@10": recall(hits, truth, ids), **pct(ms)}
        console.print(f"  M={M} ef_construction={efc}: build {seconds:.0f} s, recall@10 " +
                      ", ".join(f"ef={ef} {v['recall@10']:.4f}" for ef, v in row["by_ef"].items()))
        rows.append(row)
        del index, payload
    return rows


# == reporting ==============================================================================

def environment() -> dict:
    return machine(("numpy", "hnswlib"))


def print_tables(console, doc: dict) -> None:
    from rich.table import Table

    env = doc["environment"]
    caption = (f"Python {env['python']}, numpy {env['versions']['numpy']}, hnswlib "
               f"{env['versions']['hnswlib']}; {env['cpu_count']} CPUs ({env['cpu']}), "
               f"{(env['memory_mib'] or 0) / 1024:.0f} GiB")
    for name, r in doc["sets"].items():
        p = r["params"]
        t = Table(title=f"{name}: {r['items']:,} items x {r['dim']}, {r['queries']:,} queries, "
                        f"k={K} (M={p['M']}, ef_construction={p['ef_construction']})",
                  caption=caption, title_justify="left")
        t.add_column("measurement")
        t.add_column("value", justify="right", style="bold")
        t.add_column("note", style="dim")
        build_note = ("deterministic (threads=1)" + (
            f"; {r['build_threads']} threads: {r['build_seconds_all_threads']:.1f} s"
            if "build_seconds_all_threads" in r else ""))
        t.add_row("build", f"{r['build_seconds']:.1f} s", build_note)
        t.add_row("index size (hnswlib bytes)", f"{r['index_bytes'] / 2**20:,.1f} MiB",
                  f"vectors alone {r['vector_bytes'] / 2**20:,.1f} MiB; JSON meta "
                  f"{r['meta_bytes'] / 2**20:,.2f} MiB")
        t.add_row("save / load", f"{r['save_seconds']:.2f} / {r['load_seconds']:.2f} s",
                  "to_bytes / from_bytes (temp file)")
        t.add_row("exact search (batch)", f"{r['exact_batch_ms_per_query']:.2f} ms/q",
                  "the reference: numpy, 100 queries per matrix product")
        t.add_section()
        for ef, v in r["by_ef"].items():
            mark = " ◀ default" if int(ef) == p.get("ef", 64) else ""
            t.add_row(f"ef={ef}: recall@10", f"{v['recall@10']:.4f}",
                      f"single p50 {v['p50_ms']:.3f} ms, p99 {v['p99_ms']:.3f} ms; "
                      f"batch {v['batch_qps']:,.0f} q/s{mark}")
        v = r["k100"]
        t.add_row("k=100 (ef raised to 100): recall@100", f"{v['recall@100']:.4f}",
                  f"single p50 {v['p50_ms']:.3f} ms, p99 {v['p99_ms']:.3f} ms; "
                  f"batch {v['batch_qps']:,.0f} q/s")
        t.add_section()
        for share, f in r["filtered"].items():
            for policy in ("default", "graph", "exact", "predicate"):
                v = f[policy]
                what = {"default": "set, default policy", "graph": "set, graph only",
                        "exact": "set, exact only", "predicate": "predicate (graph)"}[policy]
                t.add_row(f"allowed {share} ({f['eligible']:,}): {what}",
                          f"{v['p50_ms']:.2f} ms",
                          f"p99 {v['p99_ms']:.2f} ms; recall@10 {v['recall@10']:.4f}")
        if r.get("crossover"):
            t.add_section()
            t.add_row("filtered by a set: graph vs exact", "p50 ms",
                      "  ".join(f"{c['eligible']:,}: {c['graph_p50_ms']:.2f} / "
                                f"{c['exact_p50_ms']:.2f}" for c in r["crossover"]))
        console.print(t)
    if doc.get("sweep"):
        t = Table(title=f"sweep on {doc['sizes']['large']:,} items: recall@10 by ef",
                  caption=caption, title_justify="left")
        for col in ("M", "ef_construction", "build", "size"):
            t.add_column(col, justify="right")
        for ef in EFS:
            t.add_column(f"ef={ef}", justify="right")
        for row in doc["sweep"]:
            t.add_row(str(row["M"]), str(row["ef_construction"]),
                      f"{row['build_seconds']:.0f} s ({row['build_threads']} thr)",
                      f"{row['index_bytes'] / 2**20:,.0f} MiB",
                      *(f"{row['by_ef'][ef]['recall@10']:.4f} / {row['by_ef'][ef]['p50_ms']:.2f} ms"
                        for ef in EFS))
        console.print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k instead of 100k items")
    parser.add_argument("--out", default=None, help="JSON results (default "
                        "benchmarks/results/vectors.json, vectors-quick.json with --quick)")
    parser.add_argument("--vectors", default=None,
                        help="an .npy file of real item vectors for the demo-sized set")
    parser.add_argument("--sweep", default=None, metavar="M:EFC,...",
                        help="also build the large set with each M:ef_construction pair")
    parser.add_argument("--only", default="large,demo", help="sets to run: large, demo")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=150)
    mode = "quick" if args.quick else "full"
    size = dict(QUICK if args.quick else FULL)
    out_path = Path(args.out) if args.out else HERE / "results" / (
        "vectors-quick.json" if args.quick else "vectors.json")
    defaults = VectorIndex(DIM).params()
    params = {k: defaults[k] for k in ("M", "ef_construction", "ef", "seed", "brute_force_limit")}
    only = {s.strip() for s in args.only.split(",")}
    started = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "vectors", "mode": mode, "environment": environment(),
                           "sizes": size, "k": K, "defaults": params, "sets": {}}
    if "large" in only or args.sweep:
        x, q = clustered(size["large"], size["queries"])
        if "large" in only:
            doc["sets"]["large"] = bench_set("large", x, q, size["filtered_queries"], console,
                                             params)
        if args.sweep:
            grid = [tuple(int(v) for v in pair.split(":")) for pair in args.sweep.split(",")]
            console.print(f"[bold]sweep[/] over {len(grid)} settings")
            doc["sweep"] = sweep(grid, x, q, console)
        del x, q
    if "demo" in only:
        if args.vectors:
            x, q = real(args.vectors, size["queries"])
            doc["demo_source"] = args.vectors
        else:
            x, q = clustered(size["demo"], size["queries"], dim=DIM, clusters=100, seed=SEED + 7)
            doc["demo_source"] = "synthetic, 100 clusters"
        doc["sets"]["demo"] = bench_set("demo", x, q, size["filtered_queries"], console, params)
    doc["total_seconds"] = time.perf_counter() - started
    doc["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print_tables(console, doc)
    console.print(f"Results written to {out_path} (total {doc['total_seconds']:.0f} s, peak "
                  f"RSS {doc['peak_rss_mib']:.0f} MiB).", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
