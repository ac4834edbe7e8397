"""docs/plugins.md is the plugin author's reference, kept true by tests (as Datasette does):
every hook is documented there and exercised by a test, every public name a plugin uses is
documented, and the page's examples load as plugins and work on a small shop."""

import ast
import copy
import importlib.util
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import engine
import engine.cli
from engine import Event, Item
from engine.engine import Engine
from engine.plugins import load_plugins

from .test_docs import HOOKS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
T0 = 1_700_000_000.0

# The names of engine.__all__ a plugin author meets: base classes, what they are given,
# and the shared helpers. Engine internals (Engine, EngineThread, KeyLookup, inspect, the
# reports) are documented elsewhere.
PLUGIN_API = [
    "Component", "DataSource", "Encoder", "Recaller", "Ranker", "ModelState", "Resources",
    "NoConfig", "Dataset", "Catalogue", "Query", "Interaction", "Candidate", "CandidateSet",
    "Recalled", "RankingExample", "Anchor", "Item", "User", "Event", "Triple", "ItemEntity",
    "EVENT_KINDS", "ProgressCallback", "no_progress", "hookimpl",
    "EngineError", "ConfigError", "ImportDataError", "PluginError",
    "recent_anchors", "kind_verb", "item_text", "ndcg_at", "mention", "top_n", "banned_items",
    "item_ids", "recallers_of",
]
# what a recaller's `fit` may read from its Dataset
DATASET_API = ["catalogue", "item(", "user_attrs", "item_ids", "kind_weights", "known",
               "event_weights", "matrix", "brands", "categories", "prices", "in_stock"]


def doc_text() -> str:
    assert DOC.is_file(), "docs/plugins.md is missing"
    return DOC.read_text(encoding="utf-8")


def python_blocks() -> list[str]:
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", doc_text(), flags=re.MULTILINE | re.DOTALL)


def example(hook: str) -> str:
    """The docs' complete plugin for `hook`: the python block that implements it."""
    found = [b for b in python_blocks() if re.search(rf"^@hookimpl\s*\ndef {hook}\(", b, re.MULTILINE)]
    assert len(found) == 1, f"docs/plugins.md needs one python example implementing {hook}"
    return found[0]


def write_plugin(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


# -- the page documents the contract ---------------------------------------------------


def test_plugin_api_names_are_public():
    """The list above is the public API: a rename in engine/__init__.py must update it."""
    assert not set(PLUGIN_API) - set(engine.__all__), sorted(set(PLUGIN_API) - set(engine.__all__))


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_documented(hook):
    text = doc_text()
    headings = re.findall(r"^#{2,4} (\S.*?)\s*$", text, flags=re.MULTILINE)
    assert HOOKS[hook] in headings, f'docs/plugins.md needs a heading "### {HOOKS[hook]}"'
    example(hook)


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_exercised_by_a_test(hook):
    me = Path(__file__).resolve()
    used = [p for p in sorted(TESTS.rglob("*.py"))
            if p.resolve() != me and re.search(rf"\b{hook}\b", p.read_text(encoding="utf-8"))]
    assert used, f"no test under tests/ (besides this one) mentions {hook}"


@pytest.mark.parametrize("name", PLUGIN_API)
def test_plugin_api_is_documented(name):
    assert re.search(rf"`@?(engine\.)?{re.escape(name)}\b", doc_text()), \
        f"docs/plugins.md does not mention `{name}` (engine.{name})"


@pytest.mark.parametrize("field", DATASET_API)
def test_dataset_fields_are_documented(field):
    section = doc_text().split("### Dataset", 1)[-1].split("\n### ", 1)[0]
    assert f"`{field}" in section, f'"### Dataset" in docs/plugins.md does not mention `{field}`'


def test_every_python_block_parses():
    blocks = python_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        ast.parse(block)


# -- the examples work -----------------------------------------------------------------


@pytest.fixture
def docs_plugins(tmp_path, monkeypatch):
    """The page's examples as a --plugins-dir, and only them (plus the CSV importer)."""
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "files")
    folder = tmp_path / "docs_plugins"
    for hook in ("register_sources", "register_encoders", "register_recallers",
                 "register_rankers"):
        write_plugin(folder, "doc_" + hook.removeprefix("register_"), example(hook))
    return folder


