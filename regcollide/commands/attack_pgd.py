"""``regcollide attack pgd``: PGD ease (Madry et al. 2018) and, optionally, AutoAttack robust accuracy.

The defaults (n, norm, ε, steps, restarts, bisection steps, batch size, seed) are those of
:class:`regcollide.evaluation.settings.EvalSettings`, so this command, `regcollide eval` and the
end-of-run eval of training give the same PGD numbers for the same model.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from regcollide.attacks.autoattack import evaluate_autoattack
from regcollide.attacks.checks import Flag
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.commands.options import DATA_HELP, ensure_out, load_model_and_data, model_options, user_errors
from regcollide.commands.types import count, finite
from regcollide.evaluation.inputs import pick_threads, torch_threads
from regcollide.evaluation.settings import NORMS, default
from regcollide.io import write_json


def _check_budget(norm: str, eps: float, eps_max: float | None) -> None:
    if eps_max is not None and eps_max <= eps:
        raise click.BadParameter(f"--eps-max {eps_max:g} must be larger than --eps {eps:g}", param_hint="--eps-max")
    if eps_max is None and norm == "linf" and eps >= 1:
        raise click.BadParameter(f"{eps:g} already reaches every image in [0, 1] under linf, so there is no "
                                 "larger budget for the per-sample ε* search; use --eps below 1",
                                 param_hint="--eps")


@click.command("pgd")
@model_options
@click.option("--data", "data", default="mnist5k", show_default=True,
              help=f"{DATA_HELP} With --checkpoint, defaults to the run's dataset.")
@click.option("--n", "n", type=count(), default=default("n"), show_default=True, help="Test images to attack.")
@click.option("--seed", type=count(min=0), default=default("seed"), show_default=True,
              help="Seed for sample selection and random starts.")
@click.option("--norm", type=click.Choice(NORMS), default=default("norm"), show_default=True, help="Threat model.")
@click.option("--eps", type=finite(0, min_open=True), default=default("eps"), show_default=True,
              help="Budget ε in pixel units (inputs are in [0, 1]).")
@click.option("--steps", type=count(), default=default("pgd_steps"), show_default=True, help="PGD steps.")
@click.option("--restarts", type=count(), default=default("pgd_restarts"), show_default=True,
              help="Random restarts.")
@click.option("--alpha", type=finite(0, min_open=True), default=None, help="Step size [default: 2.5·eps/steps].")
@click.option("--eps-max", type=finite(0, min_open=True), default=None,
              help="Upper end of the ε* search; samples still robust there are censored "
                   "[default: 4·eps, at most 1 for linf].")
@click.option("--bisection-steps", type=count(min=0, max=64), default=default("pgd_bisection_steps"),
              show_default=True, help="Bisection iterations of the ε* search.")
@click.option("--batch-size", type=count(), default=default("batch_size"), show_default=True,
              help="Samples per PGD batch (bounds memory).")
@click.option("--checks/--no-checks", default=True, show_default=True,
              help="Run the sanity checks (monotonicity, large ε, doubled steps/restarts, gradients, ...).")
@click.option("--autoattack", is_flag=True, help="Also run AutoAttack (standard) at the same norm and ε.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="out/pgd", show_default=True,
              help="Output folder (created if missing; checked writable before the attack).")
@user_errors
def pgd(model, checkpoint, data, n, seed, norm, eps, steps, restarts, alpha, eps_max, bisection_steps,
        batch_size, checks, autoattack, progress, out) -> None:
    """PGD robust accuracy at ε, per-sample minimal ε*, success-vs-ε curve and sanity flags.

    Writes OUT/results.json and OUT/curve.png.
    """
    _check_budget(norm, eps, eps_max)
    folder = ensure_out(out)
    net, images, labels, info = load_model_and_data(model, checkpoint, data, n, seed)
    with torch_threads(pick_threads(net, default("num_threads"))):
        result = evaluate_pgd(net, images, labels, norm=norm, eps=eps, steps=steps, restarts=restarts, alpha=alpha,
                              eps_max=eps_max, bisection_steps=bisection_steps, seed=seed, batch_size=batch_size,
                              checks=checks, check_n=default("pgd_check_n"), progress=progress)
        entry = result.to_dict() | {"model": info["name"], "data": info.get("data") or data,
                                    "checkpoint": info.get("checkpoint"), "labels": "dataset"}
        if autoattack:
            entry["autoattack"] = evaluate_autoattack(net, images, labels, norm=norm, eps=eps, seed=seed,
                                                      batch_size=batch_size, progress=progress).to_dict()
    write_json(entry, folder / "results.json")
    plot_curve(result.curve, eps, norm, folder / "curve.png")
    median = result.median_eps_star
    median = "n/a" if median is None or math.isnan(median) else f"{median:.4g}"
    click.echo(f"clean {result.clean_acc:.4f}  robust@{eps:g} {result.robust_acc:.4f}  "
               f"median ε* {median}  censored {result.n_censored}")
    if autoattack:
        click.echo(f"AutoAttack robust@{eps:g} {entry['autoattack']['robust_acc']:.4f}")
    for flag in map(Flag.from_dict, result.flags):
        click.echo(f"flag {flag.id}: {flag.message}", err=True)
    click.echo(f"wrote {folder / 'results.json'} and {folder / 'curve.png'}")


def plot_curve(curve: list[dict], eps: float, norm: str, path: Path) -> None:
    """Success rate (among correctly classified inputs) against ε, with the evaluation ε marked."""
    import matplotlib

    matplotlib.use("Agg")  # headless: must precede the pyplot import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([c["eps"] for c in curve], [c["success_rate"] for c in curve], marker=".")
    ax.axvline(eps, color="gray", linestyle="--", label=f"ε = {eps:g}")
    ax.set(xlabel=f"ε ({norm})", ylabel="PGD success rate", ylim=(-0.02, 1.02),
           title="PGD success vs budget (correctly classified inputs)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
