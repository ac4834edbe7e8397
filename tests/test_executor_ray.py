"""The Ray executor (engine.executor, engine.snapshot) on a real local Ray cluster of 2 CPUs,
started once for this module: the same lists and metrics as the local executor, work done
in worker processes that read a snapshot (never the shop's file), the CLI's --executor, the
[executor] table, and the errors (Ray not installed, an address without Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from engine import ConfigError, EngineError
from engine.cli import cli
from engine.config import ExecutorSettings, Settings, load_settings
from engine.engine import Engine
from engine.executor import LocalExecutor, RayExecutor, make_executor
from engine.plugins import load_plugins
from engine.snapshot import ServingShared, ShopSnapshot

from . import shop
from .conftest import CORE_PLUGINS

N_USERS = 150


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # "local": a new instance of the test's own, never a cluster `ray start` left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory):
    """A trained shop (the core plugins), made once; the tests only read it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
        path = tmp_path_factory.mktemp("ray-shop") / "shop.db"
        eng = Engine(path, registry=load_plugins(), settings=Settings())
        eng.store.write(shop.catalogue())
        eng.store.write(shop.events(N_USERS))
        eng.train()
        eng.close()
    return path


@pytest.fixture
def shop_engine(shop_db):
    eng = Engine(shop_db, registry=load_plugins(), settings=Settings())
    yield eng
    eng.close()


@pytest.fixture
def on_ray(ray_cluster):
    executor = make_executor("ray")
    assert isinstance(executor, RayExecutor) and executor.workers == 2
    return executor


class Counted:
    """A shared value that says which process opened it (a `Portable` and a `Shared`)."""

    key = "counted-1"

    def here(self):
        return ("here", os.getpid())

    def shipped(self):
        return self

    def open(self):
        return ("opened", os.getpid(), uuid.uuid4().hex)  # a new value at every open


def _tag(chunk, value):
    return chunk, value, os.getpid()


def test_ray_executor_keeps_the_order_and_opens_shared_data_once_per_worker(on_ray):
    chunks = list(range(12))
    results = list(on_ray.map(_tag, chunks, Counted()))
    assert [chunk for chunk, _, _ in results] == chunks
    assert all(pid != os.getpid() for _, _, pid in results)  # worker processes, not this one
    opened = {pid: value for _, value, pid in results}
    for _, value, pid in results:  # every chunk of a worker saw the one value it opened
        assert value == opened[pid] and value[0] == "opened" and value[1] == pid
    local = list(LocalExecutor().map(_tag, chunks, Counted()))
    assert {value for _, value, _ in local} == {("here", os.getpid())}


def test_recommend_all_on_ray_equals_local(shop_engine, on_ray):
    local = list(shop_engine.recommend_all(10, batch=40))
    remote = list(shop_engine.recommend_all(10, batch=40, executor=on_ray))  # 4 batches
    assert len(local) == N_USERS and [u for u, _ in local] == sorted(u for u, _ in local)
    assert remote == local
    assert all(recs and recs[0].reason for _, recs in remote)
    # the same with the options a campaign uses
    kwargs = dict(recallers=["cooccurrence", "popular"], ranker="", category="cat1")
    assert list(shop_engine.recommend_all(5, 64, executor=on_ray, **kwargs)) == \
        list(shop_engine.recommend_all(5, 64, **kwargs))


def test_workers_read_a_snapshot_not_the_shop_file(shop_engine, on_ray):
    shared = ServingShared(shop_engine, None, None, "")
    def where(users, fitted):
        conn = fitted.engine.db.conn
        return conn.execute("PRAGMA database_list").fetchone()[2], \
            conn.execute("PRAGMA journal_mode").fetchone()[0]

    seen = set(on_ray.map(where, [["a"], ["b"], ["c"]], shared))
    assert str(shop_engine.db_path) not in {file for file, _ in seen}
    assert {journal for _, journal in seen} == {"memory"}  # an in-memory copy, not a file in WAL mode
    assert where(None, shared.here()) == (str(shop_engine.db_path), "wal")


def test_evaluate_on_ray_gives_the_local_metrics(shop_engine, on_ray):
    local = shop_engine.evaluate(k=10)
    remote = shop_engine.evaluate(k=10, executor=on_ray)
    assert remote.users == local.users > 0
    assert [r.to_dict() for r in remote.results] == [r.to_dict() for r in local.results]
    assert (remote.light_users, remote.cold_start_users) == (local.light_users, local.cold_start_users)
    assert {r.name for r in remote.results} >= {"pipeline", "als", "popular"}
    assert [r["status"] for r in shop_engine.store.runs("evaluate", 2)] == ["ok", "ok"]


def test_train_on_ray_learns_what_a_local_train_learns(tmp_path, on_ray):
    """The validation candidates are recalled on the workers (the recallers fitted at each
    cut travel as their state): the rankers learn the same, the same models serve."""
    learned = {}
    for name, executor in (("local", None), ("ray", on_ray)):
        eng = Engine(tmp_path / f"{name}.db", registry=load_plugins(), settings=Settings())
        eng.store.write(shop.catalogue())
        eng.store.write(shop.events(90))
        report = eng.train(executor=executor)
        learned[name] = (report.rankers, report.trials, report.candidate_hit_rate,
                         report.validation_moments, list(eng.recommend_all(5)))
        eng.close()
    assert learned["local"][3] > 0 and learned["local"][0]["fusion"]["examples"] > 0
    assert learned["ray"] == learned["local"]


