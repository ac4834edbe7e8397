"""`engine.scaffold.new_plugin` (behind `shelfwise plugin new`) writes a package that loads
as a plugin and passes its own generated tests unchanged."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from engine import EngineError
from engine.engine import Engine
from engine.plugins import load_plugins
from engine.scaffold import KINDS, new_plugin

ROOT = Path(__file__).resolve().parent.parent


def test_new_recaller_package_has_the_entry_point_and_loads(tmp_path, monkeypatch):
    package = new_plugin("brand-picks", "recaller", tmp_path)
    assert package == tmp_path / "shelfwise-brand-picks"
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", "shelfwise_brand_picks.py", "tests/conftest.py",
        "tests/test_brand_picks.py"}
    project = tomllib.loads((package / "pyproject.toml").read_text())
    assert project["project"]["name"] == "shelfwise-brand-picks"
    assert project["project"]["entry-points"]["shelfwise"] == {"brand_picks": "shelfwise_brand_picks"}
    assert "RecallerContract" in (package / "tests" / "test_brand_picks.py").read_text()

    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "")
    eng = Engine(tmp_path / "shop.db", registry=load_plugins(package))
    try:
        recallers = {c["name"]: c for c in eng.components()["recallers"]}
        assert recallers["brand_picks"]["plugin"] == "shelfwise_brand_picks"
    finally:
        eng.close()


@pytest.mark.parametrize("kind", KINDS)
def test_generated_package_passes_its_own_tests(tmp_path, kind):
    package = new_plugin(f"my-{kind}", kind, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=package, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_unknown_kind_names_the_choices(tmp_path):
    with pytest.raises(EngineError, match="recaller, ranker, source, encoder"):
        new_plugin("x", "filter", tmp_path)


@pytest.mark.parametrize("name", ["", "Brand", "1st", "brand picks", "brand--picks", "-x"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(EngineError, match="not a usable plugin name"):
        new_plugin(name, "recaller", tmp_path)


def test_an_existing_package_is_not_overwritten(tmp_path):
    package = new_plugin("picks", "ranker", tmp_path)
    module = package / "shelfwise_picks.py"
    module.write_text("# my work\n")
    with pytest.raises(EngineError, match="already exists"):
        new_plugin("picks", "recaller", tmp_path)
    assert module.read_text() == "# my work\n"


def test_plugin_new_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from engine.cli import cli

    result = CliRunner().invoke(cli, ["plugin", "new", "brand-picks", "--kind", "ranker", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {tmp_path / 'shelfwise-brand-picks'}" in result.output
    assert (tmp_path / "shelfwise-brand-picks" / "pyproject.toml").exists()
    again = CliRunner().invoke(cli, ["plugin", "new", "brand-picks", "--kind", "ranker", "--dir", str(tmp_path)])
    assert again.exit_code != 0 and "Traceback" not in again.output
    assert not list(tmp_path.glob("*.db")), "no database made for it"


@pytest.mark.slow
def test_generated_package_installs_and_registers_through_its_entry_point(tmp_path):
    """What the package README promises: `pip install` it, and Shelfwise finds it by its
    entry point (no path tricks), and its tests pass against the installed module."""
    package = new_plugin("brand-picks", "recaller", tmp_path)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, timeout=300)
    assert (site / "shelfwise_brand_picks.py").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "test_brand_picks.py").write_text(
        (package / "tests" / "test_brand_picks.py").read_text())  # no conftest: the installed module
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    env.pop("SHELFWISE_LOAD_PLUGINS", None)
    listed = subprocess.run([sys.executable, "-c", "from engine.cli import main; main()", "plugins", "--json"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "brand_picks" in listed.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout
