"""The terminal UI: engine.inspect's read-only analyses, every screen driven with Textual's
pilot on a small trained shop, snapshots at 80x24 (and the Users screen at 160x48), and
the real `shelfwise tui` command in tmux.

The shop: tests/shop.py's three taste groups, users with attributes, a small knowledge
graph, trained with the collaborative plugins plus BM25 search, and two evaluation runs
(the default pipeline, then popular + co-occurrence only). Timestamps of models and runs
are pinned so the snapshots never show a clock."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import Recaller, hookimpl, inspect
from engine.config import Settings
from engine.engine import Engine
from engine.plugins import load_plugins
from engine.types import ItemEntity, Triple, User
from textual.widgets import DataTable, Input, OptionList, Select, SelectionList, Static
from textual.worker import WorkerCancelled
from tui.app import ShelfwiseApp

from . import shop
from .conftest import CORE_PLUGINS

pytestmark = pytest.mark.anyio  # the pilot tests are coroutines

PLUGINS = CORE_PLUGINS + ",search,tui"  # tui: the `shelfwise tui` command (tmux test)
N_USERS = 90
PINNED = shop.T0 + 40 * shop.DAY  # "now" for models and runs in the snapshots


# -- the shop ------------------------------------------------------------------------------

def users() -> list[User]:
    segments = ("coffee lover", "runner", "home cook")
    return [User(f"user{u:03d}", {"country": ("DK", "FR", "DE")[u // 3 % 3],
                                  "segment": segments[u % 3]}) for u in range(N_USERS)]


def graph() -> list:
    """Items 1-3 of group 0 share a brand entity; item 1 and 4 share a designer."""
    links = [ItemEntity(shop.item_id(0, i), f"e:{i}") for i in range(1, 5)]
    triples = [Triple(f"e:{i}", "product.product.brand", "brand:acme") for i in (1, 2, 3)]
    triples += [Triple(f"e:{i}", "product.designed_by", "person:ada") for i in (1, 4)]
    return links + triples


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        for var in ("SHELFWISE_CONFIG", "SHELFWISE_DB"):
            mp.delenv(var, raising=False)
        mp.setenv("SHELFWISE_HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("SHELFWISE_LOAD_PLUGINS", PLUGINS)
        path = tmp_path_factory.mktemp("tui") / "shop.db"
        eng = Engine(path, registry=load_plugins(), settings=Settings())
        eng.store.write(shop.catalogue() + users() + shop.events(N_USERS) + graph())
        eng.train()
        eng.evaluate(10)
        eng.evaluate(10, recallers=["popular", "cooccurrence"])
        with eng.db.atomic():
            eng.store.conn.execute("UPDATE artifacts SET created_at = ?", [PINNED])
            eng.store.conn.execute("UPDATE runs SET started_at = ? + id * 60, "
                                   "finished_at = ? + id * 60 + 30", [PINNED, PINNED])
            eng.store.conn.execute("UPDATE runs SET metrics = json_set(metrics, '$.total_seconds', 2.0) "
                                   "WHERE kind = 'train'")
        eng.close()
    return path


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def shop_env(monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", PLUGINS)


@pytest.fixture
def engine(shop_db, shop_env):
    eng = Engine(shop_db, registry=load_plugins())
    yield eng
    eng.close()


def copy_db(src: Path, dest: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dest) as b:
        a.backup(b)
    return dest


async def settle(pilot, rounds: int = 3) -> None:
    """Wait until every worker has finished and its results are on screen."""
    clean = 0
    for _ in range(100):
        try:
            await pilot.app.workers.wait_for_complete()
        except WorkerCancelled:  # replaced by a newer request of the same group
            clean = 0
            continue
        await pilot.pause()
        clean = clean + 1 if not any(w.is_running for w in pilot.app.workers) else 0
        if clean >= rounds:
            break
    for _ in range(4):  # tables re-measure their columns on a later refresh (slower when busy)
        await pilot.pause(0.05)


def rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def text(widget: Static) -> str:
    return str(widget.render())


# -- engine.inspect ------------------------------------------------------------------------

def test_find_users_by_id_and_attribute(engine):
    found = inspect.find_users(engine, "runner")
    assert found and all(u["attrs"]["segment"] == "runner" for u in found)
    assert inspect.find_users(engine, "user007")[0]["user_id"] == "user007"
    busiest = inspect.find_users(engine, "", limit=3)
    assert [u["events"] for u in busiest] == sorted((u["events"] for u in busiest), reverse=True)


def test_user_profile_is_newest_first(engine):
    profile = inspect.user_profile(engine, "user010")
    ts = [h["ts"] for h in profile["history"]]
    assert ts == sorted(ts, reverse=True)
    assert profile["events"] == sum(profile["events_by_kind"].values()) == len(ts)
    ghost = [h for h in profile["history"] if h["item_id"] == shop.NOT_IN_CATALOGUE]
    assert ghost and not ghost[0]["in_catalogue"]  # user010 bought the ghost item


def test_why_not_a_recommended_item(engine):
    recs = engine.recommend("user004", 5)
    report = inspect.why_not(engine, "user004", recs[2].item_id, n=5)
    assert report["verdict"] == "recommended" and report["position"] == 3
    assert report["ranker"] == recs[0].ranker
    assert {e["recaller"] for e in report["recallers"] if e["within_quota"]} == set(recs[2].sources)


def test_why_not_agrees_with_the_list_after_the_re_rank(engine, monkeypatch):
    """With the diversity rule reordering the ranker's list, why-not reports the positions
    the user sees, and an item the rule pushed out says so."""
    monkeypatch.setattr(engine.settings.pipeline, "diversity", 1.0)
    engine.recommendation_cache.clear()
    shown = [r.item_id for r in engine.recommend("user004", 5)]
    pipe, query = engine.pipeline(), engine.query_for("user004")
    ranked = [c.item_id for c in pipe.ranker.rank(query, pipe.candidates([query])[0])]
    assert shown != ranked[:5], "the rule must change this user's list for the test to mean anything"
    for position, item in enumerate(shown, start=1):
        report = inspect.why_not(engine, "user004", item, n=5)
        assert (report["verdict"], report["position"]) == ("recommended", position)
    pushed = next(i for i in ranked[:5] if i not in shown)
    report = inspect.why_not(engine, "user004", pushed, n=5)
    assert report["verdict"] == "ranked low" and "moved it below the top 5" in report["summary"]
    engine.recommendation_cache.clear()


def test_why_not_a_bought_item_is_filtered(engine):
    bought = sorted(engine.store.consumed("user004", ["purchase"]))[0]
    report = inspect.why_not(engine, "user004", bought)
    assert report["verdict"] in ("filtered", "not recalled")
    assert any("already consumed" in f for f in report["filters"])
    assert report["position"] is None


def test_why_not_out_of_stock(engine):
    report = inspect.why_not(engine, "user003", shop.OUT_OF_STOCK)
    assert "out of stock" in report["filters"]
    assert report["position"] is None


def test_why_not_ranked_low_and_not_recalled(engine):
    recs = engine.recommend("user005", 40, recallers=["popular"], ranker="")
    low = recs[-1].item_id  # recalled by popular, but far below the top 3
    report = inspect.why_not(engine, "user005", low, n=3, recallers=["popular"], ranker="")
    assert report["verdict"] == "ranked low" and report["position"] == 40
    assert "below the top 3" in report["summary"]
    shown = {r.item_id for r in engine.recommend("user005", 200, recallers=["cooccurrence"])}
    missing = next(it.item_id for it in shop.catalogue()
                   if it.item_id not in shown and it.in_stock
                   and it.item_id not in engine.store.consumed("user005", ["purchase", "rating"]))
    report = inspect.why_not(engine, "user005", missing, recallers=["cooccurrence"])
    assert report["verdict"] in ("not recalled", "filtered")
    assert report["summary"]


def test_why_not_an_unknown_item(engine):
    with pytest.raises(Exception, match="Unknown item 'nope'"):
        inspect.why_not(engine, "user001", "nope")
    with pytest.raises(Exception, match="No item has the id 'zzz'"):
        inspect.resolve_item(engine, "zzz")
    assert inspect.resolve_item(engine, "Item 3 of group 1") == "g1-i03"


def test_recommend_without_ranker_is_the_merged_order(engine):
    plain = inspect.recommend(engine, "user001", 10, ranker="")
    assert all(r.ranker == "" for r in plain)
    assert [r.item_id for r in inspect.recommend(engine, "user001", 10)] == \
        [r.item_id for r in engine.recommend("user001", 10)]


def test_kg_neighbours_name_relations(engine):
    found = inspect.kg_neighbours(engine, "g0-i01")
    by_name = {n["name"]: n for n in found}
    assert by_name["brand"]["node"] == "brand:acme" and by_name["brand"]["shared"] == 2
    assert {e["item_id"] for e in by_name["brand"]["examples"]} == {"g0-i02", "g0-i03"}
    assert by_name["designed by"]["shared"] == 1
    assert inspect.kg_neighbours(engine, "g2-i05") == []
    assert [n["name"] for n in found] == ["designed by", "brand"]  # the more specific first
    # the same words as the kg recaller's reasons
    assert inspect.readable_relation("film.film.directed_by") == "director"
    assert inspect.readable_relation("film.director.film") == "director"


def test_events_over_time_and_long_tail_add_up(engine):
    counts = engine.store.counts()
    timeline = inspect.events_over_time(engine, 12)
    assert {k: sum(v) for k, v in timeline["kinds"].items()} == counts["events_by_kind"]
    assert all(len(v) == 12 for v in timeline["kinds"].values())
    tail = inspect.long_tail(engine)
    on_catalogue = engine.store.conn.execute(
        "SELECT count(*) FROM events WHERE item_id IN (SELECT item_id FROM items)").fetchone()[0]
    assert sum(tail["counts"]) == on_catalogue and tail["items"] == counts["items"]
    assert tail["counts"] == sorted(tail["counts"], reverse=True)
    assert 0 < tail["top10_share"] <= tail["top20_share"] <= 1


def test_compare_runs(engine):
    runs = inspect.evaluation_runs(engine)
    assert [r["recallers"] for r in runs][:2] == [["cooccurrence", "popular"],
                                                  ["als", "cooccurrence", "popular", "search", "sequence"]]
    new, old = runs[0]["id"], runs[1]["id"]
    report = inspect.compare_runs(engine, old, new)
    rows = {(r["name"], r["metric"]): r for r in report["rows"]}
    stored = engine.store.run(new)["metrics"]["results"]
    pipe = next(r for r in stored if r["kind"] == "pipeline")
    assert rows[("pipeline (fusion)", "ndcg")]["b"] == pipe["metrics"]["ndcg@10"]
    for r in report["rows"]:
        if r["delta"] is not None:
            assert r["delta"] == pytest.approx(r["b"] - r["a"])
    assert rows[("als", "ndcg")]["b"] is None and rows[("als", "ndcg")]["delta"] is None
    with pytest.raises(Exception, match="no evaluation run 999"):
        inspect.compare_runs(engine, old, 999)


# -- screens, with the pilot -----------------------------------------------------------------

def make_app(engine, mode: str = "users") -> ShelfwiseApp:
    return ShelfwiseApp(engine, mode=mode)


async def open_user(pilot, query: str) -> None:
    await settle(pilot)
    await pilot.click("#user-query")
    for ch in query:
        await pilot.press(ch)
    await settle(pilot)
    await pilot.press("enter")  # opens the best match
    await settle(pilot)


async def test_users_screen_shows_history_and_recommendations(engine):
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_user(pilot, "user007")
        screen = app.screen
        assert "user007" in text(screen.query_one("#user-header", Static))
        recs = rows(screen.query_one("#recs", DataTable))
        expected = engine.recommend("user007", 10)
        assert [r[5] for r in recs] == [r.item_id for r in expected]
        assert [r[4] for r in recs] == [r.reason for r in expected]
        assert [r[2] for r in recs] == [r.source for r in expected]
        detail = text(screen.query_one("#rec-detail", Static))
        assert expected[0].reason in detail and ", ".join(expected[0].sources) in detail
        history = rows(screen.query_one("#history", DataTable))
        assert [h[2] for h in history] == [h.item_id for h in reversed(engine.store.history("user007"))]


async def test_users_screen_finds_by_attribute(engine):
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_user(pilot, "home cook")
        options = app.screen.query_one("#user-list", OptionList)
        assert options.option_count == len(inspect.find_users(engine, "home cook"))
        assert app.screen.user_id == inspect.find_users(engine, "home cook")[0]["user_id"]


async def test_users_screen_toggles_and_n_change_the_list_live(engine):
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_user(pilot, "user011")
        screen = app.screen
        table = screen.query_one("#recs", DataTable)
        screen.query_one("#recs").focus()
        await pilot.press("+", "+")
        await settle(pilot)
        assert table.row_count == 12
        await pilot.press("-")
        await settle(pilot)
        assert [r[5] for r in rows(table)] == [r.item_id for r in engine.recommend("user011", 11)]

        await pilot.press("r")  # ranker off: the merged order
        await settle(pilot)
        plain = inspect.recommend(engine, "user011", 11, ranker="")
        assert [r[5] for r in rows(table)] == [r.item_id for r in plain]
        assert "merged score" in text(screen.query_one("#rec-detail", Static))
        await pilot.press("r")  # and back on
        await settle(pilot)
        assert [r[5] for r in rows(table)] == [r.item_id for r in engine.recommend("user011", 11)]

        recallers = screen.query_one("#recallers", SelectionList)
        recallers.deselect("als")
        recallers.deselect("search")
        recallers.deselect("sequence")
        await settle(pilot)
        chosen = sorted(recallers.selected)
        assert chosen == ["cooccurrence", "popular"]
        expected = engine.recommend("user011", 11, recallers=chosen)
        assert [r[5] for r in rows(table)] == [r.item_id for r in expected]
        assert {r[2] for r in rows(table)} <= set(chosen)

        recallers.deselect_all()
        await settle(pilot)
        assert table.row_count == 0
        assert "Every recaller is off" in text(screen.query_one("#rec-detail", Static))


async def test_users_screen_why_not(engine):
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_user(pilot, "user004")
        screen = app.screen
        screen.query_one("#recs").focus()
        await pilot.press("w")
        assert screen.focused is screen.query_one("#why-item", Input)
        for ch in shop.OUT_OF_STOCK:
            await pilot.press(ch)
        await pilot.press("enter")
        await settle(pilot)
        summary = text(screen.query_one("#why-summary", Static))
        report = inspect.why_not(engine, "user004", shop.OUT_OF_STOCK)
        assert report["verdict"] in summary and "out of stock" in summary
        assert rows(screen.query_one("#why-table", DataTable))[0][0] == report["recallers"][0]["recaller"]

        # Enter on a recommendation explains it
        screen.query_one("#user-tabs").active = "tab-recs"
        await pilot.pause()
        screen.query_one("#recs").focus()
        await pilot.press("down", "enter")
        await settle(pilot)
        second = engine.recommend("user004", 10)[1]
        assert f"{second.item_id}" in text(screen.query_one("#why-summary", Static))
        assert "recommended" in text(screen.query_one("#why-summary", Static))


async def test_errors_are_notifications(engine):
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_user(pilot, "user001")
        screen = app.screen
        await pilot.press("w")
        for ch in "no-such-thing":
            await pilot.press(ch)
        await pilot.press("enter")
        await settle(pilot)
        notes = list(app._notifications)
        assert notes and notes[-1].severity == "error"
        assert "No item has the id 'no-such-thing'" in notes[-1].message
        assert screen.is_attached  # still running, no traceback


async def test_items_screen(engine):
    app = make_app(engine, "items")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.click("#item-query")
        for ch in "Item 1 of group 0":
            await pilot.press(ch)
        await settle(pilot)
        options = app.screen.query_one("#item-list", OptionList)
        assert options.option_count == 1 and options.get_option_at_index(0).id == "g0-i01"
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        header = text(screen.query_one("#item-header", Static))
        assert "Item 1 of group 0" in header and "cat0" in header
        similar = rows(screen.query_one("#similar", DataTable))
        expected = engine.similar("g0-i01", 10)
        assert [r[5] for r in similar] == [r.item_id for r in expected]
        assert [r[2] for r in similar] == [", ".join(r.sources) for r in expected]
        graph = rows(screen.query_one("#graph", DataTable))
        assert [g[:3] for g in graph] == [["designed by", "person:ada", "1"], ["brand", "brand:acme", "2"]]
        assert "Item 2 of group 0" in graph[1][3] and "Item 4 of group 0" in graph[0][3]
        who = rows(screen.query_one("#who", DataTable))
        assert [w[1] for w in who] == [e["user_id"] for e in engine.store.item_events("g0-i01", 50)]

        screen.query_one("#similar").focus()
        await pilot.press("enter")  # open the first similar item
        await settle(pilot)
        assert screen.item_id == expected[0].item_id


async def test_search_screen(engine):
    app = make_app(engine, "search")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for ch in "group 2":
            await pilot.press(ch)
        await pilot.press("enter")
        await settle(pilot)
        results = rows(app.screen.query_one("#search-results", DataTable))
        expected = engine.search("group 2", 20)
        assert results and [r[7] for r in results] == [r.item_id for r in expected]
        assert [r[2] for r in results] == [f"{r.score:.4f}" for r in expected]
        assert "20 results" in text(app.screen.query_one("#search-status", Static))


async def test_overview_screen(engine):
    app = make_app(engine, "overview")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        counts = engine.store.counts()
        shown = text(app.screen.query_one("#counts", Static))
        assert f"{counts['events']:,}" in shown and f"{counts['users']:,}" in shown
        for kind, n in counts["events_by_kind"].items():
            assert kind in shown and f"{n:,}" in shown
        models = rows(app.screen.query_one("#models", DataTable))
        assert [m[0] for m in models] == [a["name"] for a in engine.store.active_artifacts()]
        last = engine.store.runs("evaluate", 1)[0]
        pipe = next(r for r in last["metrics"]["results"] if r["kind"] == "pipeline")
        assert f"{pipe['metrics']['ndcg@10']:.4f}" in text(app.screen.query_one("#last-eval", Static))
        assert "no recommendations served over HTTP yet" in text(app.screen.query_one("#last-eval", Static))


async def test_overview_shows_what_served_recommendations_did(shop_db, shop_env, tmp_path):
    """Impressions logged by the HTTP server appear on the Overview with the report's rates."""
    eng = Engine(copy_db(shop_db, tmp_path / "served.db"), registry=load_plugins())
    eng.log_impressions(eng.recommend("user001", 5), "user001", "home")
    assert eng.report("7d")["overall"]["impressions"] == 5
    app = make_app(eng, "overview")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        shown = text(app.screen.query_one("#last-eval", Static))
        assert "Online (7 days): 5 impressions" in shown and "CTR 0.0%" in shown
    eng.close()


async def test_evaluation_screen_compares_two_runs(engine):
    app = make_app(engine, "evaluation")
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        runs = inspect.evaluation_runs(engine)
        table = screen.query_one("#runs", DataTable)
        assert [r[0] for r in rows(table)] == [str(r["id"]) for r in runs]
        metrics = rows(screen.query_one("#metrics", DataTable))
        latest = inspect.run_metrics(engine, runs[0]["id"])
        assert [m[0] for m in metrics] == [r["name"] for r in latest["rows"]]
        # the newest run is B and the one before A, already compared
        compare = rows(screen.query_one("#compare", DataTable))
        report = inspect.compare_runs(engine, runs[1]["id"], runs[0]["id"])
        expected = {(r["name"], r["metric"]): r for r in report["rows"]}
        for name, metric, a, b, delta in compare:
            row = expected[(name, metric)]
            assert a == (f"{row['a']:.4f}" if row["a"] is not None else "—")
            assert (row["delta"] is None) == (delta == "—")
        # pick them the other way round with a / b
        table.focus()
        await pilot.press("a")             # cursor on the newest run
        await pilot.press("down", "b")
        await settle(pilot)
        assert screen.marked == {"a": runs[0]["id"], "b": runs[1]["id"]}
        assert f"A = run {runs[0]['id']}, B = run {runs[1]['id']}" in text(
            screen.query_one("#compare-header", Static))


