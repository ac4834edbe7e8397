"""The `shelfwise` command: parse, call one Engine method, format. No logic of its own."""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import replace
from pathlib import Path
import time
import warnings

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_progress import progress_for
from . import EngineError, EvaluationReport, TrainReport

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)


_registry = None  # plugins loaded once per process (main() loads them for register_commands)


def registry(plugins_dir: str | None = None):
    global _registry
    from . import load_plugins

    if plugins_dir:
        return load_plugins(plugins_dir)
    if _registry is None:
        _registry = load_plugins()
    return _registry


class Context:
    def __init__(self, db: str, plugins_dir: str | None, config: str | None):
        self.db, self.plugins_dir, self.config = db, plugins_dir, config
        self._engine = None

    def engine(self, create: bool = False):
        """The Engine over --db. Only commands that make a shop (`create`: init, import,
        demo) may create the file; the others say it is missing and create nothing."""
        if self._engine is None:
            from . import Engine

            if not create and not Path(self.db).exists():
                raise EngineError(f"There is no database at {self.db}. Make one with \"shelfwise "
                                  f"--db {self.db} import ...\" or \"shelfwise --db {self.db} demo\", "
                                  f"or give the right path with --db (or SHELFWISE_DB).",
                                  title="No database")
            self._engine = Engine(self.db, registry=registry(self.plugins_dir),
                                  config_path=self.config)
        return self._engine


class ShelfwiseGroup(click.Group):
    """Turns every EngineError into one clear line on stderr and exit status 1, and names
    the closest command when one is mistyped."""

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.6)
            hint = f" Did you mean \"shelfwise {close[0]}\"?" if close else " See \"shelfwise --help\"."
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EngineError as exc:
            raise click.ClickException(str(exc)) from exc


def executor_options(command):
    """--executor and --address: where a command's batch work runs (over [executor] in
    shelfwise.toml)."""
    command = click.option("--address", default=None, metavar="ADDRESS",
                           help="The Ray cluster with --executor ray: auto, ray://head:10001 "
                                "(default: a local Ray instance).")(command)
    return click.option("--executor", "executor_kind", type=click.Choice(["local", "ray"]),
                        default=None, help="Where the batch work runs: local (this process) or "
                        "ray (pip install 'shelfwise[ray]'); default: [executor] in "
                        "shelfwise.toml, else local.")(command)


def rich_progress(enabled: bool = True):
    """The progress callback of a long job: rich bars in a terminal, plain lines in a log."""
    return progress_for(console, enabled)


def _print_recs(recs, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in recs], indent=2))
        return
    table = Table(show_lines=False, pad_edge=False)
    for col in ("#", "item", "title", "score", "source", "why"):
        table.add_column(col, overflow="fold")
    for r in recs:
        why = r.reason + (f" [{'; '.join(r.rules)}]" if r.rules else "")
        table.add_row(str(r.rank), r.item_id, r.title, f"{r.score:.4f}", r.source, escape(why))
    out.print(table)


def _eval_table(report: EvaluationReport, slice_: str = "metrics") -> Table:
    k = report.k
    cols = [f"{m}@{k}" for m in ("ndcg", "recall", "hit", "mrr", "precision", "coverage")]
    title = {"metrics": f"Evaluation on {report.users} held-out users (run {report.run_id})",
             "light_users": f"Light users: the {report.light_users} held-out users with at most "
                            f"{report.light_user_max_items} items before the cut (lowest quarter)",
             "cold_start": f"Cold-start slice: {report.cold_start_users} users whose held-out items "
                           f"had no interactions before"}[slice_]
    table = Table(title=title)
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for row in report.results:
        scores = getattr(row, slice_)
        if scores is None:
            continue
        name = row.name + (f" ({row.ranker})" if row.ranker else "")
        table.add_row(name, *(f"{scores[c]:.4f}" for c in cols))
    return table


def _print_evaluation(report: EvaluationReport) -> None:
    out.print(_eval_table(report))
    if report.light_users:
        out.print(_eval_table(report, "light_users"))
    if report.cold_start_users:
        out.print(_eval_table(report, "cold_start"))


