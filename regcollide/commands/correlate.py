"""`regcollide correlate DIR --out OUT`: ν/μ/nullity vs PGD ease across eval entries."""

from __future__ import annotations

import click

from regcollide.commands.options import user_errors


@click.command("correlate")
@click.argument("entries_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Output folder for report.md, scatter.png, correlations.csv and correlations.json.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Family-wise error rate for the Holm correction.")
@click.option("--n-boot", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples for the 95% confidence intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@user_errors
def correlate(entries_dir, out, alpha, n_boot, seed):
    """Spearman/Kendall/Pearson of every structural metric (ν, μ, nullity, ...) against every PGD-ease
    metric (median ε*, robust accuracy, steps to success, AutoAttack), with bootstrap CIs and Holm
    correction. Example: regcollide correlate results/ --out docs/study/
    """
    from regcollide.reports.correlation import correlate_entries
    from regcollide.reports.correlation_report import write_correlation_report
    from regcollide.reports.leaderboard import load_entries

    entries = load_entries(entries_dir)
    study = correlate_entries(entries, alpha=alpha, n_boot=n_boot, seed=seed)
    groups = [str(e.get("model")) for e in entries]
    for kind, path in write_correlation_report(study, out, groups=groups).items():
        click.echo(f"{kind}: {path}")
    significant = sum(t.significant for t in study.tests)
    computed = sum(t.skipped is None for t in study.tests)
    click.echo(f"{significant} of {computed} computable correlations significant after Holm correction "
               f"(alpha={alpha}).")