async def test_evaluate_from_the_evaluation_screen(shop_db, shop_env, tmp_path):
    eng = Engine(copy_db(shop_db, tmp_path / "eval.db"), registry=load_plugins())
    before = inspect.evaluation_runs(eng)
    app = make_app(eng, "evaluation")
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot, rounds=6)
        screen = app.screen
        after = inspect.evaluation_runs(eng)
        assert len(after) == len(before) + 1 and after[0]["status"] == "ok"
        assert [r[0] for r in rows(screen.query_one("#runs", DataTable))] == [str(r["id"]) for r in after]
        stages = [r[0] for r in rows(screen.query_one("#job-stages", DataTable))]
        assert stages[-1] == "score"
        # the new run is compared with the one that was newest before
        assert screen.marked == {"a": before[0]["id"], "b": after[0]["id"]}
        header = text(screen.query_one("#compare-header", Static))
        assert f"A = run {before[0]['id']}, B = run {after[0]['id']}" in header
    eng.close()


async def test_screens_link_users_and_items(engine):
    app = make_app(engine, "items")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.screen.open_item("g1-i02")
        await settle(pilot)
        who = app.screen.query_one("#who", DataTable)
        app.screen.query_one("#item-tabs").active = "tab-who"
        await pilot.pause()
        who.focus()
        first_user = rows(who)[0][1]
        await pilot.press("enter")  # Who -> the Users screen
        await settle(pilot, rounds=5)
        assert app.current_mode == "users" and app.screen.user_id == first_user
        recs = rows(app.screen.query_one("#recs", DataTable))
        assert [r[5] for r in recs] == [r.item_id for r in engine.recommend(first_user, 10)]
        app.screen.query_one("#user-tabs").active = "tab-history"
        await pilot.pause()
        history = app.screen.query_one("#history", DataTable)
        history.focus()
        item = rows(history)[0][2]
        await pilot.press("enter")  # History -> the Items screen
        await settle(pilot, rounds=5)
        assert app.current_mode == "items" and app.screen.item_id == item


