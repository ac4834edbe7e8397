"""Core speed and memory benchmarks: importing, training and recommending.

    python benchmarks/bench_core.py                 # full sizes (about 10-20 minutes)
    python benchmarks/bench_core.py --quick         # everything 10x smaller (under 2 minutes)
    python benchmarks/bench_core.py --only import,scale --out /tmp/core.json

Three sections (see benchmarks/README.md for what each number means):

  import   a 1,000,000-event CSV (+ items CSV) through Engine.import_data("csv"), a re-import
           of the same files (0 new events), the CSV source alone (parsing, no database) and
           Store.write of ready-made Event objects (SQLite, no parsing)
  ml100k   MovieLens-100K (RecBole atomic files) through the `recbole` source: train,
           recommend_all, single-user recommend latency
  scale    a synthetic shop, 100k users x 20k items x 2M events: train, recommend_all
           (timed on a sample and extrapolated when the whole run would take > 10 minutes),
           recommend latency, and peak memory of every phase

Every phase runs in its own Python process, so each phase's peak RSS (ru_maxrss) is its
own. Results go to --out as JSON (with the machine and library versions) and to the
terminal as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # synthetic.py; tests.datasets for MovieLens-100K

import numpy as np  # noqa: E402

from benchmarks._env import machine  # noqa: E402

import synthetic  # noqa: E402

IMPORT_TARGET = 100_000  # events/s for Engine.import_data("csv")

FULL = {
    "import_events": 1_000_000, "import_users": 50_000, "import_items": 10_000,
    "ml100k_fraction": 1.0,
    "scale_events": 2_000_000, "scale_users": 100_000, "scale_items": 20_000,
    "latency_users": 200, "recommend_sample": 10_000, "recommend_budget_s": 600,
    "recommend_probe": 1_000,
}
QUICK = {
    "import_events": 100_000, "import_users": 5_000, "import_items": 1_000,
    "ml100k_fraction": 0.1,
    "scale_events": 200_000, "scale_users": 10_000, "scale_items": 2_000,
    "latency_users": 20, "recommend_sample": 1_000, "recommend_budget_s": 60,
    "recommend_probe": 100,
}
# Settings that differ from the defaults, as shelfwise.toml text (none for the full run).
# --quick tunes the ranker on 300 validation users instead of 3,000, like every other size.
QUICK_SETTINGS = "[pipeline]\nvalidation_users = 300\n"
SECTIONS = ("import", "ml100k", "scale")


# == phases: each runs in a fresh process (`--phase NAME`) and returns a JSON-able dict ====

def _engine(db: str):
    from engine.engine import Engine

    return Engine(db)


def _shop(spec: dict) -> synthetic.Shop:
    return synthetic.make_shop(spec["events"], spec["users"], spec["items"], seed=spec["seed"])


def phase_make_csv(spec: dict) -> dict:
    started = time.perf_counter()
    shop = _shop(spec)
    synthetic.write_items_csv(shop, spec["items_csv"])
    synthetic.write_events_csv(shop, spec["events_csv"])
    return {"seconds": time.perf_counter() - started,
            "events_csv_bytes": os.path.getsize(spec["events_csv"]),
            "items_csv_bytes": os.path.getsize(spec["items_csv"])}


def phase_import_csv(spec: dict) -> dict:
    """Engine.import_data("csv") into the given database (fresh, or already filled)."""
    engine = _engine(spec["db"])
    started = time.perf_counter()
    cpu_started = time.process_time()
    report = engine.import_data("csv", None, items=spec["items_csv"], events=spec["events_csv"])
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    rows = report.events + report.duplicates
    return {"seconds": seconds, "timed_cpu_seconds": cpu, "report": report.to_dict(),
            "events_in_file": rows,
            "events_per_s": rows / seconds, "db_bytes": _db_bytes(spec["db"])}


def phase_parse_csv(spec: dict) -> dict:
    """The csv source alone: read and convert every record, store nothing."""
    from engine.plugins import load_plugins

    source = load_plugins().component("sources", "csv")()
    started = time.perf_counter()
    cpu_started = time.process_time()
    n = sum(1 for _ in source.read(None, items=spec["items_csv"], events=spec["events_csv"]))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"seconds": seconds, "timed_cpu_seconds": cpu, "records": n,
            "records_per_s": n / seconds}


def phase_store_write(spec: dict) -> dict:
    """Store.write of ready-made Item and Event objects (what a source yields), no parsing."""
    shop = _shop(spec)
    records = synthetic.catalogue_records(shop) + list(synthetic.event_records(shop))
    engine = _engine(spec["db"])
    rss_before = _rss_mib()
    started = time.perf_counter()
    cpu_started = time.process_time()
    report = engine.store.write(records)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    rows = report.events + report.duplicates
    return {"seconds": seconds, "timed_cpu_seconds": cpu, "report": report.to_dict(),
            "events_per_s": rows / seconds, "rss_before_write_mib": rss_before, "db_bytes": _db_bytes(spec["db"])}


def phase_import_source(spec: dict) -> dict:
    from engine.errors import UnknownComponentError

    engine = _engine(spec["db"])
    try:
        engine.registry.component("sources", spec["source"])
    except UnknownComponentError as exc:
        return {"skipped": str(exc)}
    started = time.perf_counter()
    cpu_started = time.process_time()
    report = engine.import_data(spec["source"], spec["location"])
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"seconds": seconds, "timed_cpu_seconds": cpu, "report": report.to_dict(),
            "counts": engine.store.counts(),
            "events_per_s": (report.events + report.duplicates) / seconds}


class StageClock:
    """A progress callback that splits a run into its stages.

    A stage ends at its last progress call; the time before the first call is "prepare"
    (reading the store into a Dataset, choosing validation users). Stages add up to the
    whole run. At the end of each stage the clock also reads the process's CPU time (all
    threads) and its peak RSS so far."""

    def __init__(self, echo: bool = False):
        self.echo = echo  # print a line when a stage starts (a long run's log)
        self.started = (time.perf_counter(), time.process_time())
        # [stage, (wall, cpu) at its first call, (wall, cpu) at its last, peak RSS at the
        #  first call, peak RSS at the last]
        self.runs: list[list] = []

    def __call__(self, stage: str, done: int, total: int | None, message: str = "") -> None:
        now, rss = (time.perf_counter(), time.process_time()), _rss_mib()
        if self.runs and self.runs[-1][0] == stage:
            self.runs[-1][2] = now
            self.runs[-1][4] = rss
        else:
            self.runs.append([stage, now, now, rss, rss])
            if self.echo:
                print(f"{time.strftime('%H:%M:%S')} {stage} (peak RSS so far {rss:,.0f} MiB) "
                      f"{message}", flush=True)

    def stages(self) -> dict[str, dict[str, float]]:
        """stage -> {"seconds", "cpu_seconds", "peak_rss_mib"}, in order, from "prepare"
        (up to stage one's first call) to "finish" (after the last stage's last call)."""
        out: dict[str, dict[str, float]] = {}
        marks = [("prepare", self.runs[0][1], self.runs[0][3]) if self.runs
                 else ("prepare", None, None)]
        marks += [(stage, last, rss) for stage, _first, last, _rss_first, rss in self.runs]
        marks.append(("finish", (time.perf_counter(), time.process_time()), None))
        previous = self.started
        for stage, mark, rss in marks:
            mark = mark or (time.perf_counter(), time.process_time())
            entry = out.setdefault(stage, {"seconds": 0.0, "cpu_seconds": 0.0})
            entry["seconds"] += mark[0] - previous[0]
            entry["cpu_seconds"] += mark[1] - previous[1]
            entry["peak_rss_mib"] = rss if rss is not None else _rss_mib()
            previous = mark
        return out


def phase_train(spec: dict) -> dict:
    engine = _engine(spec["db"])
    clock = StageClock(echo=spec.get("echo", False))
    report = engine.train(progress=clock)
    stages = clock.stages()
    rankers = report.get("rankers")
    if rankers is None and report.get("ranker"):  # before train fitted every ranker
        rankers = {"ranker": report["ranker"]}
    return {
        "seconds": sum(s["seconds"] for s in stages.values()), "stages": stages,
        "report_seconds": report.get("seconds", {}),
        "events": report["events"], "users": report["users"], "items": report["items"],
        "rankers": rankers or {},
        "candidate_hit_rate": report.get("candidate_hit_rate"),
        "artifact_bytes": {a["name"]: a["size"] for a in engine.store.active_artifacts()},
        "db_bytes": _db_bytes(spec["db"]),
    }


def phase_recommend_all(spec: dict) -> dict:
    """Consume engine.recommend_all(n); stop after a sample when the whole would be too long.

    recommend_all goes through users in user-id order; the synthetic ids are random numbers,
    so the first users are a random sample of them."""
    engine = _engine(spec["db"])
    n, probe, sample, budget = spec["n"], spec["probe"], spec["sample"], spec["budget_s"]
    total = len(engine.store.users_with_events())
    limit = total
    done = full = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    first = None
    for _user, recs in engine.recommend_all(n):
        if first is None:
            first = time.perf_counter() - started
        done += 1
        full += len(recs) == n
        if done == probe and limit == total:
            projected = (time.perf_counter() - started) / done * total
            if projected > budget:
                limit = min(total, sample)
        if done >= limit:
            break
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    rate = done / seconds if seconds else float("inf")
    return {"seconds": seconds, "timed_cpu_seconds": cpu, "users": done, "users_total": total,
            "sampled": done < total,
            "users_per_s": rate, "projected_seconds_all": total / rate,
            "first_batch_seconds": first, "share_with_n": full / max(done, 1), "n": n}


def phase_latency(spec: dict) -> dict:
    engine = _engine(spec["db"])
    users = engine.store.users_with_events()
    rng = np.random.default_rng(spec.get("seed", 0))
    picked = [users[i] for i in rng.choice(len(users), size=min(spec["users"], len(users)),
                                           replace=False)]
    started = time.perf_counter()
    engine.recommend(picked[0], spec["n"])  # loads every model from the database
    cold = time.perf_counter() - started
    times = []
    for user in picked:
        t = time.perf_counter()
        engine.recommend(user, spec["n"])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"cold_ms": cold * 1000, "users": len(picked), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}


PHASES: dict[str, Callable[[dict], dict]] = {
    "make-csv": phase_make_csv, "import-csv": phase_import_csv, "parse-csv": phase_parse_csv,
    "store-write": phase_store_write, "import-source": phase_import_source,
    "train": phase_train, "recommend-all": phase_recommend_all, "latency": phase_latency,
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _db_bytes(db: str) -> int:
    return sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))


def run_phase_here(name: str, spec_json: str, result_path: str,
                   phases: dict[str, Callable[[dict], dict]] = PHASES) -> None:
    rss_start, load_start, cpu_start = _rss_mib(), os.getloadavg()[0], time.process_time()
    out = phases[name](json.loads(spec_json))
    out["cpu_seconds"] = time.process_time() - cpu_start  # the whole phase, all threads
    out["loadavg"] = [load_start, os.getloadavg()[0]]  # 1-minute load at start and end
    out["rss_start_mib"] = rss_start
    out["rss_peak_mib"] = _rss_mib()
    Path(result_path).write_text(json.dumps(out, default=float))


# == orchestration (the parent process) ====================================================

def installed_plugins() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="shelfwise")})


class Runner:
    """Runs phases, each in a fresh interpreter of `script` (`script --phase NAME --spec JSON
    --result PATH`; default: this file). With `rss_limit_mib`, a phase whose process grows
    past that resident size is killed (and counted as failed) instead of exhausting the
    machine's memory."""

    def __init__(self, work: Path, console, skip_plugins: list[str] = (), settings: str = "",
                 script: Path | None = None, rss_limit_mib: float | None = None):
        self.work = work
        self.console = console
        self.script = Path(script or __file__).resolve()
        self.rss_limit_mib = rss_limit_mib
        self.env = dict(os.environ, SHELFWISE_HOME=str(work / "home"))
        self.env.pop("SHELFWISE_CONFIG", None)  # the defaults, not someone's shelfwise.toml
        if settings:
            (work / "shelfwise.toml").write_text(settings)
            self.env["SHELFWISE_CONFIG"] = str(work / "shelfwise.toml")
        if skip_plugins:
            self.env["SHELFWISE_LOAD_PLUGINS"] = ",".join(
                p for p in installed_plugins() if p not in skip_plugins)
        self.failures: list[str] = []

    def phase(self, label: str, name: str, **spec: Any) -> dict:
        """Run one phase in a fresh interpreter; its stderr passes through."""
        result = self.work / f"{name}-{time.monotonic_ns()}.json"
        self.console.print(f"[bold]▶ {label}[/]", highlight=False)
        started = time.perf_counter()
        log = self.work / f"{name}-{time.monotonic_ns()}.log"
        with open(log, "w+") as out_file:
            proc = subprocess.Popen(
                [sys.executable, str(self.script), "--phase", name,
                 "--spec", json.dumps(spec), "--result", str(result)],
                env=self.env, cwd=self.work, stdout=out_file, stderr=subprocess.STDOUT, text=True)
            killed = self._wait(proc)
            out_file.seek(0)
            output = out_file.read()
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not result.exists():
            tail = "\n".join(output.strip().splitlines()[-15:])
            if killed:
                tail += f"\nkilled: resident memory passed {self.rss_limit_mib:,.0f} MiB"
            self.console.print(f"[red]  ✗ {label} failed (exit {proc.returncode})[/]\n{tail}",
                               highlight=False, markup=True)
            self.failures.append(label)
            return {"error": tail or f"exit {proc.returncode}", "wall_seconds": wall}
        out = json.loads(result.read_text())
        out["wall_seconds"] = wall
        if "skipped" not in out:
            self.console.print(f"  done in {wall:.1f}s (peak RSS {out['rss_peak_mib']:.0f} MiB)",
                               style="dim", highlight=False)
        return out

    def _wait(self, proc: subprocess.Popen) -> bool:
        """Wait for the phase; True when it was killed for passing `rss_limit_mib`."""
        if self.rss_limit_mib is None:
            proc.wait()
            return False
        while proc.poll() is None:
            if process_rss_mib(proc.pid) > self.rss_limit_mib:
                proc.kill()
                proc.wait()
                return True
            time.sleep(0.5)
        return False


