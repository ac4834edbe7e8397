"""Sequence models on MovieLens-100K: Shelfwise against a converged SASRec, ALS and EASE.

    python benchmarks/bench_sequence.py                      # everything (~30-60 min on 2 cores)
    python benchmarks/bench_sequence.py --skip-pipeline      # peers and the transformer alone
    python benchmarks/bench_sequence.py --keep /tmp/seqbench # keep the trained database

The split (`sequence_split.py`): each user's interactions in time order (ties by item id),
the oldest 80% train, the next 10% validation, the newest 10% test. Settings are chosen on
validation (models fitted on train); the chosen settings are then fitted on train +
validation, and every method ranks all items but the user's train + validation ones, given
that history. NDCG@10 on the test items, per user; intervals are paired over the same 943
users (normal approximation, 95%).

Methods:
- `SASRec (RecBole)`: the peer, trained to convergence with early stopping in its own
  virtualenv (`benchmarks/peers/sasrec_recbole.py` writes `results/sasrec_peer.json`; this
  script reads its top-100 lists).
- `ALS (implicit)` and `EASE`: refitted on train + validation with the settings that scored
  best on validation.
- Shelfwise: a database with the train + validation events (and the items and knowledge
  graph) imported with `shelfwise import recbole`, `train` with the default settings, then
  each recaller alone and the default pipeline, queried with each user's history at the
  moment of their first test event.

Writes `benchmarks/results/sequence.json`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from sequence_split import (  # noqa: E402
    K, Split, chronological_split, paired_interval, per_user_ndcg, ratio_interval, read_ml100k_inter,
)


def ml100k_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    from tests.datasets import fetch_ml100k

    return fetch_ml100k()


# -- peers ---------------------------------------------------------------------------------


class Matrix:
    """Users x items interaction matrix of a part of the split (binary)."""

    def __init__(self, split: Split, parts: tuple[str, ...]):
        users = sorted({u for part in ("train", "valid", "test") for u, *_ in getattr(split, part)}, key=int)
        items = split.items()
        self.user_index = {u: j for j, u in enumerate(users)}
        self.item_ids = items
        self.item_index = {i: j for j, i in enumerate(items)}
        from scipy.sparse import csr_matrix

        rows, cols = [], []
        for part in parts:
            for u, i, *_ in getattr(split, part):
                rows.append(self.user_index[u])
                cols.append(self.item_index[i])
        self.X = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items)))
        self.X.sum_duplicates()
        self.X.data[:] = 1.0

    def top(self, scores: np.ndarray, users: list[str], k: int = 100) -> dict[str, list[str]]:
        out = {}
        for u in users:
            row = self.user_index[u]
            s = scores[row].astype(np.float64).copy()
            s[self.X[row].indices] = -np.inf
            best = np.argpartition(-s, k)[:k]
            best = best[np.argsort(-s[best], kind="stable")]
            out[u] = [self.item_ids[j] for j in best.tolist()]
        return out


def ease_scores(X, lam: float) -> np.ndarray:
    G = (X.T @ X).toarray().astype(np.float64)
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    B[np.diag_indices_from(B)] = 0.0
    return np.asarray(X @ B)


def als_scores(X, factors: int, reg: float, alpha: float, seed: int = 0) -> np.ndarray:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=alpha,
                                        iterations=15, random_state=seed, num_threads=1)
        model.fit(X, show_progress=False)
    return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T


def tuned(name: str, split: Split, grid: list[dict], score) -> tuple[dict, dict[str, list[str]], list]:
    """Choose settings on validation (fitted on train), then refit on train + validation."""
    train = Matrix(split, ("train",))
    valid_rel = split.relevant("valid")
    valid_users = sorted(valid_rel, key=int)
    tried = []
    for settings in grid:
        top = train.top(score(train.X, **settings), valid_users, K)
        tried.append((per_user_ndcg(top, valid_rel).mean(), settings))
        print(f"  {name} {settings}: validation NDCG@10 {tried[-1][0]:.4f}", flush=True)
    best = max(tried, key=lambda t: t[0])[1]
    full = Matrix(split, ("train", "valid"))
    users = sorted(split.relevant("test"), key=int)
    return best, full.top(score(full.X, **best), users), [(round(v, 6), s) for v, s in tried]


# -- Shelfwise -----------------------------------------------------------------------------


def shelfwise_lists(split: Split, folder: Path, workdir: Path, recallers_alone: bool = True,
                    reuse: bool = False, blocked: tuple[str, ...] = ()) -> dict:
    """Train a Shelfwise database on train + validation and answer every test user
    (`blocked`: plugins left out, as if not installed)."""
    from engine import Interaction, Query
    from engine.engine import Engine
    from engine.plugins import load_plugins

    data = workdir / "ml-100k"
    data.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.suffix in (".item", ".user", ".kg", ".link"):
            shutil.copy(f, data / f.name)
    with open(data / "ml-100k.inter", "w", encoding="utf-8") as out:
        out.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u, i, r, t in split.train + split.valid:
            out.write(f"{u}\t{i}\t{r:g}\t{t:.0f}\n")
    db = workdir / ("ml100k-train-valid" + "".join(f"-no-{b}" for b in blocked) + ".db")
    registry = load_plugins(blocked=blocked)
    started = time.perf_counter()
    if reuse and db.exists():  # answer again from the database this script trained before
        engine = Engine(db, registry=registry)
        report = next(r for r in engine.store.runs("train", 20) if r["status"] == "ok")["metrics"]
        imported = trained = 0.0
    else:
        db.unlink(missing_ok=True)
        engine = Engine(db, registry=registry)
        engine.import_data("recbole", str(data))
        imported = time.perf_counter() - started

        def progress(stage, done, total, message=""):
            if message:
                print(f"  [{time.perf_counter() - started:7.1f}s] {stage}: {message}", flush=True)

        report = engine.train(progress=progress).to_dict()
        trained = time.perf_counter() - started - imported
    # each user's history, and "now" = the moment of their first test event
    now = {}
    for u, _, _, t in split.test:
        now[u] = min(now.get(u, t), t)
    history: dict[str, list] = {}
    for u, i, r, t in split.train + split.valid:
        history.setdefault(u, []).append(Interaction(i, "rating", t, r))
    users = sorted(split.relevant("test"), key=int)
    queries = [Query(user_id=u, history=tuple(history.get(u, ())[-200:]),
                     exclude=frozenset(h.item_id for h in history.get(u, ())), now=now[u]) for u in users]

    def lists(pipe) -> dict[str, list[str]]:
        out = {}
        for lo in range(0, len(queries), 256):
            for q, shown in zip(queries[lo:lo + 256], pipe.run(queries[lo:lo + 256], K)):
                out[q.user_id] = [c.item_id for c in shown]
        return out

    found = {}
    t = time.perf_counter()
    label = "Shelfwise pipeline" + "".join(f" without {b}" for b in blocked)
    found[label] = lists(engine.pipeline())
    pipeline_seconds = time.perf_counter() - t
    if recallers_alone and not blocked:
        for name in (c["name"] for c in engine.components()["recallers"]):
            try:
                found[f"{name} alone"] = lists(engine.pipeline([name], ""))
            except Exception as exc:  # noqa: BLE001 — untrained or left out: said, not scored
                print(f"  {name}: {exc}")
    engine.close()
    return {"lists": found, "train": report, "import_seconds": round(imported, 1),
            "train_seconds": round(trained, 1), "pipeline_answer_seconds": round(pipeline_seconds, 1)}


def demo_gain(workdir: Path, leave_out: str, reuse: bool = False) -> dict:
    """The demo shop's offline evaluation (`Engine.evaluate`: each shopper's newest 10% of
    items held out) of the default pipeline, with and without plugin `leave_out` (with
    `reuse`, the figures a previous run left in the work folder)."""
    saved = workdir / "demo_gain.json"
    if reuse and saved.exists():
        return json.loads(saved.read_text())
    from engine.engine import Engine
    from engine.plugins import load_plugins

    db = workdir / "demo.db"
    if not db.exists():  # (evaluation stores nothing but its run: the shop can be reused)
        engine = Engine(db)
        engine.import_data("demo", None)
        engine.close()
    out = {}
    for label, blocked in (("with", ()), ("without", (leave_out,))):
        started = time.perf_counter()
        engine = Engine(db, registry=load_plugins(blocked=blocked))
        report = engine.evaluate(K)
        engine.close()
        pipeline = next(r for r in report.results if r.kind == "pipeline")
        out[label] = {"ndcg@10": pipeline.metrics[f"ndcg@{K}"], "seconds": round(time.perf_counter() - started, 1),
                      "ranker": pipeline.ranker,
                      "recallers": {r.name: r.metrics[f"ndcg@{K}"] for r in report.results if r.kind == "recaller"}}
        print(f"  demo shop {label} {leave_out}: NDCG@10 {out[label]['ndcg@10']:.4f}", flush=True)
    out["gain"] = round(out["with"]["ndcg@10"] / out["without"]["ndcg@10"], 4)
    saved.write_text(json.dumps(out, indent=1))
    return out


# -- the table -----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="the ml-100k folder (default: fetched into the test cache)")
    ap.add_argument("--peer", default=str(HERE / "results" / "sasrec_peer.json"))
    ap.add_argument("--out", default=str(HERE / "results" / "sequence.json"))
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--keep", help="a folder to keep the Shelfwise database in")
    ap.add_argument("--reuse", action="store_true",
                    help="answer from the databases a previous run trained in --keep (no training)")
    ap.add_argument("--without", default="transformer",
                    help="also train without this plugin, on MovieLens and on the demo shop (\"\": skip)")
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()

    from _env import machine

    folder = ml100k_folder(args.data)
    split = chronological_split(read_ml100k_inter(folder / "ml-100k.inter"))
    relevant = split.relevant("test")
    print(f"split: {len(split.train):,} train, {len(split.valid):,} validation, {len(split.test):,} "
          f"test interactions; {len(relevant)} test users", flush=True)
    lists: dict[str, dict[str, list[str]]] = {}
    extra: dict = {}
    peer_path = Path(args.peer)
    if peer_path.exists():
        peer = json.loads(peer_path.read_text())
        lists["SASRec (RecBole)"] = peer["top"]
        extra["sasrec"] = {k: v for k, v in peer.items() if k != "top"}
    else:
        print(f"no peer results at {peer_path}: run benchmarks/peers/sasrec_recbole.py first")
    print("EASE", flush=True)
    best, lists["EASE"], tried = tuned("EASE", split, [{"lam": v} for v in (50.0, 100.0, 250.0, 500.0, 1000.0)],
                                       lambda X, lam: ease_scores(X, lam))
    extra["ease"] = {"chosen": best, "validation": tried}
    print("ALS", flush=True)
    grid = [{"factors": f, "reg": r, "alpha": a} for f in (64, 128) for r in (0.05, 1.0) for a in (2.0, 10.0)]
    best, lists["ALS (implicit)"], tried = tuned("ALS", split, grid, als_scores)
    extra["als"] = {"chosen": best, "validation": tried}
    if not args.skip_pipeline:
        workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="seqbench-"))
        try:
            found = shelfwise_lists(split, folder, workdir, reuse=args.reuse)
            lists.update(found.pop("lists"))
            extra["shelfwise"] = found
            if args.without:
                found = shelfwise_lists(split, folder, workdir, reuse=args.reuse, blocked=(args.without,))
                lists.update(found.pop("lists"))
                extra[f"shelfwise without {args.without}"] = found
                if not args.skip_demo:
                    extra["demo"] = demo_gain(workdir, args.without, args.reuse)
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    per_user = {name: per_user_ndcg(top, relevant) for name, top in lists.items()}
    base_name = "SASRec (RecBole)" if "SASRec (RecBole)" in per_user else "EASE"
    base = per_user[base_name]
    rows = []
    for name, scores in sorted(per_user.items(), key=lambda kv: -kv[1].mean()):
        diff = paired_interval(scores, base)
        ratio = ratio_interval(scores, base)
        rows.append({"method": name, "ndcg@10": round(float(scores.mean()), 4),
                     f"vs {base_name}": round(ratio[0], 3), "ratio_95": [round(ratio[1], 3), round(ratio[2], 3)],
                     "diff": round(diff[0], 4), "diff_95": [round(diff[1], 4), round(diff[2], 4)]})
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MovieLens-100K, chronological 80/10/10, NDCG@10 on {len(relevant)} test users")
    for col in ("method", "NDCG@10", f"× {base_name} (95%)", "difference (95%)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['ndcg@10']:.4f}",
                      f"{r[f'vs {base_name}']:.3f} [{r['ratio_95'][0]:.3f}, {r['ratio_95'][1]:.3f}]",
                      f"{r['diff']:+.4f} [{r['diff_95'][0]:+.4f}, {r['diff_95'][1]:+.4f}]")
    Console().print(table)
    out = {"environment": machine(("numpy", "scipy", "implicit", "torch")), "split": {
        "train": len(split.train), "valid": len(split.valid), "test": len(split.test), "users": len(relevant)},
        "baseline": base_name, "table": rows, "details": extra,
        "per_user": {name: [round(float(v), 6) for v in s] for name, s in per_user.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