async def test_plugins_screen_lists_plugins_and_failures(shop_db, shop_env, tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('needs libfoo 2')\n")
    eng = Engine(shop_db, registry=load_plugins(tmp_path))
    app = make_app(eng, "plugins")
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        plugins = rows(app.screen.query_one("#plugins", DataTable))
        assert [p[0] for p in plugins] == [p["name"] for p in eng.plugins()["plugins"]]
        assert any(p[0] == "als" and "recaller als" in p[3] for p in plugins)
        failures = text(app.screen.query_one("#failures", Static))
        assert "broken failed to load" in failures and "needs libfoo 2" in failures
        comps = rows(app.screen.query_one("#components", DataTable))
        assert ["recaller", "als", "als"] == comps[[c[1] for c in comps].index("als")][:3]
    eng.close()


# -- merchandising rules ----------------------------------------------------------------------

@pytest.fixture
def rules_engine(shop_db, shop_env, tmp_path):
    # diversity off: the test reads a boost's move in the ranker's order
    eng = Engine(copy_db(shop_db, tmp_path / "rules.db"), registry=load_plugins(),
                 settings=Settings(pipeline={"diversity": 0}))
    yield eng
    eng.close()


async def type_into(pilot, selector: str, value: str) -> None:
    await pilot.click(selector)
    for ch in value:
        await pilot.press({" ": "space"}.get(ch, ch))


async def test_rules_screen_adds_lists_and_removes_rules(rules_engine):
    eng = rules_engine
    first = eng.recommend("user004", 10)
    app = make_app(eng, "users")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f8")  # the app's key for the Rules screen
        await settle(pilot)
        screen = app.screen
        assert screen.mode == "rules" and "No rules yet" in text(screen.query_one("#rules-header", Static))
        screen.query_one("#rule-kind", Select).value = "boost"
        await settle(pilot)
        assert screen.query_one("#rule-item", Input).disabled, "a boost takes no item"
        await type_into(pilot, "#rule-where", f'item_id = "{first[6].item_id}"')
        await type_into(pilot, "#rule-weight", "3")
        await pilot.press("enter")
        await settle(pilot)
        assert rows(screen.query_one("#rules", DataTable)) == [
            ["1", "boost", "active", f'item_id = "{first[6].item_id}" by 3', "all", ""]]
        assert [r.item_id for r in eng.recommend("user004", 10)].index(first[6].item_id) == 3
        assert "Rule 1: boost" in text(screen.query_one("#rule-detail", Static))

        screen.query_one("#rule-kind", Select).value = "pin"  # a pin of an out-of-stock product
        await settle(pilot)
        await type_into(pilot, "#rule-item", shop.OUT_OF_STOCK)
        await type_into(pilot, "#rule-position", "1")
        await type_into(pilot, "#rule-until", "2099-12-31")
        await pilot.press("enter")
        await settle(pilot)
        table = screen.query_one("#rules", DataTable)
        assert rows(table)[1] == ["2", "pin", "not shown", f"{shop.OUT_OF_STOCK} at 1", "all", "2099-12-31"]
        assert "the item is out of stock" in text(screen.query_one("#rule-detail", Static))
        notes = list(app._notifications)
        assert "Rule 2 added" in notes[-1].message and notes[-1].severity == "warning"

        screen.query_one("#rule-kind", Select).value = "filter"  # a condition it cannot read
        await settle(pilot)
        await type_into(pilot, "#rule-where", "price >> 3")
        await pilot.press("enter")
        await settle(pilot)
        error = text(screen.query_one("#rule-error", Static))
        assert "Invalid condition at position 8: expected a number after 'price >'" in error
        assert list(app._notifications)[-1].severity == "error" and len(eng.rules()) == 2

        table.focus()
        table.move_cursor(row=0)
        await pilot.press("delete")
        await settle(pilot)
        assert [r[0] for r in rows(table)] == ["2"] and [r.id for r in eng.rules()] == [2]
        assert [r.item_id for r in eng.recommend("user004", 10)] == [r.item_id for r in first]


async def test_users_screen_says_which_rule_placed_a_recommendation(rules_engine):
    eng = rules_engine
    target = eng.recommend("user004", 20)[15].item_id
    rule = eng.add_rule("pin", target, position=1)
    app = make_app(eng)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_user(pilot, "user004")
        recs = rows(app.screen.query_one("#recs", DataTable))
        assert recs[0][5] == target
        assert f"rules: pinned by rule {rule.id}" in text(app.screen.query_one("#rec-detail", Static))


# -- training from the UI ---------------------------------------------------------------------

class Gate:
    """A recaller whose fit waits for the test (reporting progress meanwhile), so a
    cancel lands while training is certainly running."""

    opened = threading.Event()
    started = threading.Event()

    class GateRecaller(Recaller):
        name = "gate"
        description = "waits for the test"
        default_quota = 0

        def fit(self, data, progress=None):
            Gate.started.set()
            deadline = time.monotonic() + 30
            while not Gate.opened.wait(0.02) and time.monotonic() < deadline:
                progress("gate", 0, 1, "waiting")
            self._fitted = True

        def recall(self, queries, n):
            return [[] for _ in queries]

        def is_fitted(self):
            return getattr(self, "_fitted", False)

    @staticmethod
    @hookimpl
    def register_recallers(register):
        register(Gate.GateRecaller)


@pytest.fixture
def gated(shop_db, shop_env, tmp_path):
    Gate.opened.clear()
    Gate.started.clear()
    registry = load_plugins()
    registry.pm.register(Gate, name="tui-test-gate")
    eng = Engine(copy_db(shop_db, tmp_path / "train.db"), registry=registry)
    yield eng
    Gate.opened.set()
    eng.close()


def active_versions(eng) -> dict[str, int]:
    return {a["name"]: a["version"] for a in eng.store.active_artifacts()}


async def test_train_cancel_keeps_the_active_models(gated):
    before = active_versions(gated)
    recs_before = [r.item_id for r in gated.recommend("user002", 10)]
    app = make_app(gated, "train")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        for _ in range(300):  # until the gate recaller is fitting
            await pilot.pause(0.02)
            if Gate.started.is_set():
                break
        assert Gate.started.is_set()
        await pilot.pause(0.1)
        stages = [r[0] for r in rows(app.screen.query_one("#job-stages", DataTable))]
        assert "fit fusion" in stages or "validate als" in stages
        await pilot.press("c")
        await settle(pilot)
        assert "Cancelled" in text(app.screen.query_one("#job-status", Static))
        notes = [n.message for n in app._notifications]
        assert any("active models are unchanged" in m for m in notes)
    fresh = Engine(gated.db_path, registry=gated.registry)
    assert active_versions(fresh) == before
    assert "recaller/gate" not in active_versions(fresh)
    run = fresh.store.runs("train", 1)[0]
    assert run["status"] == "failed" and "cancelled by the user" in run["note"]
    assert [r.item_id for r in fresh.recommend("user002", 10)] == recs_before
    fresh.close()


async def test_train_completes_and_activates_new_models(gated):
    before = active_versions(gated)
    Gate.opened.set()
    app = make_app(gated, "train")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot, rounds=5)
        assert "Done." in text(app.screen.query_one("#job-status", Static))
        models = rows(app.screen.query_one("#train-models", DataTable))
        after = active_versions(gated)
        assert {m[0]: int(m[1]) for m in models} == after
        assert all(after[name] == v + 1 for name, v in before.items())
        assert "recaller/gate" in after
        stages = [r[0] for r in rows(app.screen.query_one("#job-stages", DataTable))]
        assert stages[-1] == "save" and "fit als" in stages
        # the other screens now read the new models
        await pilot.press("f2")
        await open_user(pilot, "user002")
        shown = [r[5] for r in rows(app.screen.query_one("#recs", DataTable))]
        assert shown == [r.item_id for r in gated.recommend("user002", 10)]


