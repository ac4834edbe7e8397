"""A/B experiments (engine.experiments) from the shop owner's side, on a small demo shop
trained with the core plugins, in a real SQLite file: assignment by a stable hash, each arm
serving its own pipeline (and rules), impressions that carry the arm, a simulated
experiment whose true click rates are known, the report's intervals, the commands, the
HTTP endpoints (secret key) and stopping with a winner. The TUI's Experiments screen is
tested in test_tui.py."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from engine import EngineError
from engine.cli import cli
from engine.config import Settings
from engine.engine import Engine
from engine.experiments import Arm, Experiment, bucket, build_report
from engine.plugins import load_plugins
from engine.server import create_app
from engine.types import Event

from .conftest import CORE_PLUGINS
from .server_support import copy_db


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory) -> Path:
    """The demo shop (200 shoppers, 200 products), trained once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
        mp.setenv("SHELFWISE_HOME", str(tmp_path_factory.mktemp("home")))
        mp.delenv("SHELFWISE_CONFIG", raising=False)
        path = tmp_path_factory.mktemp("ab") / "shop.db"
        eng = Engine(path, registry=load_plugins(), settings=Settings())
        eng.import_data("demo", None, seed=3, users=200, items=200)
        eng.train()
        eng.close()
    return path


@pytest.fixture
def db_path(shop_db, tmp_path) -> Path:
    return copy_db(shop_db, tmp_path)


@pytest.fixture
def eng(db_path):
    engine = Engine(db_path, registry=load_plugins())
    yield engine
    engine.close()