@click.group(cls=ShelfwiseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shelfwise")
@click.option("--db", default="shelfwise.db", envvar="SHELFWISE_DB", show_default=True,
              type=click.Path(dir_okay=False), help="The shop's SQLite file (env SHELFWISE_DB).")
@click.option("--plugins-dir", type=click.Path(file_okay=False, exists=True),
              help="Also load every *.py in this folder as a plugin.")
@click.option("--config", type=click.Path(dir_okay=False, exists=True),
              help="Settings file (default: shelfwise.toml beside the database).")
@click.pass_context
def cli(ctx, db, plugins_dir, config):
    """Shelfwise: recommendations for a small online shop, in one SQLite file.

    \b
    Quick start:
      shelfwise demo                      # the demo shop, trained, with recommendations
      shelfwise import csv --items items.csv --events events.csv
      shelfwise train
      shelfwise recommend USER_ID -n 10
    """
    ctx.obj = Context(db, plugins_dir, config)


@cli.command()
@click.pass_obj
def init(obj):
    """Create the database (or bring its schema up to date)."""
    engine = obj.engine(create=True)
    click.echo(f"Database ready: {engine.db_path}")


@cli.command(name="import", context_settings={"ignore_unknown_options": False})
@click.argument("source")
@click.argument("location", required=False)
@click.option("--items", help="Items file (csv/jsonl sources).")
@click.option("--users", help="Users file.")
@click.option("--events", help="Events file.")
@click.option("--triples", help="Knowledge-graph triples file (head, relation, tail).")
@click.option("--links", help="Item-entity links file (item_id, entity).")
@click.option("--products", help="A shop's products export (shopify, woocommerce).")
@click.option("--orders", help="A shop's orders export (shopify, woocommerce).")
@click.option("--customers", help="A shop's customers export (shopify).")
@click.option("-o", "--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any other option of the source, e.g. -o seed=3.")
@click.option("--allow-any-time", is_flag=True,
              help="Accept event times before 1990 or more than a day ahead (csv, jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def import_(obj, source, location, items, users, events, triples, links, products, orders, customers,
            extra, allow_any_time, as_json):
    """Import data with a source plugin: csv, jsonl, recbole, demo, ...

    \b
    Examples:
      shelfwise import csv --items items.csv --events events.csv
      shelfwise import shopify --products products_export.csv --orders orders_export.csv
      shelfwise import jsonl exports/          # items.jsonl, events.jsonl, ... in a folder
      shelfwise import recbole path/to/ml-100k
      shelfwise import demo -o seed=3
    """
    options = {k: v for k, v in dict(items=items, users=users, events=events, triples=triples,
                                     links=links, products=products, orders=orders,
                                     customers=customers).items() if v}
    for pair in extra:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        key, value = pair.split("=", 1)
        options[key.strip()] = value
    if allow_any_time:
        options["allow_any_time"] = "true"
    with rich_progress(not as_json) as progress:
        report = obj.engine(create=True).import_data(source, location, progress=progress, **options)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"Imported {report.items:,} items, {report.users:,} users, {report.events:,} "
                   f"events ({report.duplicates:,} already stored), {report.triples:,} triples, "
                   f"{report.links:,} item-entity links in {report.seconds:.1f}s.")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--verbose", is_flag=True, help="Print the traceback of a component that failed.")
@executor_options
@click.pass_obj
def train(obj, as_json, verbose, executor_kind, address):
    """Fit every recaller and the ranker; activate the new models together.

    \b
    Examples:
      shelfwise train
      shelfwise train --executor ray                       # encode the catalogue on Ray
    """
    engine = obj.engine()
    executor = engine.executor(executor_kind, address)
    with rich_progress(not as_json) as progress:
        report = engine.train(progress=progress, executor=executor)
    if as_json:
        click.echo(json.dumps(report.to_dict(), default=str))
    else:
        _print_train_summary(report, verbose)


