"""Plugin loading (entry points, --plugins-dir, SHELFWISE_LOAD_PLUGINS, failures) and one
test per hook: a tiny fake component registered by a plugin is seen by the engine."""

import copy
import importlib.metadata
import textwrap

import click
import pytest
from click.testing import CliRunner

import engine.cli
from engine import Event, Item, PluginError
from engine.engine import Engine
from engine.plugins import load_plugins

T0 = 1_700_000_000.0
BUILT_INS = {
    "popular": {"recallers": ["popular"]},
    "als": {"recallers": ["als"]},
    "cooccurrence": {"recallers": ["cooccurrence", "sequence"]},
    "fusion": {"rankers": ["fusion"]},
}


def write_plugin(folder, name, code):
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return path


@pytest.fixture
def plugins_dir(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    return folder


def small_shop(engine):
    records = [Item(f"i{i}", title=f"Item {i}", category="c") for i in range(6)]
    for u in range(4):
        for j in range(4):
            records.append(Event(f"u{u}", f"i{(u + j) % 6}", "view", T0 + 10 * (4 * u + j)))
    engine.store.write(records)


# -- loading --------------------------------------------------------------------------


def test_built_in_plugins_come_from_the_entry_point_group():
    names = {ep.name for ep in importlib.metadata.entry_points(group="shelfwise")}
    assert set(BUILT_INS) <= names
    registry = load_plugins()
    listed = {p["name"]: p for p in registry.plugins()}
    for name, components in BUILT_INS.items():
        entry = listed[name]
        hook = "register_" + next(iter(components))
        assert entry["hooks"] == [hook], name
        assert entry["components"] == components, name
        assert entry["version"] == importlib.metadata.version("shelfwise")
        assert registry.pm.get_plugin(name).__name__ == f"plugins.{name}"


def test_blocked_plugins_are_not_loaded():
    registry = load_plugins(blocked=("als",))
    assert "als" not in registry.components()["recallers"]
    assert "popular" in registry.components()["recallers"]


def test_unknown_hook_is_an_error_at_load_time(plugins_dir):
    write_plugin(plugins_dir, "widgets", """
        from engine import hookimpl

        @hookimpl
        def register_widgets(register):
            register(object)
    """)
    with pytest.raises(PluginError, match="register_widgets") as err:
        load_plugins(plugins_dir)
    assert "register_recallers" in str(err.value), "the message lists the known hooks"


def test_hook_with_wrong_arguments_is_a_plugin_error(plugins_dir):
    """A hookimpl whose arguments do not match the spec is the plugin's fault: the user gets
    a PluginError naming it, not a raw pluggy traceback."""
    write_plugin(plugins_dir, "badargs", """
        from engine import hookimpl

        @hookimpl
        def register_recallers(reg):
            pass
    """)
    with pytest.raises(PluginError, match="badargs"):
        load_plugins(plugins_dir)


def test_plugin_that_fails_to_import_is_reported_and_the_rest_work(plugins_dir):
    write_plugin(plugins_dir, "broken", """
        raise RuntimeError("this plugin is broken")
    """)
    write_plugin(plugins_dir, "fine", """
        from engine import Recaller, hookimpl

        class FineRecaller(Recaller):
            name = "fine"
            description = "fine"
            def fit(self, data, progress=None):
                pass
            def recall(self, queries, n):
                return [[] for _ in queries]

        @hookimpl
        def register_recallers(register):
            register(FineRecaller)
    """)
    with pytest.warns(UserWarning, match="broken"):
        registry = load_plugins(plugins_dir)
    failures = {f.name: f.error for f in registry.failures}
    assert "this plugin is broken" in failures["broken"]
    assert "RuntimeError" in failures["broken"]
    recallers = registry.components()["recallers"]
    assert {"fine", "popular", "als", "cooccurrence"} <= set(recallers)
    assert recallers["fine"][0] == "fine"


def test_load_only_the_named_plugins(monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "popular, fusion")
    registry = load_plugins()
    assert sorted(p["name"] for p in registry.plugins()) == ["fusion", "popular"]
    comps = registry.components()
    assert list(comps["recallers"]) == ["popular"] and list(comps["rankers"]) == ["fusion"]


def test_load_no_plugins_with_an_empty_list(monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "")
    registry = load_plugins()
    assert registry.plugins() == []
    assert all(not found for found in registry.components().values())


def test_naming_a_missing_plugin_raises(monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "popular,no_such_plugin")
    with pytest.raises(PluginError, match="no_such_plugin") as err:
        load_plugins()
    assert "popular" in str(err.value), "the message lists what is installed"


DUP = """
    from engine import Recaller, hookimpl

    class Dup(Recaller):
        name = "{name}"
        description = "a duplicate"
        def fit(self, data, progress=None):
            pass
        def recall(self, queries, n):
            return [[] for _ in queries]

    @hookimpl
    def register_recallers(register):
        register(Dup)
"""


def test_two_plugins_with_the_same_component_name(plugins_dir):
    write_plugin(plugins_dir, "first", DUP.format(name="twin"))
    write_plugin(plugins_dir, "second", DUP.format(name="twin"))
    registry = load_plugins(plugins_dir)
    with pytest.raises(PluginError, match="twin") as err:
        registry.components()
    assert "first" in str(err.value) and "second" in str(err.value)


def test_a_plugin_cannot_shadow_a_built_in(plugins_dir):
    write_plugin(plugins_dir, "impostor", DUP.format(name="popular"))
    with pytest.raises(PluginError, match="popular"):
        load_plugins(plugins_dir).components()


@pytest.mark.parametrize("registered", ["42", "object", "Nameless", "Wrong"])
def test_registering_a_non_component_is_an_error(plugins_dir, registered):
    write_plugin(plugins_dir, "odd", f"""
        from engine import Ranker, Recaller, hookimpl

        class Nameless(Recaller):
            def fit(self, data, progress=None):
                pass
            def recall(self, queries, n):
                return []

        class Wrong(Ranker):  # a ranker handed to register_recallers
            name = "wrong"
            def fit(self, examples, data, progress=None):
                return {{}}
            def rank(self, query, candidates):
                return list(candidates)

        @hookimpl
        def register_recallers(register):
            register({registered})
    """)
    with pytest.raises(PluginError, match="odd"):
        load_plugins(plugins_dir).components()


# -- one test per hook ----------------------------------------------------------------


def test_hook_register_sources(plugins_dir, make_engine):
    write_plugin(plugins_dir, "fakesource", """
        from engine import DataSource, Event, Item, hookimpl

        class FakeSource(DataSource):
            name = "fake"
            description = "two items and an event"
            def read(self, location, **options):
                yield Item("f1", title=options.get("title", "First"))
                yield Item("f2", title="Second")
                yield Event("someone", "f1", "view", 1_700_000_000.0)

        @hookimpl
        def register_sources(register):
            register(FakeSource)
    """)
    eng = make_engine(load_plugins(plugins_dir))
    sources = {c["name"]: c for c in eng.components()["sources"]}
    assert sources["fake"]["plugin"] == "fakesource"
    report = eng.import_data("fake", None, title="Renamed")
    assert (report.items, report.events) == (2, 1)
    assert eng.store.item("f1").title == "Renamed"


def test_hook_register_encoders(plugins_dir, make_engine):
    write_plugin(plugins_dir, "fakeencoder", """
        import numpy as np
        from engine import Encoder, hookimpl

        class LengthEncoder(Encoder):
            name = "length"
            description = "text length as a direction"
            dim = 2
            def encode(self, texts, progress=None):
                v = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
                return v / np.linalg.norm(v, axis=1, keepdims=True)

        @hookimpl
        def register_encoders(register):
            register(LengthEncoder)
    """)
    registry = load_plugins(plugins_dir)
    eng = make_engine(registry)
    encoders = {c["name"]: c for c in eng.components()["encoders"]}
    assert encoders["length"]["plugin"] == "fakeencoder"
    assert encoders["length"]["description"] == "text length as a direction"
    vectors = registry.component("encoders", "length")().encode(["a", "abc"])
    assert vectors.shape == (2, 2)


FIXED_RECALLER = """
    from engine import Recaller, hookimpl

    class FixedRecaller(Recaller):
        name = "fixed"
        description = "the catalogue in reverse id order"
        default_quota = 10
        def fit(self, data, progress=None):
            self._fitted = True
        def recall(self, queries, n):
            ids = [f"i{i}" for i in range(5, -1, -1)]
            return [self.candidates([(i, 1.0 / (r + 1), "always " + i)
                                     for r, i in enumerate(x for x in ids if x not in q.exclude)][:n])
                    for q in queries]

    @hookimpl
    def register_recallers(register):
        register(FixedRecaller)
"""


def test_hook_register_recallers(plugins_dir, make_engine, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "popular")
    write_plugin(plugins_dir, "fixedplugin", FIXED_RECALLER)
    eng = make_engine(load_plugins(plugins_dir))
    small_shop(eng)
    recallers = {c["name"]: c for c in eng.components()["recallers"]}
    assert recallers["fixed"]["plugin"] == "fixedplugin"
    assert recallers["fixed"]["default"] is True and recallers["fixed"]["trained"] is False
    report = eng.train()
    assert "recaller/fixed" in report["versions"]
    assert {c["name"]: c for c in eng.components()["recallers"]}["fixed"]["trained"]
    recs = eng.recommend("u0", n=3, recallers=["fixed"])
    assert [r.item_id for r in recs] == ["i5", "i4", "i3"]
    assert {r.source for r in recs} == {"fixed"}
    assert recs[0].reason == "always i5"


def test_hook_register_rankers(plugins_dir, make_engine, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", "")
    write_plugin(plugins_dir, "fixedplugin", FIXED_RECALLER)
    write_plugin(plugins_dir, "fakeranker", """
        from engine import Ranker, hookimpl

        class ByIdRanker(Ranker):
            name = "by_id"
            description = "alphabetical, to be recognisable"
            priority = 100
            def fit(self, examples, data, progress=None):
                self._fitted = True
                return {"ndcg@10": 0.0}
            def rank(self, query, candidates):
                ordered = sorted(candidates, key=lambda c: c.item_id)
                return [c.led_by(c.source, 1.0 / (r + 1)) for r, c in enumerate(ordered)]

        @hookimpl
        def register_rankers(register):
            register(ByIdRanker)
    """)
    eng = make_engine(load_plugins(plugins_dir))
    small_shop(eng)
    rankers = {c["name"]: c for c in eng.components()["rankers"]}
    assert rankers["by_id"]["plugin"] == "fakeranker"
    eng.train()
    recs = eng.recommend("u0", n=3)
    assert [r.item_id for r in recs] == ["i0", "i1", "i2"], "the recaller's order was i5, i4, …"
    assert {r.ranker for r in recs} == {"by_id"}


def test_hook_register_commands(monkeypatch, tmp_path):
    registry = load_plugins()

    class HelloPlugin:
        @staticmethod
        @engine.hookimpl
        def register_commands(cli):
            @cli.command()
            @click.argument("name")
            @click.pass_obj
            def hello(obj, name):
                """Say hello from a plugin."""
                counts = obj.engine().status()["counts"]
                click.echo(f"hello {name}, {counts['items']} items")

    registry.pm.register(HelloPlugin(), name="hello-plugin")
    monkeypatch.setattr(engine.cli, "_registry", registry)
    group = copy.copy(engine.cli.cli)
    group.commands = dict(engine.cli.cli.commands)
    engine.cli.load_plugin_commands(group)
    assert "hello" in group.commands and "hello" not in engine.cli.cli.commands
    assert CliRunner().invoke(group, ["--db", str(tmp_path / "x.db"), "init"]).exit_code == 0
    result = CliRunner().invoke(group, ["--db", str(tmp_path / "x.db"), "hello", "shop"])
    assert result.exit_code == 0, result.output
    assert "hello shop, 0 items" in result.output
    help_text = CliRunner().invoke(group, ["--help"]).output
    assert "Say hello from a plugin" in help_text


def test_a_component_that_fails_to_train_is_reported_and_the_rest_trains(plugins_dir, tmp_path, monkeypatch):
    """A plugin whose `fit` raises costs the shop one warning line, not the train: the other
    components train and activate, and the failing one (here in the pipeline) keeps serving
    its last good model; `--verbose` shows the traceback."""
    from . import shop

    write_plugin(plugins_dir, "flaky", """
        import os
        from engine import Recaller, hookimpl

        class FlakyRecaller(Recaller):
            name = "flaky"
            description = "fails when the shop sets FLAKY_FAIL"
            default_quota = 20

            def fit(self, data, progress=None):
                if os.environ.get("FLAKY_FAIL"):
                    raise ValueError("flaky cannot count today")
                self._fitted = True

            def recall(self, queries, n):
                return [[] for _ in queries]

        @hookimpl
        def register_recallers(register):
            register(FlakyRecaller)
    """)
    db = tmp_path / "shop.db"
    eng = Engine(db, registry=load_plugins(plugins_dir))
    eng.store.write(shop.catalogue())
    eng.store.write(shop.events(n_users=60, per_user=10))
    eng.close()
    run = ["--db", str(db), "--plugins-dir", str(plugins_dir), "train"]

    def active():
        eng = Engine(db, registry=load_plugins(plugins_dir))
        try:
            return {m["name"]: m["version"] for m in eng.store.active_artifacts()}
        finally:
            eng.close()

    assert CliRunner().invoke(engine.cli.cli, run).exit_code == 0
    before = active()
    assert "recaller/flaky" in before
    monkeypatch.setenv("FLAKY_FAIL", "1")
    failed = CliRunner().invoke(engine.cli.cli, run)
    assert failed.exit_code == 0, failed.output
    warned = [line for line in failed.output.splitlines() if "flaky failed to train" in line]
    assert len(warned) == 1 and "ValueError: flaky cannot count today" in warned[0]
    assert "its last good model keeps serving" in warned[0] and "Traceback" not in failed.output
    after = active()
    assert after["recaller/flaky"] == before["recaller/flaky"], "the failing one keeps its model"
    assert after["recaller/als"] > before["recaller/als"] and after["ranker/fusion"] > before["ranker/fusion"]
    verbose = CliRunner().invoke(engine.cli.cli, [*run, "--verbose"])
    assert verbose.exit_code == 0 and "Traceback" in verbose.output and "raise ValueError" in verbose.output
