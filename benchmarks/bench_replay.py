"""Offline replay against the truth: a simulated shop where every configuration's true
click-through rate is known, because the shoppers click by a click model we choose.

    python benchmarks/bench_replay.py [--rounds 5] [--bootstraps 200] [--repeats 10] [--out benchmarks/results/replay.json]

The shop is the demo shop (seed 3, 200 shoppers, 200 products), trained with the
collaborative plugins. Ground truth is a position-based click model: examination
theta_k = 1 / k^0.8 at position k (1-based) and a fixed appeal gamma_i per product drawn
once from 0.03 + 0.5 * Beta(1.2, 2.5) (seeded). The logging configuration is the default
pipeline: each round every shopper is served a list of 10 through `Engine.recommend`,
logged with `Engine.log_impressions`; clicks are drawn from the model and sent back with
`Engine.ingest` and the list's recommendation id (so the incremental recallers fold them
in and the next round's lists move a little, as in a live shop).

Then each candidate configuration (a shelfwise.toml) is replayed with `Engine.replay`. Its
true CTR is computed from the model on its own lists: for every logged request, the list
its engine answers now for that shopper, sum_k theta_k gamma_i / length — computed here
with a separate Engine, not read from the replay. A thin log (a copy of the shop before
logging, with only a handful of requests logged) checks that the tool says it cannot tell.
`--repeats` simulates that many shops (click model and clicks drawn with other seeds) and
counts how often each configuration's truth falls inside its interval, and how often a
verdict other than "too thin" has the sign of the true difference right.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PLUGINS = "files,recbole,demo,popular,als,cooccurrence,fusion"
LIST_LENGTH = 10
CONFIGS = {
    "default (the logger's)": "",
    "popular only": "[pipeline]\nrecallers = { popular = 50 }\n",
    "als only": "[pipeline]\nrecallers = { als = 200 }\n",
    "cooccurrence only": "[pipeline]\nrecallers = { cooccurrence = 100 }\n",
}


def click_model(item_ids: list[str], seed: int = 7) -> tuple[np.ndarray, dict[str, float]]:
    """(theta per 0-based position, gamma per item id): the simulated shoppers' truth."""
    rng = np.random.default_rng(seed)
    theta = 1.0 / np.arange(1, LIST_LENGTH + 1) ** 0.8
    gamma = 0.03 + 0.5 * rng.beta(1.2, 2.5, len(item_ids))
    return theta, dict(zip(sorted(item_ids), gamma.tolist()))


def build_shop(path: Path):
    """A trained demo shop at `path`; returns its Engine (the logger: default settings)."""
    from engine import Engine, load_plugins

    eng = Engine(path, registry=load_plugins())
    eng.import_data("demo", None, seed=3, users=200, items=200)
    eng.train()
    return eng


def log_traffic(eng, theta: np.ndarray, gamma: dict[str, float], rounds: int,
                users: list[str] | None = None, seed: int = 11) -> list[tuple[str, int]]:
    """Serve, log and click `rounds` times for every shopper (or `users`); returns the
    logged requests as (user, list length)."""
    from engine import Event

    rng = np.random.default_rng(seed)
    users = users if users is not None else sorted(eng.store.users_with_events())
    requests, serial = [], 0
    for _ in range(rounds):
        events, rids = [], {}
        for user in users:
            recs = eng.recommend(user, LIST_LENGTH)
            rid = eng.log_impressions(recs, user)
            requests.append((user, len(recs)))
            for rec in recs:
                if rng.random() < theta[rec.rank - 1] * gamma[rec.item_id]:
                    serial += 1
                    event = Event(user, rec.item_id, "click", time.time(), event_id=f"sim-{serial}")
                    events.append(event)
                    rids[event.event_id] = rid
        eng.ingest(events, rids)
    return requests


