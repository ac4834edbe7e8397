"""The example third-party plugin (examples/shelfwise-recently-viewed), installed for real.

The package is built with pip (no network: --no-index, --no-build-isolation, --no-deps)
into a scratch folder and put on PYTHONPATH, so `shelfwise` finds it through the
`shelfwise` entry-point group exactly as it would after `pip install`, and the shared
virtualenv is left untouched."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.plugins import load_plugins

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shelfwise-recently-viewed"
DAY, HOUR = 86_400.0, 3_600.0


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding the installed package and its dist-info (entry points)."""
    root = tmp_path_factory.mktemp("example-plugin")
    src = root / "src"  # a copy: building writes build/ and *.egg-info into the source tree
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info",
                                                                "build", ".pytest_cache"))
    site = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--quiet",
         "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(site.glob("shelfwise_recently_viewed-*.dist-info/entry_points.txt"))
    return site


def run(site: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("SHELFWISE_DB", "SHELFWISE_CONFIG", "SHELFWISE_LOAD_PLUGINS")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    environ.update(env)
    result = subprocess.run(list(args), cwd=cwd, env=environ, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def shelfwise(site: Path, cwd: Path, *args: str, **env: str) -> str:
    return run(site, cwd, sys.executable, "-m", "engine.cli", *args, **env).stdout


def write_shop(folder: Path, now: float) -> None:
    """Seven items, alice's recent history, and a crowd that makes some items popular."""
    items = [("mug", "Blue mug", "yes"), ("teapot", "Cast-iron teapot", "yes"),
             ("kettle", "Steel kettle", "yes"), ("lamp", "Desk lamp", "yes"),
             ("vase", "Glass vase", "no"), ("towel", "Tea towel", "yes"),
             ("candle", "Candle", "yes")]
    events = [
        ("alice", "lamp", "view", now - 60 * DAY),      # too long ago
        ("alice", "kettle", "view", now - 4 * DAY),     # ... then bought it
        ("alice", "kettle", "purchase", now - 3 * DAY),
        ("alice", "mug", "view", now - 2 * DAY),
        ("alice", "vase", "view", now - 1 * DAY),       # out of stock
        ("alice", "teapot", "cart", now - 5 * HOUR),
    ]
    for u in range(12):
        for item in ("candle", "towel", "mug", "kettle"):
            events.append((f"u{u}", item, "purchase" if item == "candle" else "view",
                           now - (u + 1) * HOUR))
    with open(folder / "items.csv", "w", newline="") as f:
        csv.writer(f).writerows([("item_id", "title", "in_stock"), *items])
    with open(folder / "events.csv", "w", newline="") as f:
        csv.writer(f).writerows([("user_id", "item_id", "kind", "timestamp"), *events])


def test_plugins_dir_loads_the_example_without_installing():
    registry = load_plugins(plugins_dir=EXAMPLE)
    plugin, cls = registry.components()["recallers"]["recently_viewed"]
    assert plugin == "shelfwise_recently_viewed"
    assert cls.default_quota == 0
    listed = {p["name"]: p for p in registry.plugins()}
    assert listed["shelfwise_recently_viewed"]["components"] == {"recallers": ["recently_viewed"]}


def test_installed_example_is_listed(installed, tmp_path):
    info = json.loads(shelfwise(installed, tmp_path, "--db", "shop.db", "plugins", "--json"))
    plugins = {p["name"]: p for p in info["plugins"]}
    assert plugins["recently_viewed"]["components"] == {"recallers": ["recently_viewed"]}
    assert plugins["recently_viewed"]["hooks"] == ["register_recallers"]
    assert plugins["recently_viewed"]["version"] == "0.1.0"
    assert "recently_viewed" not in {f["name"] for f in info["failures"]}
    recaller = {c["name"]: c for c in info["components"]["recallers"]}["recently_viewed"]
    assert recaller["plugin"] == "recently_viewed"
    assert recaller["default"] is False  # default_quota = 0: only when configured


def test_installed_example_recommends_what_the_customer_viewed(installed, tmp_path):
    write_shop(tmp_path, time.time())
    # default_quota = 0, so the pipeline must name it for `train` to fit it.
    (tmp_path / "shelfwise.toml").write_text(
        "[pipeline]\nrecallers = { popular = 50, recently_viewed = 20 }\n\n"
        "[plugins.recently_viewed]\nmax_age_days = 30\n")
    env = {"SHELFWISE_LOAD_PLUGINS": "files,popular,fusion,recently_viewed"}
    report = json.loads(shelfwise(installed, tmp_path, "--db", "shop.db", "import", "csv",
                                  "--items", "items.csv", "--events", "events.csv", "--json", **env))
    assert report["items"] == 7 and report["events"] == 54
    trained = json.loads(shelfwise(installed, tmp_path, "--db", "shop.db", "train", "--json", **env))
    assert "recaller/recently_viewed" in trained["versions"]

    recs = json.loads(shelfwise(installed, tmp_path, "--db", "shop.db", "recommend", "alice",
                                "--recallers", "recently_viewed,popular", "--json", **env))
    by_item = {r["item_id"]: r for r in recs}
    assert by_item["teapot"]["source"] == "recently_viewed"
    assert by_item["teapot"]["reason"] == "you added “Cast-iron teapot” to your cart 5 hours ago"
    assert "recently_viewed" in by_item["mug"]["sources"]
    assert "kettle" not in by_item        # bought
    assert "vase" not in by_item          # viewed, but out of stock
    assert "recently_viewed" not in by_item.get("lamp", {}).get("sources", [])  # 60 days ago

    only = json.loads(shelfwise(installed, tmp_path, "--db", "shop.db", "recommend", "alice",
                                "--recallers", "recently_viewed", "--json", **env))
    assert [(r["item_id"], r["reason"]) for r in only] == [
        ("teapot", "you added “Cast-iron teapot” to your cart 5 hours ago"),
        ("mug", "you viewed “Blue mug” 2 days ago"),
    ]


def test_example_test_suite_passes_when_installed(installed):
    src = installed.parent / "src"
    result = run(installed, src, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "tests")
    assert " passed" in result.stdout