def _print_train_summary(report: TrainReport, verbose: bool = False) -> None:
    click.echo(f"Trained on {report.events:,} events of {report.users:,} users in "
               f"{report.total_seconds:.1f}s (run {report.run_id}).")
    for name, failure in report.failed.items():
        kept = name in {m.partition("/")[2] for m in report.kept_models}
        console.print(f"[yellow]Warning:[/yellow] {name} failed to train ({failure['error']}); "
                      + ("its last good model keeps serving." if kept else "it is not used.")
                      + ("" if verbose else " Details: shelfwise train --verbose."), soft_wrap=True)
        if verbose:
            click.echo(failure["traceback"], err=True)
    for name, metrics in report.rankers.items():
        click.echo(f"Ranker {name}: validation NDCG@10 {metrics.get('ndcg@10', 0):.4f} "
                   f"({metrics.get('examples', 0)} users).")
    for name, verdict in report.trials.items():
        joined = "joins the pipeline" if verdict["joined"] else "stays out of the pipeline"
        click.echo(f"Recaller {name} {joined}: validation candidates NDCG@10 "
                   f"{verdict['ndcg@10_with']:.4f} with it, {verdict['ndcg@10_without']:.4f} without.")
    if report.ranker.why:
        click.echo(f"Serving: {report.ranker.why}.")


@cli.command()
@click.argument("user", required=False)
@click.option("-n", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="JSON list of recommendations.")
@click.option("--recallers", help="Comma-separated recallers for this call only.")
@click.option("--ranker", help="Ranker for this call only.")
@click.option("--category", help="Only items of this category.")
@click.option("--all", "all_users", is_flag=True, help="Every user with at least one event.")
@click.option("--item", "items", multiple=True, help="An item the visitor just viewed (repeatable).")
@click.option("--text", help="What the visitor is looking for, in words.")
@click.option("--explain", is_flag=True, help="Show each stage: what every recaller proposed, what "
              "the filters removed, the ranker's order, what the re-rank rules moved.")
@click.option("--format", "fmt", type=click.Choice(["tsv", "jsonl"]), default="tsv",
              show_default=True, help="Output format with --all.")
@click.option("--placement", default="", help="Where the list is shown (home, product-page, ...): "
              "its merchandising rules apply (see \"shelfwise rules\").")
@executor_options
@click.pass_obj
def recommend(obj, user, n, as_json, recallers, ranker, category, all_users, items, text, explain, fmt,
              placement, executor_kind, address):
    """Personalised recommendations for USER, with the reason for each.

    \b
    Examples:
      shelfwise recommend u42 -n 5
      shelfwise recommend u42 --recallers als,popular --json
      shelfwise recommend --all -n 20 --format tsv > campaign.tsv
      shelfwise recommend --all --executor ray --address auto > campaign.tsv
      shelfwise recommend --item p00042 --item p00107     # an anonymous visitor
      shelfwise recommend u42 --explain                     # how the list was made
    """
    engine = obj.engine()
    names = [r.strip() for r in recallers.split(",") if r.strip()] if recallers else None
    if all_users:
        if user or items or text or explain:
            raise click.UsageError("--all writes every shopper's list: give no USER, --item, "
                                   "--text or --explain with it.")
        executor = engine.executor(executor_kind, address)
        if fmt == "tsv":
            click.echo("user_id\titem_id\trank\tscore")
        with rich_progress() as progress:  # on stderr: stdout is the campaign file
            for user_id, recs in engine.recommend_all(n, progress=progress, recallers=names,
                                                      ranker=ranker, category=category,
                                                      placement=placement, executor=executor):
                for r in recs:
                    if fmt == "tsv":
                        click.echo(f"{user_id}\t{r.item_id}\t{r.rank}\t{r.score:.6f}")
                    else:
                        click.echo(json.dumps({"user_id": user_id, **r.to_dict()}))
        return
    if executor_kind or address:
        raise click.UsageError("--executor and --address are for --all (every shopper's list); "
                               "one shopper's list is answered here.")
    if not user and not items and not text:
        raise click.UsageError("Missing USER (or --item / --text for a visitor, or --all).")
    if explain:
        trace = engine.trace(user, n, recallers=names, ranker=ranker, category=category,
                             items=items, text=text, placement=placement)
        recs = [replace(r, rules=tuple(trace.notes.get(r.item_id, ())))
                for r in engine.render(trace.shown, trace.ranker)]
        if as_json:
            click.echo(json.dumps({**trace.to_dict(), "items": [r.to_dict() for r in recs]}))
        else:
            _print_trace(trace, recs)
        return
    recs = engine.recommend(user, n, recallers=names, ranker=ranker, category=category,
                            items=items, text=text, placement=placement)
    if recs and recs[0].fallback:
        who = {"unknown user": f"{user!r} is not a known shopper",
               "no history yet": f"{user!r} has no events yet",
               "unknown item": "none of the items given is in the catalogue"}[recs[0].fallback]
        console.print(f"[yellow]Note:[/yellow] {who}: showing what a new visitor sees.")
    if recs and recs[0].experiment:
        console.print(f"A/B experiment {recs[0].experiment}: this shopper sees arm {recs[0].arm}.")
    _print_recs(recs, as_json)