def process_rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident size (`VmRSS`) or its peak (`VmHWM`) in MiB; 0 once it is gone."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def section_import(run: Runner, size: dict) -> dict:
    work = run.work / "import"
    work.mkdir(exist_ok=True)
    shop = {"events": size["import_events"], "users": size["import_users"],
            "items": size["import_items"], "seed": 1}
    files = {"items_csv": str(work / "items.csv"), "events_csv": str(work / "events.csv")}
    n = shop["events"]
    out = {"shop": shop}
    out["make_csv"] = run.phase(f"import: generate a {n:,}-event CSV", "make-csv", **shop, **files)
    if "error" in out["make_csv"]:
        return out
    db = str(work / "import.db")
    out["import"] = run.phase(f"import: Engine.import_data('csv') of {n:,} events into a new "
                              f"database", "import-csv", db=db, **files)
    out["reimport"] = run.phase("import: the same files again (idempotent, 0 new events)",
                                "import-csv", db=db, **files)
    out["parse"] = run.phase("import: csv source alone (parse, no database)", "parse-csv",
                             **files)
    out["store_write"] = run.phase(f"import: Store.write of {n:,} ready-made Event objects",
                                   "store-write", db=str(work / "store-write.db"), **shop)
    for p in (work / "events.csv", work / "items.csv"):
        p.unlink(missing_ok=True)
    return out