def true_ctr(db_path: Path, registry, config_path: Path, theta: np.ndarray,
             gamma: dict[str, float]) -> float:
    """Clicks per impression the click model gives the configuration's own lists: for each
    logged request, the list its pipeline answers for that shopper's history as of the
    request (engine.replay_report.lists_as_of, the lists the replay itself is about)."""
    from engine import Engine
    from engine.replay_report import LoggedRequest, lists_as_of
    from engine.store.replay_log import clicked_impressions

    eng = Engine(db_path, registry=registry, config_path=config_path)
    try:
        requests: dict[str, LoggedRequest] = {}
        for rid, position, _, _, placement, user, ts, _ in clicked_impressions(eng.db):
            requests[rid] = LoggedRequest(user, placement, max(position, requests[rid].length
                                                                if rid in requests else 0), ts)
        lists = lists_as_of(eng, list(requests.values()))
        clicks = sum(theta[k] * gamma[c.item_id] for cands in lists for k, c in enumerate(cands))
        return float(clicks / sum(len(cands) for cands in lists))
    finally:
        eng.close()


def write_configs(folder: Path) -> dict[str, Path]:
    paths = {}
    for i, (name, text) in enumerate(CONFIGS.items()):
        paths[name] = folder / f"config{i}.toml"
        paths[name].write_text(text)
    return paths


def replay_once(base: Path, folder: Path, registry, configs: dict[str, Path], repeat: int,
                rounds: int, bootstraps: int) -> dict:
    """One simulated shop (the click model and the clicks drawn with seeds from `repeat`),
    logged on a copy of the trained `base`, and every configuration replayed against it."""
    from engine import Engine

    db_path = folder / f"shop-{repeat}.db"
    shutil.copy(base, db_path)
    eng = Engine(db_path, registry=registry)
    try:
        theta, gamma = click_model([i.item_id for i in eng.find_items("", limit=100_000)], seed=7 + repeat)
        log_traffic(eng, theta, gamma, rounds, seed=11 + repeat)
        rows = []
        for name, path in configs.items():
            started = time.perf_counter()
            report = eng.replay(path, since="30d", bootstraps=bootstraps, seed=repeat)
            seconds = time.perf_counter() - started
            truth = true_ctr(db_path, registry, path, theta, gamma)
            lo, hi = report.interval
            rows.append({"config": name, "toml": CONFIGS[name], "truth": truth,
                         "estimate": report.ctr, "interval": [lo, hi],
                         "covered": bool(lo <= truth <= hi), "matched_ips": report.matched_ctr,
                         "matched_share": report.matched_share, "support": report.support,
                         "logged_ctr": report.logged_ctr, "difference": report.difference,
                         "difference_interval": list(report.difference_interval),
                         "verdict": report.verdict, "seconds": round(seconds, 2)})
        logger_truth = next(r["truth"] for r in rows if r["config"].startswith("default"))
        for r in rows:
            r["true_difference"] = r["truth"] - logger_truth
            r["verdict_right"] = {"higher": r["true_difference"] > 0, "lower": r["true_difference"] < 0,
                                  "no clear difference": abs(r["true_difference"]) <= 0.1 * logger_truth,
                                  "too thin": None}[r["verdict"]]
        summary = {"requests": report.requests, "impressions": report.impressions,
                   "clicks": report.clicks, "position_bias_estimated": report.position_bias,
                   "position_bias_true": (theta / theta[0]).round(4).tolist(),
                   "position_mixing": report.position_mixing, "logger_true_ctr": logger_truth}
        return {"rows": rows, "log": summary}
    finally:
        eng.close()