FILTER_WORDS = {"excluded": "already bought or asked not to show", "unavailable": "out of stock or "
                "not in the catalogue", "category": "not the asked category"}


def _print_trace(trace, recs) -> None:
    """recommend --explain: the pipeline's stages as a shop owner reads them."""
    console = out
    console.print("[bold]1. Recall[/] — what each recaller proposed (of its quota):")
    for name, found in trace.recalled.items():
        console.print(f"   {name:<16}{len(found):>5} of {trace.quotas.get(name, 0)}")
    console.print(f"[bold]2. Merge[/] — {len(trace.merged):,} distinct candidates")
    removed = ", ".join(f"{len(found):,} {FILTER_WORDS.get(name, f'by {name}')}" for name, found in trace.removed.items())
    console.print(f"[bold]3. Filters[/] — removed {removed or 'nothing'}; {len(trace.ranked):,} left")
    by = f"the {trace.ranker} ranker" if trace.ranker else "no ranker (merged order)"
    console.print(f"[bold]4. Rank[/] — ordered by {by}")
    moved = trace.moved()
    console.print("[bold]5. Re-rank rules[/] — " + ("; ".join(
        f"{item} from {'beyond the list' if was is None else f'#{was}'} to #{now}"
        + (f" ({', '.join(trace.notes[item])})" if trace.notes.get(item) else "") for item, was, now in moved)
        if moved else "no change"))
    console.print(f"[bold]6. Shown[/] — top {trace.n}:")
    for r, c in zip(recs, trace.shown):
        found = ", ".join(f"{name} #{trace.recall_rank(name, c.item_id)}" for name in trace.recalled
                          if trace.recall_rank(name, c.item_id))
        console.print(f"   {r.rank:>2}. {r.title or r.item_id}  [dim]({r.item_id}; {found})[/]")
        console.print(f"       {escape(r.reason)}" + (f"  [bold]{escape('; '.join(r.rules))}[/]" if r.rules else ""))


@cli.command()
@click.argument("text")
@click.option("-n", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="JSON list of the products.")
@click.pass_obj
def items(obj, text, n, as_json):
    """Find products by id, title, category, brand, tag or attribute.

    \b
    Examples:
      shelfwise items p00042
      shelfwise items "rain jacket" --json
    """
    found = obj.engine().find_items(text, n)
    if as_json:
        click.echo(json.dumps([item.to_dict() for item in found], indent=2))
        return
    if not found:
        console.print(f"No product has the id {text!r} or mentions it.")
        return
    table = Table(pad_edge=False)
    for col in ("item", "title", "category", "brand", "price", "stock"):
        table.add_column(col, overflow="fold")
    for item in found:
        table.add_row(item.item_id, item.title, item.category, item.brand,
                      "" if item.price is None else f"{item.price:,.2f}", "yes" if item.in_stock else "no")
    out.print(table)