# -- snapshots -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def snap_db(shop_db, tmp_path_factory) -> Path:
    """The shop with fixed evaluation metrics: evaluating is not bit-for-bit repeatable
    (threaded ALS), and a snapshot must not depend on it. The pilot tests above check the
    real numbers; the snapshots check the layout."""
    path = copy_db(shop_db, tmp_path_factory.mktemp("snap") / "shop.db")
    conn = sqlite3.connect(path)
    for run_id, raw in conn.execute("SELECT id, metrics FROM runs WHERE kind = 'evaluate'").fetchall():
        metrics = json.loads(raw)
        for j, result in enumerate(metrics["results"]):
            for slice_ in ("metrics", "cold_start"):
                for key in result.get(slice_, {}):
                    if "@" in key:
                        result[slice_][key] = round(0.05 + 0.04 * j + 0.01 * run_id, 4)
        conn.execute("UPDATE runs SET metrics = ? WHERE id = ?", [json.dumps(metrics), run_id])
    conn.commit()
    conn.close()
    return path


def snapshot_app(db: Path, mode: str) -> ShelfwiseApp:
    # diversity off: the pictures show the ranker's lists
    return ShelfwiseApp(Engine(db, registry=load_plugins(), settings=Settings(pipeline={"diversity": 0})),
                        mode=mode)