def _ml100k_folder(run: Runner, fraction: float) -> tuple[Path | None, str]:
    try:
        from tests.datasets import fetch_ml100k
    except ImportError as exc:
        return None, f"tests/datasets.py has no fetch_ml100k ({exc})"
    try:
        folder = fetch_ml100k()
    except RuntimeError as exc:
        return None, f"MovieLens-100K is not available: {exc}"
    if fraction >= 1:
        return folder, ""
    # --quick: the first share of the interactions, everything else as it is
    small = run.work / "ml100k-small" / folder.name
    small.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.suffix == ".inter":
            lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
            keep = 1 + int((len(lines) - 1) * fraction)
            (small / f.name).write_text("".join(lines[:keep]), encoding="utf-8")
        else:
            shutil.copy(f, small / f.name)
    return small, ""


def section_ml100k(run: Runner, size: dict) -> dict:
    folder, why = _ml100k_folder(run, size["ml100k_fraction"])
    if folder is None:
        run.console.print(f"[yellow]ml100k skipped: {why}[/]", highlight=False)
        return {"skipped": why}
    db = str(run.work / "ml100k.db")
    out: dict[str, Any] = {"fraction": size["ml100k_fraction"]}
    out["import"] = run.phase("ml100k: Engine.import_data('recbole')", "import-source",
                              db=db, source="recbole", location=str(folder))
    if "skipped" in out["import"] or "error" in out["import"]:
        why = out["import"].get("skipped") or "the recbole import failed"
        run.console.print(f"[yellow]ml100k skipped: {why}[/]", highlight=False)
        return {"skipped": why, "import": out["import"]}
    _serve(run, out, "ml100k", db, size, sample_everything=True)
    return out