@cli.command()
@click.argument("query")
@click.option("-n", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--category", help="Only items of this category.")
@click.option("--json", "as_json", is_flag=True, help="JSON list, the same shape as recommend.")
@click.pass_obj
def search(obj, query, n, category, as_json):
    """Search the catalogue: exact names and SKUs, and meaning ("warm socks for hiking")."""
    _print_recs(obj.engine().search(query, n, category=category), as_json)


@cli.command()
@click.argument("item")
@click.option("-n", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def similar(obj, item, n, as_json):
    """Items similar to ITEM, and which recaller found each."""
    _print_recs(obj.engine().similar(item, n), as_json)


@cli.command()
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@click.option("--recallers", help="Comma-separated recallers to evaluate (default: the pipeline's).")
@click.option("--ranker", help="Ranker to evaluate.")
@executor_options
@click.pass_obj
def evaluate(obj, k, as_json, recallers, ranker, executor_kind, address):
    """Offline metrics: chronological hold-out, full ranking, per recaller and pipeline."""
    names = [r.strip() for r in recallers.split(",") if r.strip()] if recallers else None
    engine = obj.engine()
    executor = engine.executor(executor_kind, address)
    with rich_progress(not as_json) as progress:
        report = engine.evaluate(k, progress=progress, recallers=names, ranker=ranker,
                                 executor=executor)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        _print_evaluation(report)
        for name, error in report.failed.items():
            console.print(f"[yellow]Warning:[/yellow] {name} failed to train ({error}) and is "
                          f"left out of this evaluation.", soft_wrap=True)


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also list every component's details.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plugins(obj, show_all, as_json):
    """Loaded plugins, their hooks and the components they register."""
    if Path(obj.db).exists():
        engine = obj.engine()
        info = engine.plugins()
        if show_all or as_json:
            info["components"] = engine.components()
    else:  # nothing trained to show: the plugins alone, and no database made for it
        reg = registry(obj.plugins_dir)
        info = {"plugins": reg.plugins(), "failures": [f.__dict__ for f in reg.failures]}
        if show_all or as_json:
            from . import describe_components

            info["components"] = describe_components(reg)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(title="Plugins")
    for col in ("plugin", "version", "hooks", "components"):
        table.add_column(col, overflow="fold")
    for p in info["plugins"]:
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["components"].items())
        table.add_row(p["name"], p["version"] or "", ", ".join(p["hooks"]), comps)
    out.print(table)
    for f in info["failures"]:
        out.print(f"[red]failed to load[/red] {f['name']}: {f['error']}")
    if show_all:
        for kind, comps in info["components"].items():
            for c in comps:
                state = "trained" if c["trained"] else "not trained"
                out.print(f"{kind[:-1]:>9} {c['name']:<14} {state:<12} {c['description']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj, as_json):
    """What is in the database: counts, active models, last runs."""
    st = obj.engine().status()
    if as_json:
        click.echo(json.dumps(st, default=str, indent=2))
        return
    c = st["counts"]
    click.echo(f"{st['db']}: {c['items']:,} items, {c['users']:,} users, {c['events']:,} events "
               f"({', '.join(f'{k} {v:,}' for k, v in c['events_by_kind'].items())}), "
               f"{c['triples']:,} triples")
    for m in st["models"]:
        off = "  NOT USED: cannot be loaded" if m["name"] in st["broken"] else ""
        click.echo(f"  {m['name']} v{m['version']} ({m['size']:,} bytes, "
                   f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(m['created_at']))}){off}")


@cli.command()
@click.option("--seed", default=7, show_default=True, help="Seed of the generated shop.")
@click.option("--users", default=5000, show_default=True)
@click.option("--items", default=2000, show_default=True)
@click.option("--evaluate/--no-evaluate", "run_eval", default=False, show_default=True,
              help="Also run the offline evaluation (trains everything a second time).")
@click.pass_obj
def demo(obj, seed, users, items, run_eval):
    """Create the demo shop, train, show recommendations with reasons (and, with
    --evaluate, the offline evaluation)."""
    engine = obj.engine(create=True)
    with rich_progress() as progress:
        report = engine.import_data("demo", None, progress=progress, seed=seed, users=users, items=items)
        trained = engine.train(progress=progress)
    click.echo(f"Demo shop in {engine.db_path}: {report.items:,} items, {report.events:,} new events.")
    _print_train_summary(trained)
    from rich.markup import escape

    from .inspect import find_users, user_profile

    for shopper in find_users(engine, "", limit=3):  # the most active ones
        user_id = shopper["user_id"]
        recent = user_profile(engine, user_id, limit=3)["history"]
        seen = ", ".join(f"{h['kind']} “{h['title'] or h['item_id']}”" for h in recent)
        out.print(f"\n[bold]Recommendations for {escape(user_id)}[/bold] (recently: {escape(seen)})")
        _print_recs(engine.recommend(user_id, 5), as_json=False)
    if run_eval:
        with rich_progress() as progress:
            ev = engine.evaluate(10, progress=progress)
        _print_evaluation(ev)
    click.echo(f"\nNext: shelfwise --db {engine.db_path} recommend USER_ID  |  similar ITEM_ID  |  evaluate")
    click.echo(f"Explore it in the terminal UI: shelfwise --db {engine.db_path} tui")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--cors-origin", "cors", multiple=True,
              help="A web origin allowed to call the API from a browser (repeatable).")
