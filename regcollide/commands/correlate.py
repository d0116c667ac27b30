"""`regcollide correlate DIR --out OUT`: ν/μ/nullity vs PGD ease across eval entries."""

from __future__ import annotations

from pathlib import Path

import click

from regcollide.commands.options import usable_entries, user_errors
from regcollide.commands.types import count, finite


@click.command("correlate")
@click.argument("entries_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Output folder for report.md, scatter.png, correlations.csv and correlations.json.")
@click.option("--alpha", type=finite(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Family-wise error rate for the Holm correction.")
@click.option("--n-boot", type=count(100, 1_000_000), default=2000, show_default=True,
              help="Bootstrap resamples for the 95% confidence intervals.")
@click.option("--n-perm", type=count(99, 1_000_000), default=9999, show_default=True,
              help="Monte Carlo permutations for p-values above 8 models (exact enumeration up to 8).")
@click.option("--seed", type=count(min=0), default=0, show_default=True, help="Seed of the bootstrap and permutations.")
@click.option("--per-threat-model", is_flag=True,
              help="Analyse each threat model (dataset, norm, ε) separately, in OUT/<dataset>-<norm>-eps<ε>/, "
                   "instead of refusing entries from more than one.")
@user_errors
def correlate(entries_dir, out, alpha, n_boot, n_perm, seed, per_threat_model):
    """Spearman/Kendall/Pearson of every structural metric (ν, μ, nullity, ...) against every PGD-ease
    metric (median ε*, robust accuracy, steps to success, AutoAttack), with permutation p-values, bootstrap
    CIs and Holm correction. Below 6 models the report says nothing can be concluded.
    Example: regcollide correlate results/ --out study/
    """
    from regcollide.reports.correlation import correlate_entries
    from regcollide.reports.correlation_report import write_correlation_report
    from regcollide.reports.entries import group_by_threat_model, require_one_threat_model
    from regcollide.reports.outputs import check_out_dir, write_error

    entries = usable_entries(entries_dir)
    if per_threat_model:
        groups = {Path(out) / t.slug: g for t, g in group_by_threat_model(entries).items()}
    else:
        require_one_threat_model(entries, "correlate", "pass --per-threat-model to analyse each group separately")
        groups = {Path(out): entries}
    check_out_dir(out)
    small = {folder: len(g) for folder, g in groups.items() if len(g) < 3}
    if per_threat_model and len(small) == len(groups):
        raise click.ClickException("no threat model has the 3 entries a correlation needs; evaluate more runs "
                                   "with `regcollide eval`")
    for folder, group in groups.items():
        if per_threat_model and folder in small:
            click.echo(f"skipped {folder}: only {small[folder]} entries (a correlation needs at least 3)", err=True)
            continue
        study = correlate_entries(group, alpha=alpha, n_boot=n_boot, seed=seed, n_permutations=n_perm)
        try:
            paths = write_correlation_report(study, folder, groups=[str(e.get("model")) for e in group])
        except OSError as err:
            raise write_error(folder, err) from err
        for kind, path in paths.items():
            click.echo(f"{kind}: {path}")
        computed = sum(t.skipped is None for t in study.tests)
        if not study.conclusive:
            click.echo(f"{study.n_models} models (fewer than {study.min_n}): nothing can be concluded.")
        else:
            click.echo(f"{sum(t.significant for t in study.tests)} of {computed} computable correlations "
                       f"significant after Holm correction (alpha={alpha}).")