def section_scale(run: Runner, size: dict) -> dict:
    shop = {"events": size["scale_events"], "users": size["scale_users"],
            "items": size["scale_items"], "seed": 2}
    db = str(run.work / "scale.db")
    out: dict[str, Any] = {"shop": shop}
    out["write"] = run.phase(
        f"scale: {shop['users']:,} users x {shop['items']:,} items x {shop['events']:,} events "
        f"via Store.write", "store-write", db=db, **shop)
    if "error" in out["write"]:
        return out
    _serve(run, out, "scale", db, size)
    return out


def _serve(run: Runner, out: dict, label: str, db: str, size: dict,
           sample_everything: bool = False) -> None:
    out["train"] = run.phase(f"{label}: engine.train()", "train", db=db)
    if "error" in out["train"]:
        return
    budget = float("inf") if sample_everything else size["recommend_budget_s"]
    out["recommend_all"] = run.phase(
        f"{label}: engine.recommend_all(10)", "recommend-all", db=db, n=10,
        probe=size["recommend_probe"], sample=size["recommend_sample"], budget_s=budget)
    out["latency"] = run.phase(f"{label}: engine.recommend(user, 10) x {size['latency_users']}",
                               "latency", db=db, n=10, users=size["latency_users"])


# == reporting =============================================================================