@click.option("--rate-limit", "rate", type=(click.Choice(["public", "secret"]), click.IntRange(0)),
              multiple=True, help="Requests a minute per key of a scope, e.g. --rate-limit public 600 "
                                  "(0: no limit). Counted per server process.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes sharing the port (uvicorn's workers), each with its own models "
                   "and caches; every event reaches all of them. Useful up to the number of cores.")
@click.option("--save-interval", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between saves of the state learnt from new events (by one process).")
@click.pass_obj
def serve(obj, host, port, cors, rate, workers, save_interval):
    """Serve recommendations and event ingestion over HTTP (OpenAPI at /docs).

    \b
    Examples:
      shelfwise serve
      shelfwise serve --workers 2
      shelfwise keys create --scope public && shelfwise serve --host 0.0.0.0 --cors-origin https://shop.example
    """
    import uvicorn

    from .server import create_app
    from .server.app import DEFAULT_RATE_LIMITS

    engine = obj.engine()
    keys = [k for k in engine.keys() if k["revoked_at"] is None]
    if not keys and host not in LOOPBACK:
        raise click.ClickException(
            f"No API keys are configured, so the server binds to loopback only, not {host}. "
            f"Create keys first: \"shelfwise keys create --scope public\" (web pages) and "
            f"\"--scope secret\" (your shop's server).")
    if not keys:
        console.print("No API keys configured: serving without authentication on loopback only.")
    engine.close()
    limits = {**DEFAULT_RATE_LIMITS, **dict(rate)}
    if workers > 1:
        _serve_workers(obj, host, port, list(cors), limits, workers, save_interval)
        return
    app = create_app(obj.db, engine_factory=lambda: _fresh_engine(obj), cors_origins=list(cors),
                     rate_limits=limits, config_path=obj.config, plugins_dir=obj.plugins_dir,
                     incremental_save_interval=save_interval)
    uvicorn.run(app, host=host, port=port, log_level="info")


WORKER_HEALTHCHECK = 30  # seconds a worker may take to answer uvicorn's ping (a busy 2-core box)


def _serve_workers(obj, host, port, cors, limits, workers, save_interval):
    """N uvicorn worker processes on one port, each making its app from the command's
    options (server.app.from_environment); uvicorn restarts a worker that dies."""
    import os

    import uvicorn

    from .server.app import SETTINGS_ENV

    os.environ[SETTINGS_ENV] = json.dumps({
        "db": str(Path(obj.db).resolve()), "config": obj.config, "plugins_dir": obj.plugins_dir,
        "cors": cors, "rate_limits": limits, "incremental_save_interval": save_interval})
    uvicorn.run("engine.server.app:from_environment", factory=True, workers=workers,
                host=host, port=port, log_level="info",
                timeout_worker_healthcheck=WORKER_HEALTHCHECK)


def _fresh_engine(obj):
    from . import Engine

    obj.engine()  # says so when the database is missing
    return Engine(obj.db, registry=registry(obj.plugins_dir), config_path=obj.config)


@cli.command()
@click.option("--since", default="7d", show_default=True, help="How far back: 30m, 12h, 7d, 2w, all.")
@click.option("--placement", default=None, help="Only this placement (home, product-page, ...).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def report(obj, since, placement, as_json):
    """Do the recommendations sell? Impressions, click-through, add-to-cart, conversion and
    attributed revenue per recaller, ranker and placement (from the HTTP server's log)."""
    rep = obj.engine().report(since, placement)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    for title, key in (("recaller", "by_recaller"), ("ranker", "by_ranker"),
                       ("placement", "by_placement")):
        table = Table(title=f"Recommendations by {title} (since {since})")
        for col in (title, "impressions", "CTR", "add-to-cart", "conversion", "revenue"):
            table.add_column(col, justify="left" if col == title else "right")
        for row in [*rep[key], {"name": "all", **rep["overall"]}]:
            table.add_row(str(row["name"] or "-"), f"{row['impressions']:,}", f"{row['ctr']:.2%}",
                          f"{row['cart_rate']:.2%}", f"{row['conversion_rate']:.2%}",
                          f"{row['revenue']:,.2f}")
        out.print(table)


@cli.group()
def keys():
    """API keys for the HTTP server: public (web pages) and secret (your shop's server)."""


@keys.command(name="create")
@click.option("--scope", type=click.Choice(["public", "secret"]), required=True)
@click.option("--name", default="", help="What the key is for, e.g. 'web shop'.")
@click.pass_obj
def keys_create(obj, scope, name):
    """Create a key and print it once (only its hash is stored)."""
    key = obj.engine().create_key(scope, name)
    click.echo(key["key"])
    console.print(f"{scope} key {key['id']} created; it is shown only this once.")


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def keys_list(obj, as_json):
    """Keys by id, scope and name (never the key itself)."""
    rows = obj.engine().keys()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for k in rows:
        state = "revoked" if k["revoked_at"] else "active"
        click.echo(f"{k['id']}\t{k['scope']}\t{k['prefix']}...\t{state}\t{k['name']}")


@keys.command(name="revoke")
@click.argument("key_id", type=int)
@click.pass_obj
def keys_revoke(obj, key_id):
    """Revoke a key by id (see "shelfwise keys list"); servers stop accepting it within seconds."""
    obj.engine().revoke_key(key_id)
    click.echo(f"Key {key_id} revoked.")


@cli.group()
def rules():
    """Merchandising rules: pin, boost, bury or filter products in the lists, at once
    (no retrain), optionally for one placement and until a date.

    \b
    Examples:
      shelfwise rules add pin p00042 --position 1 --placement home --until 2026-12-24
      shelfwise rules add boost --where 'brand = "Acme"' --weight 5
      shelfwise rules add bury --where 'tags contains "winter"' --weight 10
      shelfwise rules add filter --where 'price > 200 and not in_stock = true'
      shelfwise rules list
      shelfwise rules remove 3

    \b
    Conditions (--where) over the catalogue fields: item_id, title, category, brand
    (text), price (number), in_stock (true/false), tags (list), attrs.NAME; comparisons
    = != < <= > >=, in ["a", "b"], contains; and, or, not, parentheses; "texts" in
    quotes. Text comparisons ignore case.
    """


@rules.group(name="add")
def rules_add():
    """Add a rule: pin, boost, bury or filter."""


_placement = click.option("--placement", default="", help="Only lists of this placement "
                          "(home, product-page, ...); default: every list.")
_until = click.option("--until", "until", metavar="DATE", help="The last day the rule applies "
                      "(YYYY-MM-DD, local time); default: until removed.")
_json = click.option("--json", "as_json", is_flag=True, help="Print the rule as JSON.")


def _added(rule, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rule.to_dict(), indent=2))
        return
    click.echo(f"Rule {rule.id} added: {rule.describe()}"
               + (f" on {rule.placement}" if rule.placement else "")
               + (f", until {rule.until_date}" if rule.until is not None else "") + ".")
    if rule.status != "active":
        console.print(f"[yellow]Note:[/yellow] rule {rule.id} is {rule.status}: {rule.note}.")


@rules_add.command(name="pin")
@click.argument("item")
@click.option("--position", type=int, required=True, help="1 = first place.")
@_placement
@click.option("--category", help="Only lists of this category (requests with --category).")
@_until
@_json
@click.pass_obj
def rules_add_pin(obj, item, position, placement, category, until, as_json):
    """Put ITEM at --position in every list (unless it is out of stock, already bought by
    the shopper, of another category than the list, or filtered: those win)."""
    _added(obj.engine().add_rule("pin", item_id=item, position=position, placement=placement,
                                 category=category, until=until), as_json)


def _weighted(kind: str, direction: str):
    @rules_add.command(name=kind, help=f"Move the products --where matches {direction} by "
                       f"--weight places in the ranker's order.")
    @click.option("--where", required=True, metavar="CONDITION", help='e.g. \'brand = "Acme"\'')
    @click.option("--weight", type=float, required=True, help=f"Places to move {direction}.")
    @_placement
    @_until
    @_json
    @click.pass_obj
    def add(obj, where, weight, placement, until, as_json):
        _added(obj.engine().add_rule(kind, where=where, weight=weight, placement=placement,
                                     until=until), as_json)
    return add


_weighted("boost", "up")
_weighted("bury", "down")


@rules_add.command(name="filter")
@click.option("--where", required=True, metavar="CONDITION", help="e.g. 'price > 200'")
@_placement
@_until
@_json
@click.pass_obj
def rules_add_filter(obj, where, placement, until, as_json):
    """Never show the products --where matches."""
    _added(obj.engine().add_rule("filter", where=where, placement=placement, until=until), as_json)


@rules.command(name="list")
@click.option("--placement", default=None, help="Only the rules that apply to this placement.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rules_list(obj, placement, as_json):
    """Every rule and whether it applies now (active, expired, or not shown and why)."""
    found = obj.engine().rules(placement)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found], indent=2))
        return
    if not found:
        console.print("No rules. Add one with \"shelfwise rules add pin|boost|bury|filter ...\".")
        return
    table = Table(pad_edge=False)
    for col in ("id", "kind", "what", "placement", "until", "status"):
        table.add_column(col, overflow="fold")
    for r in found:
        what = f"{r.item_id} at {r.position}" + (f" in {r.category}" if r.category else "") \
            if r.kind == "pin" else r.where + (f" by {r.weight:g}" if r.weight is not None else "")
        status = r.status + (f": {r.note}" if r.note else "")
        table.add_row(str(r.id), r.kind, escape(what), r.placement or "all", r.until_date or "",
                      status)
    out.print(table)


