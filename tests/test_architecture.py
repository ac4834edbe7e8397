"""Layering: the engine core knows no plugin and no UI; `import engine` stays light."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_engine_loads_no_heavy_library():
    code = ("import sys, engine; heavy = [m for m in ('torch', 'textual', 'transformers', "
            "'implicit', 'hnswlib', 'plugins') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


HEAVY = ("torch", "transformers", "sentence_transformers", "textual", "fastapi", "uvicorn",
         "implicit", "hnswlib", "scipy", "sqlite_utils")


def test_the_cli_starts_without_heavy_libraries():
    """`shelfwise --help` (every plugin loaded, its commands registered) imports none of the
    libraries that cost seconds: each is imported where it is used."""
    code = ("import sys; from engine.cli import cli, load_plugin_commands; load_plugin_commands(cli); "
            "from click.testing import CliRunner; r = CliRunner().invoke(cli, ['--help']); "
            "assert r.exit_code == 0 and 'recommend' in r.output, r.output; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_import_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_pickle_loading_anywhere():
    """Stored state is loaded with safetensors, npz(allow_pickle=False) or JSON only."""
    bad = []
    for folder in ("engine", "plugins", "tui"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for needle in ("pickle.load", "torch.load(", "allow_pickle=True"):
                if needle in text:
                    bad.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not bad