def _phases(tree: Any):
    """Every phase result (a dict with rss_peak_mib) inside the results."""
    if isinstance(tree, dict):
        if "rss_peak_mib" in tree:
            yield tree
        for value in tree.values():
            yield from _phases(value)


def environment() -> dict:
    env = machine(("numpy", "scipy", "implicit", "sqlite-utils", "pydantic", "hnswlib"),
                  ("engine", "plugins"))
    return {**env, "sqlite": sqlite3.sqlite_version}


def code_version() -> tuple[str | None, bool]:
    """(short commit, whether engine/ or plugins/ differ from it)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "engine", "plugins"],
                                cwd=ROOT, capture_output=True, text=True).stdout.strip())
    return commit, dirty


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _fmt_s(x: float) -> str:
    return f"{x:,.2f} s" if x < 100 else f"{x:,.0f} s"


def rows_for(results: dict) -> list[dict]:
    """The table: one row per number, (section, measurement, value, note)."""
    rows: list[dict] = []

    def add(section, measurement, value, note=""):
        rows.append({"section": section, "measurement": measurement, "value": value,
                     "note": note})

    def failed(section, what, r):
        if r is None:
            return True
        if "error" in r:
            add(section, what, "FAILED", r["error"].splitlines()[-1][:100])
            return True
        return False

    imp = results.get("import")
    if imp:
        s = "import"
        r = imp.get("import")
        if not failed(s, "csv import", r):
            met = "met" if r["events_per_s"] >= IMPORT_TARGET else "MISSED"
            add(s, f"csv import, {r['events_in_file']:,} events + {r['report']['items']:,} items",
                f"{r['events_per_s']:,.0f} events/s",
                f"{_fmt_s(r['seconds'])} (CPU {r['timed_cpu_seconds']:,.1f} s); "
                f"target ≥ {IMPORT_TARGET:,}/s {met}; "
                f"peak RSS {r['rss_peak_mib']:.0f} MiB; db {r['db_bytes'] / 2**20:.0f} MiB")
        r = imp.get("reimport")
        if not failed(s, "re-import", r):
            add(s, "re-import of the same files", f"{r['events_per_s']:,.0f} events/s",
                f"{_fmt_s(r['seconds'])} (CPU {r['timed_cpu_seconds']:,.1f} s); "
                f"{r['report']['events']:,} new, "
                f"{r['report']['duplicates']:,} duplicates; peak RSS {r['rss_peak_mib']:.0f} MiB")
        r = imp.get("parse")
        if not failed(s, "csv parse only", r):
            add(s, "csv source alone (parse, no db)", f"{r['records_per_s']:,.0f} records/s",
                f"{_fmt_s(r['seconds'])} (CPU {r['timed_cpu_seconds']:,.1f} s) for "
                f"{r['records']:,} records")
        r = imp.get("store_write")
        if not failed(s, "Store.write", r):
            add(s, "Store.write of Event objects (no parse)", f"{r['events_per_s']:,.0f} events/s",
                f"{_fmt_s(r['seconds'])} (CPU {r['timed_cpu_seconds']:,.1f} s); peak RSS "
                f"{r['rss_peak_mib']:.0f} MiB ({r['rss_before_write_mib']:.0f} MiB holding the "
                f"objects)")

    for key, title in (("ml100k", "MovieLens-100K"), ("scale", "synthetic scale")):
        sec = results.get(key)
        if not sec:
            continue
        if "skipped" in sec:
            add(key, title, "skipped", sec["skipped"][:120])
            continue
        first = sec.get("import") or sec.get("write")
        if not failed(key, "load data", first):
            rep = first["report"]
            if key == "ml100k":  # events/s would mislead: the knowledge graph is most rows
                add(key, "import_data('recbole')", _fmt_s(first["seconds"]),
                    f"{rep['events']:,} events, {rep['items']:,} items, {rep['users']:,} users, "
                    f"{rep['triples']:,} triples, {rep['links']:,} links; "
                    f"peak RSS {first['rss_peak_mib']:.0f} MiB")
            else:
                add(key, "Store.write (generated shop)", f"{first['events_per_s']:,.0f} events/s",
                    f"{_fmt_s(first['seconds'])} (CPU {first['timed_cpu_seconds']:,.1f} s): "
                    f"{rep['events']:,} events, {rep['items']:,} items; peak RSS {first['rss_peak_mib']:.0f} MiB")
        r = sec.get("train")
        if not failed(key, "train", r):
            add(key, f"train ({r['users']:,} users, {r['items']:,} items, {r['events']:,} events)",
                _fmt_s(r["seconds"]), f"CPU {r['cpu_seconds']:,.0f} s; "
                                      f"peak RSS {r['rss_peak_mib']:.0f} MiB")
            for stage, st in r["stages"].items():
                add(key, f"  train stage: {stage}", _fmt_s(st["seconds"]),
                    f"CPU {st['cpu_seconds']:,.1f} s; peak RSS so far {st['peak_rss_mib']:.0f} MiB")
        r = sec.get("recommend_all")
        if not failed(key, "recommend_all", r):
            if r["sampled"]:
                note = (f"timed on the first {r['users']:,} of {r['users_total']:,} users "
                        f"(random ids) in {_fmt_s(r['seconds'])}; whole run extrapolated to "
                        f"{_fmt_s(r['projected_seconds_all'])}")
            else:
                note = f"all {r['users']:,} users in {_fmt_s(r['seconds'])}"
            add(key, "recommend_all(10)", f"{r['users_per_s']:,.0f} users/s",
                f"{note} (CPU {r['timed_cpu_seconds']:,.0f} s); {r['share_with_n']:.0%} got 10; "
                f"peak RSS {r['rss_peak_mib']:.0f} MiB")
        r = sec.get("latency")
        if not failed(key, "recommend latency", r):
            add(key, f"recommend(user, 10) over {r['users']} users",
                f"p50 {r['p50_ms']:.1f} ms / p99 {r['p99_ms']:.1f} ms",
                f"first call (loads models) {r['cold_ms']:.0f} ms; peak RSS "
                f"{r['rss_peak_mib']:.0f} MiB")
    return rows


def print_table(console, rows: list[dict], env: dict, mode: str) -> None:
    from rich.table import Table

    skipped = f"; plugins left out: {', '.join(env['plugins_skipped'])}" \
        if env.get("plugins_skipped") else ""
    table = Table(title=f"Shelfwise core benchmarks ({mode}) — {env['date']}, "
                        f"commit {env['git_commit']}{' + local changes' if env['git_dirty'] else ''}"
                        f"{skipped}",
                  caption=(f"Python {env['python']}, numpy {env['versions']['numpy']}, implicit "
                           f"{env['versions']['implicit']}, SQLite {env['sqlite']}; "
                           f"{env['cpu_count']} CPUs ({env['cpu']}), "
                           f"{(env['memory_mib'] or 0) / 1024:.0f} GiB"))
    table.add_column("section", style="cyan", no_wrap=True)
    table.add_column("measurement")
    table.add_column("value", justify="right", style="bold", no_wrap=True)
    table.add_column("note", style="dim")
    previous = None
    for row in rows:
        if previous is not None and row["section"] != previous:
            table.add_section()
        table.add_row(row["section"] if row["section"] != previous else "", row["measurement"],
                      row["value"], row["note"])
        previous = row["section"]
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every size 10x smaller (smoke test)")
    parser.add_argument("--out", default=None,
                        help="JSON results (default benchmarks/results/core.json, "
                             "core-quick.json with --quick)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run: {', '.join(SECTIONS)}")
    parser.add_argument("--workdir", default=None,
                        help="where databases and CSV files go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--skip-plugins", default="",
                        help="comma-separated plugins to leave out (e.g. minilm, to time "
                             "the pipeline without text encoding); default: every installed one")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:
        run_phase_here(args.phase, args.spec, args.result)
        return 0

    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a log file: wide enough that the table stays readable
        console = Console(width=150)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    mode = "quick" if args.quick else "full"
    size = QUICK if args.quick else FULL
    out_path = Path(args.out) if args.out else HERE / "results" / (
        "core-quick.json" if args.quick else "core.json")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="shelfwise-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir(exist_ok=True)

    env = environment()
    skipped = [p.strip() for p in args.skip_plugins.split(",") if p.strip()]
    missing = sorted(set(skipped) - set(installed_plugins()))
    if missing:
        parser.error(f"--skip-plugins: not installed: {', '.join(missing)}; installed: "
                     f"{', '.join(installed_plugins())}")
    env["plugins"] = [p for p in installed_plugins() if p not in skipped]
    env["plugins_skipped"] = skipped
    settings = QUICK_SETTINGS if args.quick else ""
    env["settings"] = settings  # shelfwise.toml used by every phase ("" = the defaults)
    run = Runner(work, console, skipped, settings)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        for name, section in (("import", section_import), ("ml100k", section_ml100k),
                              ("scale", section_scale)):
            if name in only:
                results[name] = section(run, size)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = rows_for(results)
    loads = [load for phase in _phases(results) for load in phase.get("loadavg", ())]
    env["max_loadavg"] = max(loads, default=None)
    cpus = env["cpus_usable"] or env["cpu_count"] or 1
    env["machine_busy"] = bool(loads) and max(loads) > cpus
    env["git_commit_at_end"], env["git_dirty_at_end"] = code_version()
    if env["git_commit_at_end"] != env["git_commit"]:
        console.print(f"[yellow]The code changed during the run ({env['git_commit']} → "
                      f"{env['git_commit_at_end']}): phases ran on different versions.[/]")
    doc = {"benchmark": "core", "mode": mode, "environment": env, "sizes": size,
           "total_seconds": time.perf_counter() - started, "failures": run.failures,
           "table": rows, "results": results}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print_table(console, rows, env, mode)
    if env["machine_busy"]:
        console.print(f"[yellow]The machine was busy: 1-minute load average up to "
                      f"{env['max_loadavg']:.1f} on {cpus} CPUs, so wall times are inflated. "
                      f"CPU seconds (notes, JSON) are steadier.[/]", highlight=False)
    console.print(f"Results written to {out_path} (total {doc['total_seconds']:.0f} s).",
                  highlight=False)
    if run.failures:
        console.print(f"[red]Failed phases: {', '.join(run.failures)}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
