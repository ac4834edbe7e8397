"""`shelfwise replay CONFIG.toml`: a configuration's click-through estimated on the logged
impressions, before trying it as an experiment (Engine.replay). Parse, call, format."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--since", default="30d", show_default=True,
              help="Impressions logged this far back: 30m, 12h, 7d, 2w or 'all'.")
@click.option("--placement", default=None, help="Only the lists shown in this placement.")
@click.option("--bootstraps", default=200, show_default=True, type=click.IntRange(20, 10_000),
              help="Resamples for the 95% intervals.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def replay(obj, config, since, placement, bootstraps, as_json):
    """Estimate the click-through rate CONFIG (a shelfwise.toml) would have had on the
    lists the server logged, with 95% intervals, against the logged rate.

    It says "too thin" (exit status 0) when the logs cannot tell.

    \b
    Examples:
      shelfwise replay variant.toml
      shelfwise replay variant.toml --since 7d --placement home --json
    """
    report = obj.engine().replay(config, since, placement, bootstraps)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    where = f", placement {placement!r}" if placement is not None else ""
    table = Table(title=f"Replay of {config} on {report.requests:,} logged lists "
                        f"({report.shoppers:,} shoppers, {report.impressions:,} impressions, "
                        f"{report.clicks:,} clicks; since {since}{where})")
    for col in ("", "CTR", "95% interval"):
        table.add_column(col)
    table.add_row("logged lists", f"{report.logged_ctr:.2%}",
                  f"{report.logged_interval[0]:.2%}–{report.logged_interval[1]:.2%}")
    table.add_row("this configuration", f"{report.ctr:.2%}",
                  f"{report.interval[0]:.2%}–{report.interval[1]:.2%}")
    table.add_row("difference (model)", f"{report.difference:+.2%}",
                  f"{report.difference_interval[0]:+.2%} to {report.difference_interval[1]:+.2%}")
    if report.matched_ctr is not None:
        lo, hi = report.matched_interval or (report.matched_ctr, report.matched_ctr)
        table.add_row(f"matched slots, IPS ({report.matched_share:.0%})",
                      f"{report.matched_ctr:.2%}", f"{lo:.2%}–{hi:.2%}")
    out.print(table)
    out.print("By recaller: " + ", ".join(
        f"{s.recaller} {s.share:.0%} of slots (CTR {s.ctr:.2%}, support {s.support:.0%})"
        for s in report.by_recaller))
    out.print(f"Support {report.support:.0%}; position effect "
              + " ".join(f"{t:.2f}" for t in report.position_bias))
    out.print(f"Verdict: {report.verdict}. {report.message}")