@rules.command(name="remove")
@click.argument("rule_id", type=int)
@click.pass_obj
def rules_remove(obj, rule_id):
    """Remove rule RULE_ID (see "shelfwise rules list"); lists follow at once."""
    rule = obj.engine().remove_rule(rule_id)
    click.echo(f"Rule {rule_id} removed ({rule.describe()}).")


@cli.group()
def users():
    """A shopper's stored data: show it (a data-access request) or erase it."""


@users.command(name="show")
@click.argument("user_id")
@click.pass_obj
def users_show(obj, user_id):
    """Everything stored about USER_ID, as JSON: profile, events, impressions, attributed events."""
    click.echo(json.dumps(obj.engine().user_data(user_id), indent=2, ensure_ascii=False))


@users.command(name="erase")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print what was erased as JSON.")
@click.pass_obj
def users_erase(obj, user_id, yes, as_json):
    """Erase USER_ID: events, profile, impressions, attributed events (as DELETE /users/ID)."""
    engine = obj.engine()
    engine.user_data(user_id)  # an unknown id is an error, not a silent no-op
    if not yes and not click.confirm(f"Erase everything stored about {user_id}? This cannot be undone"):
        raise click.Abort()
    erased = engine.erase_user(user_id)
    if as_json:
        click.echo(json.dumps(erased, indent=2))
        return
    console.print(f"Erased {user_id}: {erased['events']:,} events, {erased['impressions']:,} "
                  f"impressions, {erased['attributed_events']:,} attributed events, "
                  f"{erased['cached_lists']:,} cached lists"
                  + ("." if erased["log_emptied"] else
                     "; the write-ahead log was busy and still holds old pages until the next checkpoint."))


@cli.group()
def plugin():
    """Write Shelfwise plugins."""


@plugin.command(name="new")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(["recaller", "ranker", "source", "encoder"]))
@click.option("--dir", "folder", default=".", type=click.Path(file_okay=False), show_default=True)
def plugin_new(name, kind, folder):
    """Write a ready plugin package NAME: then `pip install -e NAME && pytest NAME`."""
    from . import new_plugin

    click.echo(f"Wrote {new_plugin(name, kind, folder)}")


from .cli_experiments import experiment  # noqa: E402  (A/B experiments)
cli.add_command(experiment)


def load_plugin_commands(group: click.Group = cli) -> None:
    """Let plugins add commands (register_commands hook)."""
    try:
        registry().pm.hook.register_commands(cli=group)
    except EngineError as exc:
        console.print(f"[red]Error:[/red] {exc}")
        sys.exit(1)


def main() -> None:
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"Warning: {message}\n"
    load_plugin_commands(cli)
    cli(prog_name="shelfwise")


if __name__ == "__main__":
    main()

from .cli_replay import replay as _replay; cli.add_command(_replay)  # noqa: E402,E702  shelfwise replay