async def _settle_then(pilot, keys=()):
    await settle(pilot)
    for key in keys:
        await pilot.press(key)
        await settle(pilot)
    await _until_still(pilot)


async def _until_still(pilot, still: int = 3) -> None:
    """Wait until the screen stops changing: the same picture `still` times in a row, 0.1 s
    apart. On a loaded machine a table may re-measure its columns, or a chart redraw,
    after the workers are done; the snapshot must show the screen as it stays."""
    last, same = None, 0
    for _ in range(100):
        await pilot.pause(0.1)
        picture = pilot.app.export_screenshot()
        same = same + 1 if picture == last else 0
        last = picture
        if same >= still:
            return
    raise AssertionError("the screen kept changing for 10 s")


def _typed(text_: str) -> list[str]:
    return [{" ": "space"}.get(c, c) for c in text_]


SNAPSHOTS = {
    "users": _typed("user004") + ["enter"],
    "items": _typed("Item 1 of group 0") + ["enter"],
    "search": _typed("group 1") + ["enter"],
    "overview": [],
    "evaluation": [],
    "train": [],
    "plugins": [],
}


@pytest.mark.parametrize("mode", list(SNAPSHOTS))
def test_snapshot_80x24(snap_compare, snap_db, shop_env, mode):
    """Each screen at 80x24 on the pinned shop. Users: user004's recommendations with
    source and score and the first one's reason below; Items: item 1 of group 0 with its
    similar items; Search: "group 1" results with scores; Overview: counts, models and
    both plots; Evaluation: the two runs, the newest one's metrics; Train: idle, the
    active models; Plugins: the loaded plugins and components."""
    keys = SNAPSHOTS[mode]  # the query box has the focus when a screen opens
    assert snap_compare(snapshot_app(snap_db, mode), terminal_size=(80, 24),
                        run_before=lambda pilot: _settle_then(pilot, keys))