def test_docs_examples_register(docs_plugins, make_engine):
    registry = load_plugins(docs_plugins)
    components = {kind: {c["name"]: c for c in cs}
                  for kind, cs in make_engine(registry).components().items()}
    assert components["sources"]["tsv"]["plugin"] == "doc_sources"
    assert components["encoders"]["hash"]["plugin"] == "doc_encoders"
    assert components["recallers"]["same_brand"]["plugin"] == "doc_recallers"
    assert components["rankers"]["plain_rrf"]["plugin"] == "doc_rankers"


def test_docs_source_imports_and_refuses_bad_lines(docs_plugins, make_engine, tmp_path):
    eng = make_engine(load_plugins(docs_plugins))
    good = tmp_path / "history.tsv"
    good.write_text(f"u1\tmug\tview\t{T0}\nu1\tcup\tpurchase\t{T0 + 60}\n", encoding="utf-8")
    report = eng.import_data("tsv", str(good))
    assert (report.items, report.events) == (2, 2)
    bad = tmp_path / "bad.tsv"
    bad.write_text("u1\tmug\tview\tyesterday\n", encoding="utf-8")
    with pytest.raises(engine.ImportDataError, match="not a number"):
        eng.import_data("tsv", str(bad))


def test_docs_encoder_encodes(docs_plugins):
    import numpy as np

    encoder = load_plugins(docs_plugins).component("encoders", "hash")()
    v = encoder.encode(["blue mug", "blue mug", "steel kettle"])
    assert v.shape == (3, 256) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert v[0] @ v[1] == pytest.approx(1.0) and v[0] @ v[2] < 0.5


def brand_shop(eng):
    """Two brands of four items each; every shopper views one brand's items."""
    records = [Item(f"{b}{i}", title=f"{b} item {i}", brand=brand, category="kitchen",
                    price=10.0 + i) for b, brand in (("a", "Acme"), ("z", "Zenith"))
               for i in range(4)]
    for u in range(6):
        b = "az"[u % 2]
        for j in range(3):
            records.append(Event(f"u{u}", f"{b}{(u + j) % 4}", "view", T0 + 100 * u + 10 * j))
    eng.store.write(records)


def test_docs_recaller_and_ranker_recommend_on_a_shop(tmp_path, monkeypatch, make_engine):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "")
    folder = tmp_path / "docs_plugins"
    write_plugin(folder, "doc_recallers", example("register_recallers"))
    write_plugin(folder, "doc_rankers", example("register_rankers"))
    eng = make_engine(load_plugins(folder))
    brand_shop(eng)
    report = eng.train()
    assert "recaller/same_brand" in report["versions"]
    assert {c["name"]: c for c in eng.components()["rankers"]}["plain_rrf"]["trained"]

    recs = eng.recommend("u0", n=5)      # u0 viewed a0, a1, then a2: Acme
    assert recs, "the docs' recaller recalled nothing"
    assert {r.item_id for r in recs} == {"a0", "a1", "a3"}, [r.item_id for r in recs]
    assert recs[0].source == "same_brand" and recs[0].ranker == "plain_rrf"
    assert recs[0].reason.startswith("more from Acme: you viewed ")

    # the state round trip: a fresh engine serves from what train saved
    again = make_engine(load_plugins(folder))
    # u1 viewed z1, z2, then z3: the other Zenith items, never the one just viewed
    assert {r.item_id for r in again.recommend("u1", n=5)} == {"z0", "z1", "z2"}


def test_docs_command_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "")
    folder = tmp_path / "docs_plugins"
    write_plugin(folder, "doc_recallers", example("register_recallers"))
    registry = load_plugins(folder)
    path = write_plugin(tmp_path / "installed", "doc_commands", example("register_commands"))
    spec = importlib.util.spec_from_file_location("doc_commands", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry.pm.register(module, name="doc-commands")   # as an installed plugin is
    db = tmp_path / "shop.db"
    eng = Engine(db, registry=registry)
    brand_shop(eng)
    eng.train()
    eng.close()

    monkeypatch.setattr(engine.cli, "_registry", registry)
    group = copy.copy(engine.cli.cli)
    group.commands = dict(engine.cli.cli.commands)
    engine.cli.load_plugin_commands(group)
    result = CliRunner().invoke(group, ["--db", str(db), "brand-picks", "u0", "-n", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3 and all(line.startswith("a") for line in lines), result.output
    assert lines[0].split("\t")[1] == "more from Acme: you viewed “a item 2”", result.output