def arm_file(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


POPULAR_ONLY = "[pipeline]\nrecallers = { popular = 100 }\n"


# -- assignment --------------------------------------------------------------------------------

def test_assignment_is_stable_follows_the_split_and_is_independent_between_experiments(eng, tmp_path):
    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    exp = eng.start_experiment("split-test", ["control=", f"variant={variant}"], "30/70")
    assert [a.share for a in exp.arms] == [0.3, 0.7] and exp.split == "30/70"
    ids = [f"shopper{i}" for i in range(20_000)]
    arms = [exp.arm_for(u).name for u in ids]
    assert abs(arms.count("control") / len(ids) - 0.30) < 0.015
    assert [exp.arm_for(u).name for u in ids[:500]] == arms[:500], "a shopper keeps their arm"
    # another experiment splits the same shoppers independently of this one
    other = Experiment("other", "", (Arm("a", 0.5), Arm("b", 0.5)), "50/50", 0.0)
    in_b = [other.arm_for(u).name == "b" for u, arm in zip(ids, arms) if arm == "control"]
    assert abs(sum(in_b) / len(in_b) - 0.5) < 0.03
    assert 0 <= bucket("x", "u") < 1 and bucket("x", "u") == bucket("x", "u") != bucket("y", "u")
    # what the engine serves follows the same assignment, request after request
    users = eng.store.users_with_events()[:40]
    served = {u: eng.recommend(u, 5)[0].arm for u in users}
    assert served == {u: exp.arm_for(u).name for u in users}
    eng.recommendation_cache.clear()
    assert {u: eng.recommend(u, 5)[0].arm for u in users} == served


# -- serving -----------------------------------------------------------------------------------

def test_each_arm_serves_its_own_configuration(eng, tmp_path):
    shop_lists = {u: [r.item_id for r in eng.recommend(u, 10)] for u in eng.store.users_with_events()[:30]}
    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    eng.start_experiment("popular-test", ["control=", f"variant={variant}"], "50/50")
    arms = set()
    for user, before in shop_lists.items():
        recs = eng.recommend(user, 10)
        arm = recs[0].arm
        arms.add(arm)
        assert {r.experiment for r in recs} == {"popular-test"} and {r.arm for r in recs} == {arm}
        if arm == "control":
            assert [r.item_id for r in recs] == before, "control is the shop's configuration"
        else:
            assert {r.source for r in recs} == {"popular"}
            assert [r.item_id for r in recs] == [r.item_id for r in eng.recommend(user, 10, recallers=["popular"])]
        # the trace shows what the shopper's arm does (one source of truth for --explain)
        assert [c.item_id for c in eng.trace(user, 10).shown] == [r.item_id for r in recs]
    assert arms == {"control", "variant"}
    # requests that name their own recallers, or have no shopper id, are outside the experiment
    user = next(iter(shop_lists))
    assert eng.recommend(user, 5, recallers=["popular"])[0].arm == ""
    assert eng.recommend(None, 5)[0].arm == ""
    assert "arm" not in eng.recommend(None, 5)[0].to_dict()
    # a stopped experiment serves the shop's configuration to everyone again
    eng.stop_experiment("popular-test")
    assert {u: [r.item_id for r in eng.recommend(u, 10)] for u in shop_lists} == shop_lists
    assert {r.arm for u in shop_lists for r in eng.recommend(u, 10)} == {""}


def test_an_arm_can_take_the_rules_of_another_placement_and_only_covers_its_placement(eng, tmp_path):
    users = eng.store.users_with_events()[:40]
    target = eng.recommend(users[0], 30)[20].item_id
    eng.add_rule("pin", target, position=1, placement="promo")
    promo = arm_file(tmp_path, "promo.toml", 'rules_placement = "promo"\n')
    exp = eng.start_experiment("promo-test", ["control=", f"promo={promo}"], placement="home")
    for user in users:
        first = eng.recommend(user, 10, placement="home")[0]
        if exp.arm_for(user).name == "promo":
            if target not in eng.store.consumed(user, ["purchase", "rating"]):
                assert first.item_id == target and first.rules == ("pinned by rule 1",)
            assert first.arm == "promo"
        else:
            assert first.rules == () and first.arm == "control"
        assert eng.recommend(user, 10, placement="cart")[0].arm == "", "another placement: no experiment"


def test_impressions_record_the_experiment_and_arm(eng, tmp_path):
    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    exp = eng.start_experiment("log-test", ["control=", f"variant={variant}"], placement="home")
    users = eng.store.users_with_events()[:20]
    for user in users:
        eng.log_impressions(eng.recommend(user, 4, placement="home"), user, "home")
    eng.log_impressions(eng.recommend(None, 4, placement="home"), None, "home")
    rows = eng.store.conn.execute("SELECT user_id, experiment, arm, count(*) FROM impressions "
                                  "GROUP BY user_id, experiment, arm").fetchall()
    assert {(u, e, a, n) for u, e, a, n in rows if u} == \
        {(u, "log-test", exp.arm_for(u).name, 4) for u in users}
    assert [(e, a) for u, e, a, _ in rows if u is None] == [("", "")], "anonymous: not counted"
    report = eng.experiment_report("log-test")
    assert {a.arm: a.shoppers for a in report.arms} == \
        {arm: sum(exp.arm_for(u).name == arm for u in users) for arm in ("control", "variant")}
    assert sum(a.impressions for a in report.arms) == 80


def test_another_process_starting_and_stopping_an_experiment_is_noticed(eng, db_path, tmp_path):
    user = eng.store.users_with_events()[0]
    assert eng.recommend(user, 5)[0].arm == ""
    other = Engine(db_path, registry=load_plugins())
    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    other.start_experiment("elsewhere", ["a=", f"b={variant}"], "50/50")
    assert eng.recommend(user, 5)[0].arm in ("a", "b"), "the cached list is not served"
    other.stop_experiment("elsewhere")
    other.close()
    assert eng.recommend(user, 5)[0].arm == ""


# -- a simulated experiment --------------------------------------------------------------------

TRUE_CTR = {"control": 0.10, "variant": 0.15}
BUY_AFTER_CLICK = 0.2


def simulate(eng: Engine, placement: str, shoppers: int, seed: int = 7) -> None:
    """Shoppers see one list of 10 each and click each item with their arm's probability
    times a personal factor (0.5-1.5: some shoppers click more, so clicks within a shopper
    are correlated); a click becomes a purchase with probability BUY_AFTER_CLICK. The
    events go through Engine.ingest with the lists' recommendation ids."""
    rng = random.Random(seed)
    events, rids = [], {}
    now = time.time()
    for i in range(shoppers):
        user = f"sim{i:05d}"
        recs = eng.recommend(user, 10, placement=placement)
        rid = eng.log_impressions(recs, user, placement)
        p = TRUE_CTR[recs[0].arm] * rng.uniform(0.5, 1.5)
        for r in recs:
            kinds = ["click", "purchase"] if rng.random() < p else []
            for kind in kinds[:1 + (rng.random() < BUY_AFTER_CLICK)]:
                events.append(Event(user, r.item_id, kind, now, event_id=f"{rid}.{r.rank}.{kind}"))
                rids[events[-1].event_id] = rid
    for start in range(0, len(events), 2000):
        eng.ingest(events[start:start + 2000], rids)


def test_a_simulated_experiment_recovers_the_difference_in_click_through(eng, tmp_path):
    variant = arm_file(tmp_path, "variant.toml", "[pipeline]\ndiversity = 0.5\n")
    eng.start_experiment("ctr-test", ["control=", f"variant={variant}"], "50/50", placement="home")
    simulate(eng, "home", 3000)
    report = eng.experiment_report("ctr-test")
    control, variant_ = report.arms
    assert control.arm == "control" and abs(control.shoppers - 1500) < 120
    assert control.shoppers + variant_.shoppers == 3000 and control.impressions == 10 * control.shoppers
    for arm in report.arms:
        ctr = arm.metrics["ctr"]
        assert ctr.low < TRUE_CTR[arm.arm] < ctr.high, (arm.arm, ctr)
        conversion = arm.metrics["conversion_rate"]
        assert conversion.low < TRUE_CTR[arm.arm] * BUY_AFTER_CLICK < conversion.high, (arm.arm, conversion)
        assert arm.revenue > 0 and arm.metrics["revenue_per_shopper"].low > 0
    vs = variant_.vs_control["ctr"]
    assert vs.difference.low < 0.05 < vs.difference.high and vs.difference.low > 0
    assert vs.prob_better > 0.999 and 0.3 < vs.lift < 0.7
    assert variant_.vs_control["conversion_rate"].prob_better > 0.9
    out = report.to_dict()
    assert out["arms"][1]["vs_control"]["ctr"]["prob_better"] == round(vs.prob_better, 6)
    print(f"\nsimulated: control CTR {control.metrics['ctr']}, variant CTR {variant_.metrics['ctr']}, "
          f"difference {vs.difference}, P(better) {vs.prob_better:.6f}")


def _rows(rng: random.Random, arm: str, shoppers: int, ctr: float) -> list[tuple]:
    rows = []
    for i in range(shoppers):
        n = rng.randint(1, 30)  # shoppers see different numbers of items
        p = min(1.0, ctr * rng.uniform(0.2, 1.8))
        clicks = sum(rng.random() < p for _ in range(n))
        rows.append((arm, f"{arm}{i}", n, 1, clicks, 0, 0, 0.0))
    return rows


def test_the_intervals_cover_the_truth_about_95_percent_of_the_time_and_aa_tests_are_even():
    """The delta-method interval over shoppers, checked by repetition: 400 simulated
    experiments with shoppers who click at different rates and see different numbers of
    items. An A/A test (the same truth in both arms) gives P(better) spread over (0, 1)."""
    rng = random.Random(11)
    exp = Experiment("cal", "", (Arm("control", 0.5), Arm("variant", 0.5)), "50/50", 0.0, stopped_at=1.0)
    covered, diff_covered, probs = 0, 0, []
    runs = 400
    for _ in range(runs):
        rows = _rows(rng, "control", 150, 0.10) + _rows(rng, "variant", 150, 0.10)
        report = build_report(exp, rows)
        ctr = report.arms[0].metrics["ctr"]
        covered += ctr.low < 0.10 < ctr.high
        d = report.arms[1].vs_control["ctr"]
        diff_covered += d.difference.low < 0 < d.difference.high
        probs.append(d.prob_better)
    assert 0.92 <= covered / runs <= 0.98, covered / runs
    assert 0.92 <= diff_covered / runs <= 0.98, diff_covered / runs
    assert 0.4 < sum(p > 0.5 for p in probs) / runs < 0.6
    assert 0.03 < sum(p > 0.95 for p in probs) / runs < 0.08, "an A/A test 'wins' about 5% of the time"


# -- starting, refusing, stopping ---------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("[pipeline\nrecallers = 3", "not valid TOML"),
    ('[pipeline]\nrecallers = { popular = "lots" }\n', "[pipeline] recallers.popular: Input should be a valid integer"),
    ("[pipeline]\nrecalers = { popular = 10 }\n", "[pipeline] recalers: unknown field. Fields: diversity"),
    ("[pipeline]\nhistory = 0\n", "[pipeline] history: Input should be greater than or equal to 1 (got 0)"),
    ("[plugins.als]\nfactors = 8\n", "[plugins] is not per arm: component settings shape the trained models"),
    ("[events.weights]\nview = 2\n", "[events] is not per arm"),
    ("[pipeline]\nvalidation_share = 0.2\n", "[pipeline] validation_share: used at training"),
    ('[pipeline]\nranker = "bert2"\n', "[pipeline] ranker: Unknown ranker 'bert2'. Installed rankers: fusion"),
    ("[pipeline]\nrecallers = { knn9 = 10 }\n", "[pipeline] recallers: Unknown recaller 'knn9'"),
    ('placement = "home"\n', "unknown setting 'placement'. An arm file may hold [pipeline] and rules_placement"),
    ('rules_placement = "no spaces please"\n', "rules_placement: expected a placement name"),
])
def test_bad_arm_files_are_refused_with_the_file_field_and_what_was_expected(eng, tmp_path, text, message):
    bad = arm_file(tmp_path, "bad.toml", text)
    with pytest.raises(EngineError) as exc:
        eng.start_experiment("bad", ["control=", f"variant={bad}"])
    assert str(exc.value).startswith(f"{bad}: ") and message in str(exc.value), str(exc.value)
    assert eng.experiments() == []