def test_snapshot_users_160x48(snap_compare, snap_db, shop_env):
    """The Users screen on a large terminal: every column of the recommendations (title,
    source, score, reason, item) and the history tab label visible."""
    keys = SNAPSHOTS["users"]
    assert snap_compare(snapshot_app(snap_db, "users"), terminal_size=(160, 48),
                        run_before=lambda pilot: _settle_then(pilot, keys))


def test_snapshot_users_light_theme(snap_compare, snap_db, shop_env):
    """The Users screen in the light theme (Ctrl+T) reads as well as the dark one."""
    keys = SNAPSHOTS["users"] + ["ctrl+t"]
    assert snap_compare(snapshot_app(snap_db, "users"), terminal_size=(100, 30),
                        run_before=lambda pilot: _settle_then(pilot, keys))


def test_snapshot_rules_80x24(snap_compare, snap_db, shop_env, tmp_path):
    """The Rules screen at 80x24 with three rules: a pin shown (active), a pin of the
    out-of-stock product (not shown, in yellow), an expired bury; the first one described
    below the table; the form on the left with the pin's fields open."""
    db = copy_db(snap_db, tmp_path / "rules.db")
    eng = Engine(db, registry=load_plugins())
    eng.add_rule("pin", "g1-i03", position=2, placement="home")
    eng.add_rule("pin", shop.OUT_OF_STOCK, position=1, until="2099-12-31")
    eng.add_rule("bury", where='category = "cat2" and price > 20', weight=5, until="2020-01-31")
    eng.close()
    assert snap_compare(snapshot_app(db, "rules"), terminal_size=(80, 24),
                        run_before=lambda pilot: _settle_then(pilot))


