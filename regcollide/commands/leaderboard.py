"""`regcollide leaderboard DIR --out OUT`: eval entries -> Markdown, CSV, a static HTML page and
RobustBench-shaped ``model_info`` JSON files, one table per threat model."""

from __future__ import annotations

import click

from regcollide.commands.options import usable_entries, user_errors


@click.command("leaderboard")
@click.argument("entries_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Output folder for leaderboard.md, leaderboard.csv, leaderboard.html and model_info/.")
@click.option("--title", default="regcollide leaderboard", show_default=True)
@click.option("--single-table", is_flag=True,
              help="Refuse entries from more than one threat model (dataset, norm, ε) instead of writing one "
                   "table per threat model.")
@click.option("--model-info/--no-model-info", default=True, show_default=True,
              help="Also write RobustBench's model_info/<dataset>/<Linf|L2>/<name>.json per entry.")
@user_errors
def leaderboard(entries_dir, out, title, single_table, model_info):
    """Rank the eval entries in DIR by AutoAttack robust accuracy (PGD when AutoAttack is missing), one
    table per threat model. Malformed entries are skipped with one line each.

    Example: regcollide leaderboard results/ --out site/
    """
    from regcollide.reports.leaderboard import write_leaderboard
    from regcollide.reports.outputs import check_out_dir, write_error
    from regcollide.reports.robustbench import write_model_info

    entries = usable_entries(entries_dir)
    out_dir = check_out_dir(out)
    try:
        paths = write_leaderboard(entries, out_dir, title=title, single_table=single_table)
        written, refused = write_model_info(entries, out_dir / "model_info") if model_info else ([], [])
    except OSError as err:
        raise write_error(out, err) from err
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
    for line in refused:
        click.echo(f"model_info skipped: {line}", err=True)
    if model_info:
        click.echo(f"model_info: {len(written)} files in {out_dir / 'model_info'}")
