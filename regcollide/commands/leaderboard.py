"""`regcollide leaderboard DIR --out OUT`: eval entries -> Markdown, CSV and a static HTML page."""

from __future__ import annotations

import click

from regcollide.commands.options import user_errors


@click.command("leaderboard")
@click.argument("entries_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Output folder for leaderboard.md, leaderboard.csv and leaderboard.html.")
@click.option("--title", default="regcollide leaderboard", show_default=True)
@user_errors
def leaderboard(entries_dir, out, title):
    """Rank the eval entries in DIR by AutoAttack robust accuracy (PGD when AutoAttack is missing).

    Example: regcollide leaderboard results/ --out site/
    """
    from regcollide.reports.leaderboard import load_entries, write_leaderboard

    entries = load_entries(entries_dir)
    if not entries:
        raise click.ClickException(f"no eval entries in {entries_dir}; write them with "
                                   "`regcollide eval RUN... --out DIR`")
    for kind, path in write_leaderboard(entries, out, title=title).items():
        click.echo(f"{kind}: {path}")