# -- the real command in tmux -----------------------------------------------------------------

@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_shelfwise_tui_in_tmux(shop_db, shop_env, tmp_path):
    db = copy_db(shop_db, tmp_path / "tmux.db")
    session = f"shelfwise-test-{int(time.time() * 1000) % 10**8}"
    exe = Path(sys.executable).with_name("shelfwise")
    socket = ["-L", session]  # a private tmux server: nothing else is touched

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", *socket, *args], capture_output=True, text=True,
                              check=True).stdout

    def wait_for(needle: str, seconds: float = 30) -> str:
        deadline = time.monotonic() + seconds
        screen = ""
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p", "-t", session)
            if needle in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never appeared:\n{screen}")

    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30",
         f"{exe} --db {db} tui; echo EXITED $?; sleep 30")
    try:
        wait_for("F2 Users")
        wait_for("user0")                      # the most active users are listed
        tmux("send-keys", "-t", session, "user004", "Enter")
        screen = wait_for("events: ")          # the user's header
        first = Engine(db, registry=load_plugins()).recommend("user004", 1)[0]
        assert "user004" in screen
        wait_for(first.title[:20])
        tmux("send-keys", "-t", session, "F3")
        wait_for("find item")
        tmux("send-keys", "-t", session, "C-q")
        assert "EXITED 0" in wait_for("EXITED")
    finally:
        subprocess.run(["tmux", *socket, "kill-server"], capture_output=True)