def run(folder: Path, rounds: int = 5, bootstraps: int = 200, repeats: int = 1,
        thin_requests: int = 8) -> dict:
    """The headline shop (repeat 0), `repeats - 1` more with other seeds (coverage), and
    the thin log."""
    os.environ["SHELFWISE_LOAD_PLUGINS"] = PLUGINS
    os.environ.setdefault("SHELFWISE_HOME", str(folder / "home"))
    base = folder / "base.db"
    build_shop(base).close()
    from engine import Engine, load_plugins

    registry = load_plugins()
    configs = write_configs(folder)
    shops = [replay_once(base, folder, registry, configs, repeat, rounds, bootstraps)
             for repeat in range(repeats)]
    coverage = {name: sum(r["covered"] for shop in shops for r in shop["rows"] if r["config"] == name)
                for name in configs}
    thin_path = folder / "thin.db"
    shutil.copy(base, thin_path)
    thin = Engine(thin_path, registry=registry)
    theta, gamma = click_model([i.item_id for i in thin.find_items("", limit=100_000)])
    thin_requests_logged = log_traffic(thin, theta, gamma, 1,
                                       users=sorted(thin.store.users_with_events())[:thin_requests])
    thin_report = thin.replay(configs["popular only"], since="30d", bootstraps=bootstraps)
    thin.close()
    return {"rows": shops[0]["rows"], "log": shops[0]["log"],
            "logger_true_ctr": shops[0]["log"]["logger_true_ctr"],
            "repeats": [shop["rows"] for shop in shops], "coverage": coverage,
            "thin": {"requests": len(thin_requests_logged), "impressions": thin_report.impressions,
                     "clicks": thin_report.clicks, "support": thin_report.support,
                     "estimate": thin_report.ctr, "interval": list(thin_report.interval),
                     "verdict": thin_report.verdict, "message": thin_report.message},
            "rounds": rounds, "bootstraps": bootstraps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bootstraps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10,
                        help="shops simulated with other seeds, for the coverage of the intervals")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "replay.json"))
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from benchmarks._env import machine

    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        started = time.perf_counter()
        result = run(Path(tmp), args.rounds, args.bootstraps, args.repeats)
        result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = machine(("numpy", "implicit"), ("engine/replay.py", "engine/replay_report.py",
                                                        "engine/store/replay_log.py", "benchmarks/bench_replay.py"))
    log = result["log"]
    table = Table(title=f"Offline replay on a simulated shop: {log['requests']:,} logged requests, "
                        f"{log['impressions']:,} impressions, {log['clicks']:,} clicks "
                        f"(logger's true CTR {result['logger_true_ctr']:.4f})")
    for col in ("configuration", "true CTR", "estimate", "95% interval", "truth inside",
                "matched IPS", "matched", "support", "verdict"):
        table.add_column(col)
    for r in result["rows"]:
        table.add_row(r["config"], f"{r['truth']:.4f}", f"{r['estimate']:.4f}",
                      f"{r['interval'][0]:.4f}–{r['interval'][1]:.4f}", "yes" if r["covered"] else "NO",
                      "—" if r["matched_ips"] is None else f"{r['matched_ips']:.4f}",
                      f"{r['matched_share']:.0%}", f"{r['support']:.0%}", r["verdict"])
    console = Console()
    console.print(table)
    thin = result["thin"]
    console.print(f"Thin log ({thin['requests']} requests, {thin['clicks']} clicks): "
                  f"verdict {thin['verdict']!r}: {thin['message']}")
    repeats = len(result["repeats"])
    console.print(f"Truth inside the 95% interval, over {repeats} simulated shops (seeds): " + ", ".join(
        f"{name} {hits}/{repeats}" for name, hits in result["coverage"].items()))
    verdicts = [r for shop in result["repeats"] for r in shop if r["verdict"] != "too thin"]
    console.print(f"Verdicts other than 'too thin': {len(verdicts)}, of which right about the true "
                  f"difference: {sum(bool(r['verdict_right']) for r in verdicts)}; 'too thin': "
                  f"{sum(r['verdict'] == 'too thin' for shop in result['repeats'] for r in shop)}")
    console.print(f"Position bias, estimated: {log['position_bias_estimated']}")
    console.print(f"Position bias, true:      {log['position_bias_true']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"Wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