@pytest.mark.parametrize("arms, split, message", [
    (["control="], None, "at least two arms"),
    (["control=", "control="], None, "Arm names must differ"),
    (["control", "v="], None, "--arm 'control': expected NAME=CONFIG.toml"),
    (["control=", "v=missing.toml"], None, "Arm 'v': there is no file missing.toml"),
    (["control=", "v="], "60/30", "--split '60/30': expected 2 positive percentages"),
    (["control=", "v="], "50/50/0", "expected 2 positive percentages"),
])
def test_bad_arms_and_splits_are_refused(eng, arms, split, message):
    with pytest.raises(EngineError) as exc:
        eng.start_experiment("bad", arms, split)
    assert message in str(exc.value), str(exc.value)


def test_one_experiment_per_placement(eng):
    eng.start_experiment("home-1", ["a=", "b="], placement="home")
    eng.start_experiment("cart-1", ["a=", "b="], placement="cart")
    with pytest.raises(EngineError, match="Experiment 'home-1' is running on placement 'home'"):
        eng.start_experiment("home-2", ["a=", "b="], placement="home")
    with pytest.raises(EngineError, match="without --placement this one would cover every placement"):
        eng.start_experiment("everywhere", ["a=", "b="])
    with pytest.raises(EngineError, match="An experiment named 'cart-1' exists already"):
        eng.start_experiment("cart-1", ["a=", "b="], placement="search")
    eng.stop_experiment("home-1")
    eng.start_experiment("home-2", ["a=", "b="], placement="home")
    assert [(e.name, e.running) for e in eng.experiments()][-1] == ("home-1", False)