def test_a_plugin_missing_on_a_worker_is_one_clear_error(shop_engine, on_ray):
    snap = ShopSnapshot("missing-plugin", shop_engine.db.conn.serialize(), Settings(),
                        ("popular", "no_such_plugin"))
    with pytest.raises(EngineError, match="must be installed on every machine"):
        list(on_ray.map(lambda chunk, eng: chunk, [1], _Opened(snap)))


class _Opened:
    def __init__(self, snap):
        self.snap = snap

    def here(self):
        return self.snap.open()

    def shipped(self):
        return self.snap


def run(db, *args):
    return CliRunner().invoke(cli, ["--db", str(db), *args])


def test_cli_recommend_all_and_evaluate_with_executor_ray(shop_db, ray_cluster, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
    local = run(shop_db, "recommend", "--all", "-n", "5")
    remote = run(shop_db, "recommend", "--all", "-n", "5", "--executor", "ray")
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert remote.stdout == local.stdout
    assert remote.stdout.count("\n") == 1 + 5 * N_USERS
    metrics = [run(shop_db, "evaluate", "--json", *extra) for extra in ([], ["--executor", "ray"])]
    assert all(m.exit_code == 0 for m in metrics), metrics[1].output
    import json

    first, second = (json.loads(m.stdout) for m in metrics)
    assert first["results"] == second["results"]
    assert ray_cluster.is_initialized()  # the CLI joined the test's cluster and left it running


def test_cli_train_with_executor_ray(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
    items, events = shop.write_csv(tmp_path / "csv", n_users=40)
    db = tmp_path / "t.db"
    assert run(db, "import", "csv", "--items", str(items), "--events", str(events)).exit_code == 0
    result = run(db, "train", "--executor", "ray", "--json")
    assert result.exit_code == 0, result.output
    assert run(db, "recommend", "user001").exit_code == 0


def test_catalogue_encoded_on_ray_matches_local(tmp_path, on_ray, all_plugins, monkeypatch):
    """MiniLM on the workers, 4 chunks of 16 items: the driver writes the same vectors
    (to float rounding: the batches differ) the local encoder makes."""
    import engine.indexing

    monkeypatch.setattr(engine.indexing, "ENCODE_CHUNK", 16)
    eng = Engine(tmp_path / "enc.db", registry=load_plugins(), settings=Settings())
    eng.store.write(shop.catalogue())
    report = eng.refresh_vectors(executor=on_ray)
    assert report["encoded"] == len(shop.catalogue()) == report["indexed"]
    ids, remote = eng.store.embeddings(report["encoder"])
    items = {i.item_id: i for i in eng.store.catalogue()}
    local = eng.encoder().encode_items([items[i] for i in ids])
    assert remote.shape == local.shape and np.allclose(remote, local, atol=1e-5)
    eng.close()


def test_executor_table_is_read_and_checked(tmp_path):
    path = tmp_path / "shelfwise.toml"
    path.write_text('[executor]\nkind = "ray"\naddress = "auto"\nnum_cpus = 2\n')
    assert load_settings(path=path).executor == ExecutorSettings(kind="ray", address="auto", num_cpus=2)
    assert load_settings(tmp_path / "x.db").executor.kind == "ray"  # beside the database
    for text, words in [('kind = "dask"', 'kind must be "local" (this process) or "ray"'),
                        ("num_cpus = 0", "greater than or equal to 1"),
                        ('adress = "auto"', "Extra inputs are not permitted")]:
        path.write_text(f"[executor]\n{text}\n")
        with pytest.raises(ConfigError, match="shelfwise.toml") as err:
            load_settings(path=path)
        assert words in str(err.value)


def test_command_options_win_over_the_table(shop_db, ray_cluster):
    settings = Settings(executor={"kind": "ray", "address": None})
    eng = Engine(shop_db, registry=load_plugins(), settings=settings)
    try:
        assert eng.executor().kind == "ray"
        assert eng.executor("local").kind == "local"
        with pytest.raises(EngineError, match="add --executor ray"):
            eng.executor("local", "auto")
    finally:
        eng.close()
    assert ray_cluster.is_initialized()  # an engine closes only the Ray instance it started


def test_executor_options_errors(shop_db, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
    result = run(shop_db, "recommend", "user001", "--executor", "ray")
    assert result.exit_code == 2 and "--executor and --address are for --all" in result.output
    result = run(shop_db, "recommend", "--all", "--executor", "local", "--address", "auto")
    assert result.exit_code == 1 and "is for the Ray executor" in result.output
    result = run(shop_db, "evaluate", "--executor", "spark")
    assert result.exit_code == 2 and "'local', 'ray'" in result.output


def test_without_ray_installed_the_error_says_how_to_install_it(shop_db, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
    with pytest.raises(EngineError, match=r"pip install 'shelfwise\[ray\]'"):
        make_executor("ray")
    result = run(shop_db, "recommend", "--all", "--executor", "ray")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "pip install 'shelfwise[ray]'" in result.output
    assert run(shop_db, "recommend", "--all", "-n", "2").exit_code == 0  # local needs no Ray


def test_import_engine_does_not_import_ray():
    code = ("import sys, engine, engine.engine, engine.executor, engine.cli; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
