"""The stand-alone executable dist/shelfwise (scripts/build-binary), smoke-tested as a user
without Python would run it: `env -i HOME=<fresh> PATH=/usr/bin:/bin`, from an empty folder.

Skipped unless dist/shelfwise exists, or SHELFWISE_BUILD_BINARY=1 asks to build it first
(4-7 minutes on 2 cores, plus the smoke test's 5-10). CI does neither: its suite would
grow by a quarter of an hour, and it installs only the `test` extra; run
`python benchmarks/bench_binary.py --build` instead (it also measures the start-up times).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import bench_binary

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "dist" / "shelfwise"
INSTALLED = ROOT / ".venv" / "bin" / "shelfwise"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary() -> Path:
    if os.environ.get("SHELFWISE_BUILD_BINARY") == "1":
        subprocess.run([str(ROOT / "scripts" / "build-binary")], check=True, cwd=ROOT)
    if not BINARY.exists():
        pytest.skip("dist/shelfwise not built (scripts/build-binary, or SHELFWISE_BUILD_BINARY=1)")
    return BINARY


@pytest.fixture(scope="module")
def smoke(binary, tmp_path_factory):
    work = tmp_path_factory.mktemp("binary")
    steps, db, user = bench_binary.smoke(binary, work)
    return {step["step"]: step for step in steps}, db, user, work


@pytest.mark.parametrize("step", [
    "import demo", "train", "recommend", "recommend --text", "search", "similar", "evaluate",
    "keys create", "keys list", "status", "plugins", "import csv", "import jsonl",
    "--plugins-dir plugins", "--plugins-dir import", "serve", "tui", "demo"])
def test_binary_command(smoke, step):
    """Each command works from the single file, with no Python on PATH."""
    result = smoke[0][step]
    assert result["ok"], result


def test_binary_later_starts_are_not_unpacking(smoke):
    """The second and later starts reuse the unpacked folder: `--help` costs at most about
    twice the installed command's (asserted with slack for a busy machine)."""
    _, _, _, work = smoke
    programs = {"binary": bench_binary.Runner(BINARY, work / "home-smoke", work / "starts")}
    if INSTALLED.exists():
        programs["installed"] = bench_binary.Runner(INSTALLED, work / "home-installed",
                                                    work / "starts")
    times = bench_binary.later_starts(programs, ["--help"], repeat=3)
    binary_s = min(times["binary"])
    limit = 3 * min(times["installed"]) if "installed" in times else 2.0
    assert binary_s <= limit, times