def test_stop_with_a_winner_records_it_and_serves_the_shop_configuration(eng, tmp_path):
    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    eng.start_experiment("win-test", ["control=", f"variant={variant}"])
    with pytest.raises(EngineError, match="has no arm 'nope'. Its arms: control, variant"):
        eng.stop_experiment("win-test", "nope")
    stopped = eng.stop_experiment("win-test", "variant")
    assert not stopped.running and stopped.winner == "variant" and stopped.arm("variant").text == POPULAR_ONLY
    with pytest.raises(EngineError, match="was stopped already"):
        eng.stop_experiment("win-test")
    with pytest.raises(EngineError, match="No experiment named 'nope'. Experiments: win-test"):
        eng.experiment_report("nope")
    user = eng.store.users_with_events()[0]
    assert eng.recommend(user, 5)[0].arm == ""
    assert eng.experiment_report("win-test").experiment.winner == "variant"


# -- the command line ----------------------------------------------------------------------------

def test_the_experiment_commands(db_path, tmp_path):
    runner = CliRunner()
    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    db = ["--db", str(db_path)]
    started = runner.invoke(cli, [*db, "experiment", "start", "cli-test", "--arm", "control=",
                                  "--arm", f"variant={variant}", "--split", "40/60", "--placement", "home"])
    assert started.exit_code == 0, started.output
    assert "cli-test (running) on placement home: control 40%, variant 60%" in started.output
    assert "variant: recallers = {'popular': 100}" in started.output
    eng = Engine(db_path, registry=load_plugins())
    simulate(eng, "home", 200, seed=3)
    eng.close()
    listed = runner.invoke(cli, [*db, "experiment", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(e["name"], e["running"], e["split"]) for e in json.loads(listed.output)] == [("cli-test", True, "40/60")]
    report = runner.invoke(cli, [*db, "experiment", "report", "cli-test", "--json"])
    assert report.exit_code == 0, report.output
    body = json.loads(report.output)
    assert [a["arm"] for a in body["arms"]] == ["control", "variant"]
    assert sum(a["shoppers"] for a in body["arms"]) == 200 and body["arms"][0]["vs_control"] is None
    assert set(body["arms"][1]["vs_control"]) == {"ctr", "cart_rate", "conversion_rate", "revenue_per_shopper"}
    table = runner.invoke(cli, [*db, "experiment", "report", "cli-test"])
    assert table.exit_code == 0, table.output
    assert "P(better)" in table.output and "Unit: the shopper" in table.output
    assert "revenue/shopper" in table.output and f"control: {body['arms'][0]['shoppers']} shoppers" in table.output
    shown = runner.invoke(cli, [*db, "recommend", "sim00000", "--placement", "home", "-n", "3"])
    assert shown.exit_code == 0, shown.output
    assert "A/B experiment cli-test: this shopper sees arm " in shown.output
    as_json = runner.invoke(cli, [*db, "recommend", "sim00000", "--placement", "home", "-n", "3", "--json"])
    assert {(r["experiment"], r["arm"]) for r in json.loads(as_json.stdout)} == \
        {("cli-test", shown.output.split("sees arm ")[1].split(".")[0])}
    refused = runner.invoke(cli, [*db, "experiment", "start", "x", "--arm", "a=", "--arm", "b=", "--placement", "home"])
    assert refused.exit_code == 1 and "Error: Experiment 'cli-test' is running on placement 'home'" in refused.output
    stopped = runner.invoke(cli, [*db, "experiment", "stop", "cli-test", "--winner", "variant"])
    assert stopped.exit_code == 0, stopped.output
    assert "stopped, winner variant" in stopped.output and "To adopt 'variant'" in stopped.output
    assert stopped.output.rstrip().endswith("recallers = { popular = 100 }")
    assert "shelfwise.toml" in stopped.output


# -- HTTP ------------------------------------------------------------------------------------------

def test_the_http_report_needs_a_secret_key_and_lists_name_their_arm(db_path, tmp_path):
    eng = Engine(db_path, registry=load_plugins())
    public, secret = eng.create_key("public", "web"), eng.create_key("secret", "backend")
    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    exp = eng.start_experiment("http-test", ["control=", f"variant={variant}"], placement="home")
    user = eng.store.users_with_events()[0]
    eng.close()
    pub, sec = {"X-API-Key": public["key"]}, {"X-API-Key": secret["key"]}
    with TestClient(create_app(db_path)) as c:
        body = c.get(f"/recommend/{user}", params={"placement": "home", "n": 5}, headers=pub).json()
        assert body["experiment"] == "http-test" and body["arm"] == exp.arm_for(user).name
        assert c.get(f"/recommend/{user}", params={"n": 5}, headers=pub).json()["arm"] is None
        event = {"event_id": "e1", "user_id": user, "item_id": body["items"][0]["item_id"],
                 "kind": "click", "timestamp": time.time(), "recommendation_id": body["recommendation_id"]}
        assert c.post("/events", json={"events": [event]}, headers=pub).status_code == 200
        assert c.get("/experiments/http-test", headers=pub).status_code == 403
        assert c.get("/experiments", headers=pub).status_code == 403
        report = c.get("/experiments/http-test", headers=sec)
        assert report.status_code == 200, report.text
        arms = {a["arm"]: a for a in report.json()["arms"]}
        mine = arms[exp.arm_for(user).name]
        assert (mine["shoppers"], mine["impressions"], mine["clicks"]) == (1, 5, 1)
        assert mine["metrics"]["ctr"]["value"] == pytest.approx(0.2)
        listed = c.get("/experiments", headers=sec).json()
        assert [(e["name"], e["placement"], e["running"]) for e in listed] == [("http-test", "home", True)]
        missing = c.get("/experiments/nope", headers=sec)
        assert missing.status_code == 404 and "No experiment named 'nope'" in missing.json()["detail"]


# -- the terminal UI ---------------------------------------------------------------------------

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_experiments_screen_lists_experiments_and_shows_the_report(eng, tmp_path):
    from textual.widgets import DataTable, Static

    from tui.app import ShelfwiseApp

    from .test_tui import rows, settle, text

    variant = arm_file(tmp_path, "variant.toml", POPULAR_ONLY)
    eng.start_experiment("old-test", ["control=", "b="], placement="cart")
    eng.stop_experiment("old-test", "b")
    eng.start_experiment("tui-test", ["control=", f"variant={variant}"], placement="home")
    simulate(eng, "home", 300, seed=5)
    report = eng.experiment_report("tui-test")
    app = ShelfwiseApp(eng, mode="users")
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f9")  # the app's key for the Experiments screen
        await settle(pilot)
        screen = app.screen
        assert screen.mode == "experiments"
        assert rows(screen.query_one("#experiments", DataTable)) == [["tui-test", "running"], ["old-test", "won: b"]]
        header = text(screen.query_one("#experiment-header", Static))
        control = report.arms[0]
        assert "tui-test (running) on placement home" in header
        assert f"control (50%): {control.shoppers:,} shoppers, {control.impressions:,} impressions" in header
        table = rows(screen.query_one("#experiment-report", DataTable))
        ctr = report.arms[1].vs_control["ctr"]
        assert table[0] == ["CTR", control.metrics["ctr"].text("ctr"), report.arms[1].metrics["ctr"].text("ctr"),
                            ctr.difference.text("ctr", signed=True), f"{ctr.prob_better:.1%}"]
        assert [r[0] for r in table] == ["CTR", "add-to-cart", "conversion", "revenue/shopper"]
        assert "Unit: the shopper" in text(screen.query_one("#experiment-notes", Static))
        await pilot.press("down")  # the stopped one, with its winner
        await settle(pilot)
        assert "old-test (stopped, winner b) on placement cart" in text(screen.query_one("#experiment-header", Static))
