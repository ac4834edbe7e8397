"""`shelfwise experiment start|list|report|stop`: A/B experiments (engine.experiments).
Parse, call one Engine method, format; registered on the `shelfwise` group by engine/cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

LABELS = {"ctr": "CTR", "cart_rate": "add-to-cart", "conversion_rate": "conversion",
          "revenue_per_shopper": "revenue/shopper"}


@click.group()
def experiment():
    """A/B experiments: serve two or more pipeline configurations side by side, each to its
    share of the shoppers, and see which sells more.

    \b
    Examples:
      shelfwise experiment start home-pop --arm control= --arm variant=variant.toml --split 50/50
      shelfwise experiment start promo --arm control= --arm promo=promo.toml --placement home
      shelfwise experiment report home-pop
      shelfwise experiment stop home-pop --winner variant
      shelfwise experiment list

    \b
    An arm file is shelfwise.toml's format with only what may differ per arm:
      rules_placement = "promo"       # the merchandising rules of this placement apply
      [pipeline]                      # over the shop's [pipeline]: recallers, ranker,
      recallers = { popular = 100 }   # diversity, history, exclude_kinds, new_item_slots...
    NAME= (no file) is the shop's own configuration. [plugins.X], [events] and [store] are
    not per arm: the arms share the trained models. Shoppers are assigned by a stable hash
    of their id; requests without a shopper id get the shop's configuration, uncounted.
    """


def _summary(exp) -> str:
    where = f"placement {exp.placement}" if exp.placement else "every placement"
    arms = ", ".join(f"{a.name} {a.share * 100:g}%" for a in exp.arms)
    state = "running" if exp.running else "stopped" + (f", winner {exp.winner}" if exp.winner else "")
    return f"{exp.name} ({state}) on {where}: {arms}"


@experiment.command(name="start")
@click.argument("name")
@click.option("--arm", "arms", multiple=True, required=True, metavar="NAME=[CONFIG.toml]",
              help="An arm: NAME=CONFIG.toml, or NAME= for the shop's configuration. Repeat; "
                   "the first arm is control.")
@click.option("--split", default=None, metavar="A/B[/...]",
              help="Percent of shoppers per arm, in --arm order (default: equal).")
@click.option("--placement", default="", help="Only lists of this placement (home, product-page, "
              "...); default: every list, and no other experiment may run.")
@click.option("--json", "as_json", is_flag=True, help="Print the experiment as JSON.")
@click.pass_obj
def experiment_start(obj, name, arms, split, placement, as_json):
    """Start experiment NAME: arm files are checked first; shoppers see their arm from the
    next request."""
    exp = obj.engine().start_experiment(name, list(arms), split, placement)
    if as_json:
        click.echo(json.dumps(exp.to_dict(), indent=2))
        return
    click.echo(f"Experiment {_summary(exp)}.")
    for a in exp.arms:
        click.echo(f"  {a.name}: {a.describe()}")
    click.echo(f"See how it goes: shelfwise experiment report {exp.name}")


@experiment.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def experiment_list(obj, as_json):
    """Every experiment, running or stopped, newest first."""
    found = obj.engine().experiments()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in found], indent=2))
        return
    if not found:
        console.print("No experiments. Start one with \"shelfwise experiment start NAME --arm "
                      "control= --arm variant=variant.toml\".")
        return
    for exp in found:
        click.echo(_summary(exp))


@experiment.command(name="report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The full report as JSON.")
@click.pass_obj
def experiment_report(obj, name, as_json):
    """Per arm: shoppers, impressions, CTR, add-to-cart and conversion rates and revenue per
    shopper with 95% intervals; each arm against control (the first arm): the difference
    with its interval and the probability that the arm is better."""
    report = obj.engine().experiment_report(name)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    out.print(f"[bold]{escape(_summary(report.experiment))}[/]")
    for a in report.arms:
        out.print(f"  {a.arm}: {a.shoppers:,} shoppers, {a.impressions:,} impressions in "
                  f"{a.lists:,} lists, {a.clicks:,} clicks, {a.carts:,} carts, {a.purchases:,} "
                  f"purchases, revenue {a.revenue:,.2f} ({escape(a.config)})")
    control = report.arms[0].arm
    table = Table(pad_edge=False, caption="value [95% interval]; pt: percentage points; "
                  "P(better): that the arm beats control")
    table.add_column("metric")
    for a in report.arms:
        table.add_column(a.arm)
    for a in report.arms[1:]:
        table.add_column(f"{a.arm} - {control}")
        table.add_column("P(better)", justify="right")
    for k, label in LABELS.items():
        cells = [a.metrics[k].text(k) for a in report.arms]
        for a in report.arms[1:]:
            c = a.vs_control[k]
            cells += [c.difference.text(k, signed=True), f"{c.prob_better:.1%}"]
        table.add_row(label, *cells)
    out.print(table)
    out.print(f"[dim]{escape(report.method)}[/]")
    for note in report.notes:
        out.print(f"[yellow]{escape(note)}[/]")


@experiment.command(name="stop")
@click.argument("name")
@click.option("--winner", default=None, metavar="ARM", help="Record the arm that won.")
@click.pass_obj
def experiment_stop(obj, name, winner):
    """Stop experiment NAME: every shopper gets the shop's configuration again. With
    --winner, the arm is recorded and its settings printed, to adopt in shelfwise.toml
    (the file is yours: Shelfwise does not rewrite it)."""
    eng = obj.engine()
    exp = eng.stop_experiment(name, winner)
    click.echo(f"Experiment {_summary(exp)}.")
    if winner is None:
        return
    arm = exp.arm(winner)
    if not arm.text:
        click.echo(f"The winner {winner!r} is the shop's configuration: nothing to change.")
        return
    config = Path(obj.config) if obj.config else Path(obj.db).resolve().parent / "shelfwise.toml"
    click.echo(f"To adopt {winner!r}, put its settings into {config} (its [pipeline] fields "
               f"replace the ones there; rules_placement: move those rules to the placement, or "
               f"keep using it) and restart the server. The arm ({arm.file}):\n")
    click.echo(arm.text.rstrip())
