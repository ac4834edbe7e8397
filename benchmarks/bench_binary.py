"""The stand-alone executable (scripts/build-binary): size, build time, start-up time against
the installed command, and a smoke test of every command.

    python benchmarks/bench_binary.py --build        # build dist/shelfwise first (~10 min), then measure
    python benchmarks/bench_binary.py                # measure an existing dist/shelfwise
    python benchmarks/bench_binary.py --no-smoke     # start-up times only (~2 min)

Every call of either program runs as a user without Python would: `env -i HOME=<fresh
folder> PATH=/usr/bin:/bin`, from an empty working folder. The binary unpacks itself into
$HOME/.cache/shelfwise/ on its first start, so a fresh HOME gives a first start, and
later calls with the same HOME are the "later starts" (median of --repeat calls, the
binary and the installed command alternating).

Start-up rows:
  --help            `shelfwise --help`
  recommend         `shelfwise --db shop.db recommend USER -n 10` on the small demo shop below
The smoke test (skipped with --no-smoke) runs with the binary, each command checked by
its exit status and output: `import demo -o users=200 -o items=200` (the demo
source's smallest catalogue) into a fresh
database, `train`, `recommend`, `recommend --text`, `search`, `similar`, `evaluate
--ranker fusion`, `keys create/list` (own database), `plugins` (every entry point of the installed
`shelfwise` group listed), `status`, `import csv` and `import jsonl` of small files,
`demo --users 200 --items 200`, a plugin file from `--plugins-dir` (numpy + engine, a data
source), `serve` answering one request on 127.0.0.1, and `tui` drawing its first screen in a
pseudo-terminal and quitting on Ctrl+Q.

Prints a table and writes JSON (with the machine) to benchmarks/results/binary.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._env import machine  # noqa: E402

BUILD_INFO = ROOT / "build" / "binary" / "build-info.json"

PLUGIN_FILE = '''"""A third-party plugin given with --plugins-dir: a data source that uses numpy."""
import numpy as np

from engine import DataSource, Event, Item, hookimpl


class NumpyShop(DataSource):
    name = "npshop"
    description = "Five items and twenty views drawn with numpy."

    def read(self, location=None, **options):
        rng = np.random.default_rng(0)
        for i in range(5):
            yield Item(item_id=f"n{i}", title=f"Numbered thing {i}")
        for k, (u, i) in enumerate(rng.integers(0, 5, size=(20, 2)).tolist()):
            yield Event(user_id=f"v{u}", item_id=f"n{i}", kind="view", ts=1.7e9 + k,
                        event_id=f"npshop-{k}")


@hookimpl
def register_sources(register):
    register(NumpyShop)
'''


class Runner:
    """Runs a program the way a machine without Python would: a bare environment."""

    def __init__(self, program: Path, home: Path, cwd: Path):
        self.program, self.home, self.cwd = program, home, cwd
        home.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                "COLUMNS": "120"}

    def run(self, *args: str, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        proc = subprocess.run([str(self.program), *args], env=self.env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout)
        return time.perf_counter() - start, proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --- smoke steps ---------------------------------------------------------------------

def check(name: str, runner: Runner, args: list[str], expect: str | None = None,
          timeout: float = 1800) -> dict:
    seconds, proc = runner.run(*args, timeout=timeout)
    out = proc.stdout + proc.stderr
    ok = proc.returncode == 0 and (expect is None or re.search(expect, out) is not None)
    return {"step": name, "command": " ".join(["shelfwise", *args]), "ok": ok,
            "seconds": round(seconds, 2), "exit": proc.returncode,
            **({} if ok else {"output_tail": out[-2000:]})}


def serve_one_request(runner: Runner, db: Path, user: str) -> dict:
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([str(runner.program), "--db", str(db), "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=runner.env, cwd=runner.cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = {"step": "serve", "command": f"shelfwise --db shop.db serve --port {port}; "
              f"GET /recommend/{user}?n=3", "ok": False}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        result["ready_seconds"] = round(time.perf_counter() - start, 2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/recommend/{user}?n=3",
                                    timeout=60) as r:
            body = json.loads(r.read())
        result["ok"] = len(body.get("items", [])) == 3
        result["answer"] = [item["item_id"] for item in body.get("items", [])]
    except Exception as exc:  # reported in the table, not raised: the other steps still run
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl+C, as a shop owner would stop it
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output = proc.stdout.read() if proc.stdout else ""
        result["stopped_cleanly"] = proc.returncode == 0
        result["ok"] = result["ok"] and result["stopped_cleanly"]
        if not result["ok"]:
            result["output_tail"] = output[-2000:]
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


# text of the first screen (the users screen's search box, a shopper id): the app is up
TUI_DRAWN = (b"find user", b"u000")


def tui_first_screen(runner: Runner, db: Path, timeout: float = 120) -> dict:
    """Start `tui` in a pseudo-terminal, wait until it has drawn its first screen, then
    press Ctrl+Q."""
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.chdir(runner.cwd)
        env = {**runner.env, "TERM": "xterm-256color", "LINES": "30", "COLUMNS": "100"}
        os.execve(str(runner.program), [str(runner.program), "--db", str(db), "tui"], env)
    seen, drawn = b"", False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
        if any(mark in seen for mark in TUI_DRAWN):
            drawn = True
            break
    drawn_seconds = time.perf_counter() - start
    os.write(fd, b"\x11")  # Ctrl+Q
    exit_status = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            exit_status = os.waitstatus_to_exitcode(status)
            break
        try:
            if select.select([fd], [], [], 0.2)[0]:
                os.read(fd, 65536)
        except OSError:
            pass
    if exit_status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os.close(fd)
    ok = drawn and exit_status == 0
    result = {"step": "tui", "command": "shelfwise --db shop.db tui; Ctrl+Q", "ok": ok,
              "seconds": round(drawn_seconds, 2), "exit": exit_status}
    if not ok:
        result["output_tail"] = seen[-2000:].decode(errors="replace")
    return result


def smoke(binary: Path, work: Path) -> tuple[list[dict], Path, str]:
    runner = Runner(binary, work / "home-smoke", work / "smoke")
    db = runner.cwd / "shop.db"
    steps = [check("import demo", runner, ["--db", str(db), "import", "demo", "-o", "users=200",
                                           "-o", "items=200"], r"Imported \d+ items")]
    steps.append(check("train", runner, ["--db", str(db), "train"], r"Trained on"))
    user = "u00000"  # the demo shop's first shopper
    _, proc = runner.run("--db", str(db), "recommend", user, "-n", "3", "--json")
    try:
        item = json.loads(proc.stdout)[0]["item_id"]
    except (ValueError, KeyError, IndexError):
        item = "p00000"
    steps += [
        check("recommend", runner, ["--db", str(db), "recommend", user, "-n", "5"], r"[pP]\d{5}"),
        check("recommend --text", runner, ["--db", str(db), "recommend", user, "--text",
                                           "something warm for winter", "-n", "3"], r"[pP]\d{5}"),
        check("search", runner, ["--db", str(db), "search", "knife", "-n", "3"], r"[pP]\d{5}"),
        check("similar", runner, ["--db", str(db), "similar", item, "-n", "3"], r"[pP]\d{5}"),
        check("evaluate", runner, ["--db", str(db), "evaluate", "--ranker", "fusion"],
              r"(?i)ndcg"),
        check("status", runner, ["--db", str(db), "status"], r"200 users"),
    ]
    # every built-in plugin, found through the bundled entry-point metadata
    wanted = sorted({ep.name for ep in importlib.metadata.entry_points(group="shelfwise")})
    seconds, proc = runner.run("plugins", "--json")
    try:
        listed = sorted(p["name"] for p in json.loads(proc.stdout)["plugins"])
    except (ValueError, KeyError):
        listed = []
    missing = sorted(set(wanted) - set(listed))
    steps.append({"step": "plugins", "command": "shelfwise plugins --json",
                  "ok": proc.returncode == 0 and not missing, "seconds": round(seconds, 2),
                  "listed": listed, **({"missing": missing} if missing else {})})

    # imports from files
    files = runner.cwd / "files"
    files.mkdir(exist_ok=True)
    (files / "items.csv").write_text("sku,name,price,tags\nA1,Blue mug,12.50,kitchen|mug\n"
                                     "A2,Cast-iron teapot,$40,kitchen\nA3,Tea towel,5,\n")
    (files / "events.csv").write_text("customer_id,product_id,event,ts\nc1,A1,pageview,1700000000\n"
                                      "c1,A2,add_to_cart,1700000100\nc2,A1,order,1700000200\n")
    (files / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "J1", "title": "Notebook", "tags": ["paper"]}, {"id": "J2", "title": "Pen"}]))
    (files / "events.jsonl").write_text(json.dumps(
        {"user_id": "c9", "item_id": "J1", "kind": "purchase", "ts": 1700000000}) + "\n")
    steps.append(check("import csv", runner, [
        "--db", str(files / "csv.db"), "import", "csv", "--items", str(files / "items.csv"),
        "--events", str(files / "events.csv")], r"Imported 3 items"))
    steps.append(check("import jsonl", runner, [
        "--db", str(files / "jsonl.db"), "import", "jsonl", str(files)], r"Imported 2 items"))

    # API keys, in a database of their own: with a key stored, `serve` below would ask for it
    keys_db = str(files / "keys.db")
    steps.append(check("keys create", runner, ["--db", keys_db, "keys", "create", "--scope",
                                               "secret", "--name", "bench"], r"key \S+ created"))
    steps.append(check("keys list", runner, ["--db", keys_db, "keys", "list"], r"bench"))

    # a third-party plugin file
    plugins_dir = runner.cwd / "my-plugins"
    plugins_dir.mkdir(exist_ok=True)
    (plugins_dir / "npshop.py").write_text(PLUGIN_FILE)
    steps.append(check("--plugins-dir plugins", runner, ["--plugins-dir", str(plugins_dir),
                                                         "plugins"], r"npshop"))
    steps.append(check("--plugins-dir import", runner, [
        "--plugins-dir", str(plugins_dir), "--db", str(files / "np.db"), "import", "npshop"],
        r"Imported 5 items"))

    steps.append(serve_one_request(runner, db, user))
    steps.append(tui_first_screen(runner, db))
    steps.append(check("demo", runner, ["--db", str(runner.cwd / "demo.db"), "demo",
                                        "--users", "200", "--items", "200"], r"[pP]\d{5}"))
    return steps, db, user


# --- start-up times ---------------------------------------------------------------------

def later_starts(programs: dict[str, Runner], args: list[str], repeat: int) -> dict[str, list[float]]:
    """Each program `repeat` times, alternating, after one untimed warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in programs}
    for runner in programs.values():
        runner.run(*args)
    for _ in range(repeat):
        for name, runner in programs.items():
            seconds, proc = runner.run(*args)
            if proc.returncode != 0:
                raise SystemExit(f"{name} {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
            times[name].append(seconds)
    return times


def first_start(binary: Path, work: Path, args: list[str], label: str) -> dict:
    """The binary's first call for a user whose cache is empty; the unpacked folder's size."""
    runner = Runner(binary, work / f"home-first-{label}", work / f"first-{label}")
    seconds, proc = runner.run(*args)
    if proc.returncode != 0:
        shutil.rmtree(runner.home)
        return {"seconds": round(seconds, 3), "failed": (proc.stdout + proc.stderr)[-2000:]}
    cache = runner.home / ".cache" / "shelfwise"
    unpacked = tree_size(cache)
    files = sum(1 for p in cache.rglob("*") if p.is_file())
    second, _ = runner.run(*args)
    shutil.rmtree(runner.home)  # ~1 GB
    return {"seconds": round(seconds, 3), "second_call_seconds": round(second, 3),
            "unpacked_bytes": unpacked, "unpacked_files": files}


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", type=Path, default=ROOT / "dist" / "shelfwise")
    parser.add_argument("--installed", type=Path, default=ROOT / ".venv" / "bin" / "shelfwise")
    parser.add_argument("--build", action="store_true", help="run scripts/build-binary first")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-smoke", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "binary.json")
    args = parser.parse_args()

    console = Console()
    env_start = machine(("pyinstaller", "nuitka", "torch"), ("engine", "plugins", "tui",
                                                              "packaging", "scripts"))
    build = None
    if args.build:
        start = time.perf_counter()
        subprocess.run([str(ROOT / "scripts" / "build-binary")], check=True, cwd=ROOT)
        build = {"seconds": round(time.perf_counter() - start, 1), "measured_here": True}
    if BUILD_INFO.exists():
        info = json.loads(BUILD_INFO.read_text())
        build = {**info, **(build or {"measured_here": False})}
    if not args.binary.exists():
        raise SystemExit(f"{args.binary} does not exist: run scripts/build-binary or --build")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-binary-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"binary": str(args.binary.relative_to(ROOT) if args.binary.is_relative_to(ROOT)
                                   else args.binary),
                     "size_bytes": args.binary.stat().st_size, "build": build}
    try:
        console.print(f"[bold]first start[/] of {args.binary} (unpacks into a fresh HOME) ...")
        results["first_start_help"] = first_start(args.binary, work, ["--help"], "help")

        if args.no_smoke:
            runner = Runner(args.binary, work / "home-smoke", work / "smoke")
            db, user = runner.cwd / "shop.db", "u00000"
            for step in (["import", "demo", "-o", "users=200", "-o", "items=200"], ["train"]):
                seconds, proc = runner.run("--db", str(db), *step)
                if proc.returncode:
                    raise SystemExit(proc.stdout + proc.stderr)
            steps = []
        else:
            console.print("[bold]smoke test[/] of every command ...")
            steps, db, user = smoke(args.binary, work)
        results["smoke"] = steps

        rec_args = ["--db", str(db), "recommend", user, "-n", "10"]
        results["first_start_recommend"] = first_start(args.binary, work, rec_args, "recommend")

        console.print(f"[bold]later starts[/], {args.repeat} each, alternating ...")
        programs = {"binary": Runner(args.binary, work / "home-smoke", work / "starts"),
                    "installed": Runner(args.installed, work / "home-installed", work / "starts")}
        results["later_starts"] = {}
        for label, cmd in (("--help", ["--help"]), ("recommend", rec_args)):
            try:
                times = later_starts(programs, cmd, args.repeat)
            except SystemExit as exc:  # reported; the smoke results still get written
                results["later_starts"][label] = {"failed": str(exc)[-2000:]}
                continue
            results["later_starts"][label] = {k: summary(v) for k, v in times.items()}
        results["unpacked_folder"] = {
            "bytes": results["first_start_help"]["unpacked_bytes"],
            "files": results["first_start_help"]["unpacked_files"]}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    later = results["later_starts"]
    table = Table(title=f"dist/shelfwise: {results['size_bytes'] / 2**20:,.0f} MiB, unpacks to "
                        f"{results['unpacked_folder']['bytes'] / 2**20:,.0f} MiB in "
                        f"{results['unpacked_folder']['files']:,} files"
                        + (f"; build {build['seconds']:.0f} s" if build else ""))
    for col in ("command", "binary first start", "binary later (median)", "installed (median)",
                "ratio"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for label, first_key in (("--help", "first_start_help"), ("recommend", "first_start_recommend")):
        if "failed" in later[label]:
            table.add_row(f"shelfwise {label}", "[red]failed[/]", "", "", "")
            continue
        b, i = later[label]["binary"]["median"], later[label]["installed"]["median"]
        table.add_row(f"shelfwise {label}" + (" USER -n 10" if label == "recommend" else ""),
                      f"{results[first_key]['seconds']:.2f} s", f"{b:.2f} s", f"{i:.2f} s",
                      f"{b / i:.2f}x")
    console.print(table)
    if results["smoke"]:
        smoke_table = Table(title="smoke test (the binary, env -i, empty folder)")
        for col in ("step", "ok", "seconds"):
            smoke_table.add_column(col)
        for step in results["smoke"]:
            smoke_table.add_row(step["step"], "yes" if step["ok"] else "[red]NO[/]",
                                f"{step.get('seconds', 0):.1f}")
        console.print(smoke_table)
        for step in results["smoke"]:
            if not step["ok"]:
                console.print(f"[red]{step['step']}[/]: {json.dumps(step, indent=1)[:2500]}")

    results["environment"] = {"start": env_start,
                              "end_load_average": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    if any(not step["ok"] for step in results["smoke"]) or any(
            "failed" in row for row in later.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
