"""The `shelfwise` command line: CliRunner over a CSV-imported shop. Errors are one clear line
and a non-zero exit status, never a traceback."""

import json

import pytest

from tests.conftest import CORE_PLUGINS
from click.testing import CliRunner

from engine.cli import cli

from . import shop

N_USERS = 120


def run(db, *args):
    return CliRunner().invoke(cli, ["--db", str(db), *args])


def assert_clean_error(result, *texts):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    for text in texts:
        assert text in result.output, result.output


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory):
    return shop.write_csv(tmp_path_factory.mktemp("csv"), n_users=N_USERS)


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory, csv_files):
    """A database created, imported and trained through the CLI (checked by the tests below)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("SHELFWISE_CONFIG", "SHELFWISE_DB"):
            mp.delenv(var, raising=False)
        mp.setenv("SHELFWISE_LOAD_PLUGINS", CORE_PLUGINS)
        db = tmp_path_factory.mktemp("cli") / "x.db"
        items, events = csv_files
        results = {
            "init": run(db, "init"),
            "import": run(db, "import", "csv", "--items", str(items), "--events", str(events)),
            "train": run(db, "train"),
        }
    return db, results


def test_init_import_and_train(shop_db):
    db, results = shop_db
    for name, result in results.items():
        assert result.exit_code == 0, f"{name}: {result.output}"
    assert f"Database ready: {db}" in results["init"].output
    n_events = len(shop.events(N_USERS))
    assert "Imported 60 items" in results["import"].output
    assert f"{n_events:,} events (0 already stored)" in results["import"].output
    assert "Trained on" in results["train"].output


def test_import_again_adds_nothing(tmp_path, csv_files):
    items, events = csv_files
    db = tmp_path / "again.db"
    first = run(db, "import", "csv", "--items", str(items), "--events", str(events), "--json")
    assert first.exit_code == 0, first.output
    second = run(db, "import", "csv", "--items", str(items), "--events", str(events), "--json")
    assert second.exit_code == 0, second.output
    report = json.loads(second.stdout)
    assert report["events"] == 0
    assert report["duplicates"] == json.loads(first.stdout)["events"]


def test_status(shop_db):
    db, _ = shop_db
    result = run(db, "status")
    assert result.exit_code == 0, result.output
    assert "60 items" in result.output
    assert "recaller/als v1" in result.output and "ranker/fusion v1" in result.output
    as_json = run(db, "status", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["counts"]["items"] == 60


def test_recommend_json(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "user001", "-n", "3", "--json")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)
    assert isinstance(recs, list) and len(recs) == 3
    for r in recs:
        assert {"item_id", "title", "score", "source", "reason"} <= set(r)
        assert r["title"].startswith("Item ") and r["reason"]
        assert r["item_id"] != shop.OUT_OF_STOCK
    assert [r["rank"] for r in recs] == [1, 2, 3]


def test_recommend_explain_prints_each_stage_of_the_same_list(shop_db):
    db, _ = shop_db
    listed = [r["item_id"] for r in json.loads(run(db, "recommend", "user001", "-n", "4", "--json").stdout)]
    explained = run(db, "recommend", "user001", "-n", "4", "--explain", "--json")
    assert explained.exit_code == 0, explained.output
    trace = json.loads(explained.stdout)
    assert [r["item_id"] for r in trace["items"]] == [s["item_id"] for s in trace["shown"]] == listed
    assert set(trace["recalled"]) >= {"als", "popular"} and trace["ranker"] == "fusion"
    assert all(trace["recalled"][name]["proposed"] <= trace["recalled"][name]["quota"] for name in trace["recalled"])
    assert trace["merged"] - sum(trace["removed"].values()) <= trace["ranked"] <= trace["merged"]
    text = run(db, "recommend", "user001", "-n", "4", "--explain")
    assert text.exit_code == 0, text.output
    for stage in ("1. Recall", "2. Merge", "3. Filters", "4. Rank", "5. Re-rank rules", "6. Shown"):
        assert stage in text.output
    assert listed[0] in text.output


def test_recommend_table(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "user001", "-n", "2")
    assert result.exit_code == 0, result.output
    assert "Item " in result.output and "source" in result.output


def test_recommend_with_chosen_recallers(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "user001", "--recallers", "popular", "--json")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)
    assert len(recs) == 10 and {r["source"] for r in recs} == {"popular"}


def test_recommend_category(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "user001", "--category", "cat1", "--json")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)
    assert recs and {r["category"] for r in recs} == {"cat1"}


def test_recommend_all_tsv(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "--all", "-n", "2", "--format", "tsv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "user_id\titem_id\trank\tscore"
    rows = [line.split("\t") for line in lines[1:]]
    per_user = {}
    for user, item, rank, score in rows:
        per_user.setdefault(user, []).append((int(rank), item))
        float(score)
    assert len(per_user) == N_USERS
    assert all([rank for rank, _ in recs] == [1, 2] for recs in per_user.values())


def test_recommend_all_reports_progress_as_lines_when_logged(shop_db):
    """Redirected to a file (not a terminal), the campaign export says how far it is on
    stderr, in plain lines; stdout stays the campaign file."""
    db, _ = shop_db
    result = run(db, "recommend", "--all", "-n", "1")
    assert result.exit_code == 0, result.output
    assert f"recommend: {N_USERS:,}/{N_USERS:,} (100%) done" in result.stderr
    assert "recommend:" not in result.stdout


def test_train_progress_in_a_log_is_line_based(shop_db):
    """`train` run from cron or CI writes readable progress lines, one per stage at least."""
    _, results = shop_db
    lines = [line for line in results["train"].stderr.splitlines() if line.startswith("[")]
    stages = {line.split("] ", 1)[1].split(":")[0] for line in lines}
    assert "popular" in " ".join(stages) and len(stages) >= 3, lines
    assert all("\x1b" not in line for line in lines), "terminal escapes in a log"


def test_recommend_all_jsonl(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "--all", "-n", "1", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == N_USERS and {"user_id", "item_id", "reason"} <= set(lines[0])
    for line in lines:
        assert line["title"].startswith("Item "), line
        assert "[[" not in line["reason"], f"unrendered mention: {line['reason']}"


def test_similar(shop_db):
    db, _ = shop_db
    item = shop.item_id(2, 4)
    result = run(db, "similar", item, "-n", "4", "--json")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)
    assert len(recs) == 4 and item not in {r["item_id"] for r in recs}
    assert all(r["reason"] for r in recs)


def test_evaluate_json(shop_db):
    db, _ = shop_db
    result = run(db, "evaluate", "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["k"] == 5
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"popular", "als", "cooccurrence", "sequence", "pipeline"}
    assert rows["pipeline"]["kind"] == "pipeline"
    assert {r["kind"] for name, r in rows.items() if name != "pipeline"} == {"recaller"}
    for r in rows.values():
        assert {f"{m}@5" for m in ("ndcg", "recall", "hit", "mrr", "precision", "coverage")} \
            <= set(r["metrics"])


def test_evaluate_table(shop_db):
    db, _ = shop_db
    result = run(db, "evaluate", "-k", "3", "--recallers", "popular")
    assert result.exit_code == 0, result.output
    assert "ndcg@3" in result.output and "pipeline" in result.output
    assert "Light users" in result.output


def test_plugins(shop_db):
    db, _ = shop_db
    result = run(db, "plugins")
    assert result.exit_code == 0, result.output
    for name in ("popular", "als", "cooccurrence", "fusion", "register_recallers"):
        assert name in result.output
    as_json = run(db, "plugins", "--json")
    assert as_json.exit_code == 0, as_json.output
    info = json.loads(as_json.stdout)
    plugins = {p["name"]: p for p in info["plugins"]}
    assert plugins["fusion"]["components"] == {"rankers": ["fusion"]}
    assert "failures" in info
    trained = {c["name"] for c in info["components"]["recallers"] if c["trained"]}
    assert trained == {"popular", "als", "cooccurrence", "sequence"}


# -- errors ---------------------------------------------------------------------------


def test_unknown_recaller(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "user001", "--recallers", "popular,nope")
    assert_clean_error(result, "Unknown recaller 'nope'", "als, cooccurrence, popular")


def test_unknown_source(tmp_path):
    result = run(tmp_path / "x.db", "import", "nope", "somewhere")
    assert_clean_error(result, "Unknown source 'nope'", "csv")


def test_recommend_before_train(tmp_path, csv_files):
    items, events = csv_files
    db = tmp_path / "untrained.db"
    imported = run(db, "import", "csv", "--items", str(items), "--events", str(events))
    assert imported.exit_code == 0, imported.output
    result = run(db, "recommend", "user001")
    assert_clean_error(result, "No trained recallers", "shelfwise train")


def test_train_an_empty_database(tmp_path):
    assert run(tmp_path / "empty.db", "init").exit_code == 0
    assert_clean_error(run(tmp_path / "empty.db", "train"), "no events")


def test_import_a_missing_file(tmp_path):
    missing = tmp_path / "nowhere.csv"
    result = run(tmp_path / "x.db", "import", "csv", "--events", str(missing))
    assert_clean_error(result, "nowhere.csv", "file not found")


def test_import_a_bad_value_keeps_nothing(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,category,price,in_stock\n"
                     "a,Red shoes,shoes,12.50,yes\n"
                     "b,Blue hat,hats,abc,yes\n")
    db = tmp_path / "x.db"
    result = run(db, "import", "csv", "--items", str(items))
    assert_clean_error(result, "items.csv line 3", "price", "'abc' is not a number")
    status = run(db, "status", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["counts"]["items"] == 0, "nothing half-imported"


def test_import_a_bad_timestamp(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,kind,timestamp\n"
                      "u1,a,view,2024-05-01T10:00:00\n"
                      "u1,b,view,yesterday\n")
    result = run(tmp_path / "x.db", "import", "csv", "--events", str(events))
    assert_clean_error(result, "events.csv line 3", "timestamp", "'yesterday'")


def test_similar_unknown_item(shop_db):
    db, _ = shop_db
    assert_clean_error(run(db, "similar", "no-such-item"), "Unknown item 'no-such-item'")


def test_database_in_a_missing_folder(tmp_path):
    result = run(tmp_path / "missing" / "x.db", "status")
    assert_clean_error(result, "There is no database at")


@pytest.mark.parametrize("command", [["status"], ["recommend", "u1"], ["similar", "p1"], ["train"],
                                     ["items", "boot"], ["evaluate"], ["search", "boot"], ["plugins"],
                                     ["report"], ["users", "show", "u1"]])
def test_reading_a_missing_database_says_so_and_creates_nothing(tmp_path, command):
    db = tmp_path / "missing.db"
    result = run(db, *command)
    if command == ["plugins"]:  # needs no shop: lists the plugins
        assert result.exit_code == 0 and "als" in result.output, result.output
    else:
        assert_clean_error(result, f"There is no database at {db}", "import", "demo")
    assert not db.exists() and not list(tmp_path.iterdir()), "nothing left behind"


def test_a_mistyped_command_is_named_with_the_closest_one(shop_db):
    db, _ = shop_db
    result = run(db, "recomend", "user001")
    assert result.exit_code == 2
    assert "No such command 'recomend'" in result.output and 'Did you mean "shelfwise recommend"' in result.output
    assert "No such command 'xyzzy'" in run(db, "xyzzy").output


def test_items_finds_products_by_id_title_or_category(shop_db):
    db, _ = shop_db
    item = shop.item_id(2, 4)
    by_id = json.loads(run(db, "items", item, "--json").stdout)
    assert by_id[0]["item_id"] == item and by_id[0]["title"]
    by_title = json.loads(run(db, "items", by_id[0]["title"], "--json").stdout)
    assert by_title[0]["item_id"] == item
    table = run(db, "items", item)
    assert table.exit_code == 0 and item in table.output
    assert "No product" in run(db, "items", "no such thing").output


def test_unknown_shoppers_get_the_fallback_and_are_told(shop_db):
    db, _ = shop_db
    result = run(db, "recommend", "nobody-at-all", "-n", "3", "--json")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)
    assert len(recs) == 3 and {r["fallback"] for r in recs} == {"unknown user"}
    assert "'nobody-at-all' is not a known shopper" in result.stderr
    known = json.loads(run(db, "recommend", "user001", "-n", "3", "--json").stdout)
    assert {r["fallback"] for r in known} == {None}


def test_recommend_all_honours_ranker_recallers_and_category(shop_db):
    db, _ = shop_db

    def rows(*args):
        result = run(db, "recommend", "--all", "-n", "3", *args)
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()[1:]

    everything = rows()
    popular = rows("--recallers", "popular")
    assert popular != everything
    for line in popular[:30]:
        user, item = line.split("\t")[:2]
        single = json.loads(run(db, "recommend", user, "-n", "3", "--recallers", "popular", "--json").stdout)
        assert item in [r["item_id"] for r in single]
    category = shop.catalogue()[0].category
    in_category = {i.item_id for i in shop.catalogue() if i.category == category}
    assert {line.split("\t")[1] for line in rows("--category", category)} <= in_category


def test_status_json_stays_small(shop_db):
    db, _ = shop_db
    result = run(db, "status", "--json")
    assert result.exit_code == 0 and len(result.stdout) < 20_000, len(result.stdout)


def test_recommend_needs_a_user_or_all(shop_db):
    db, _ = shop_db
    result = run(db, "recommend")
    assert result.exit_code == 2 and "Missing USER" in result.output
    both = run(db, "recommend", "user001", "--all")
    assert both.exit_code == 2 and "give no USER" in both.output


def test_plugins_dir(tmp_path):
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "shelf_extra.py").write_text(
        "from engine import Recaller, hookimpl\n\n"
        "class Newest(Recaller):\n"
        "    name = 'newest'\n"
        "    description = 'the newest items'\n"
        "    def fit(self, data, progress=None):\n"
        "        pass\n"
        "    def recall(self, queries, n):\n"
        "        return [[] for _ in queries]\n\n"
        "@hookimpl\n"
        "def register_recallers(register):\n"
        "    register(Newest)\n")
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x.db"), "--plugins-dir",
                                      str(folder), "plugins", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {p["name"]: p["components"] for p in info["plugins"]}["shelf_extra"] == \
        {"recallers": ["newest"]}


def test_plugin_with_an_unknown_hook(tmp_path):
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "widgets.py").write_text(
        "from engine import hookimpl\n\n"
        "@hookimpl\n"
        "def register_widgets(register):\n"
        "    pass\n")
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x.db"), "--plugins-dir",
                                      str(folder), "plugins"])
    assert_clean_error(result, "register_widgets")


def test_bad_settings_file(tmp_path):
    (tmp_path / "shelfwise.toml").write_text("[pipeline]\nrecallers = { popular = 'many' }\n")
    result = run(tmp_path / "x.db", "init")
    assert_clean_error(result, "shelfwise.toml", "recallers")


def test_misspelt_component_setting(tmp_path, csv_files):
    items, events = csv_files
    (tmp_path / "shelfwise.toml").write_text("[plugins.als]\nfactor = 8\n")
    db = tmp_path / "x.db"
    imported = run(db, "import", "csv", "--items", str(items), "--events", str(events))
    assert imported.exit_code == 0, imported.output
    assert_clean_error(run(db, "train"), "[plugins.als]", "factor", "factors")


def test_demo_builds_trains_and_shows_reasons(tmp_path):
    """The main job on a small demo shop: import, train, recommendations with reasons, and
    the next commands (the TUI among them); evaluation only when asked for."""
    db = tmp_path / "demo.db"
    result = run(db, "demo", "--users", "150", "--items", "200")
    assert result.exit_code == 0, result.output
    assert "Demo shop in" in result.output and "Trained on" in result.output
    assert "Serving:" in result.output or "Ranker fusion" in result.output
    assert result.output.count("Recommendations for") == 3
    assert any(reason in result.output for reason in  # reasons shown
               ("shoppers who", "bought together", "often chosen next"))
    assert f"shelfwise --db {db} tui" in result.output
    assert "held-out users" not in result.output, "no evaluation unless --evaluate"
    again = run(db, "demo", "--users", "150", "--items", "200", "--evaluate")
    assert again.exit_code == 0, again.output
    assert "held-out users" in again.output and "pipeline" in again.output
