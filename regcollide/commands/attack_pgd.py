"""``regcollide attack pgd``: PGD ease (Madry et al. 2018) and, optionally, AutoAttack robust accuracy."""

from __future__ import annotations

from pathlib import Path

import click

from regcollide.commands.options import (
    data_options,
    ensure_out,
    load_model_and_data,
    model_options,
    out_option,
    user_errors,
)


@click.command("pgd")
@model_options
@data_options(default_n=500)
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True,
              help="Threat model.")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Budget ε in pixel units (inputs are in [0, 1]).")
@click.option("--steps", type=click.IntRange(min=1), default=40, show_default=True, help="PGD steps.")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True, help="Random restarts.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Step size [default: 2.5·eps/steps].")
@click.option("--eps-max", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Upper end of the ε* search; samples still robust there are censored "
                   "[default: 4·eps, at most 1 for linf].")
@click.option("--bisection-steps", type=click.IntRange(min=0), default=7, show_default=True,
              help="Bisection iterations of the ε* search.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Samples per PGD batch (bounds memory).")
@click.option("--checks/--no-checks", default=True, show_default=True,
              help="Run the sanity checks (monotonicity, large ε, doubled steps/restarts, gradients, ...).")
@click.option("--autoattack", is_flag=True, help="Also run AutoAttack (standard) at the same norm and ε.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@out_option("out/pgd")
@user_errors
def pgd(model, checkpoint, data, n, seed, norm, eps, steps, restarts, alpha, eps_max, bisection_steps,
        batch_size, checks, autoattack, progress, out) -> None:
    """PGD robust accuracy at ε, per-sample minimal ε*, success-vs-ε curve and sanity flags.

    Writes OUT/results.json and OUT/curve.png.
    """
    import torch

    from regcollide.attacks.pgd.ease import evaluate_pgd
    from regcollide.io import write_json

    net, images, labels, info = load_model_and_data(model, checkpoint, data, n, seed)
    label_source = "dataset"
    num_classes = info.get("num_classes")
    if num_classes and int(labels.max()) >= num_classes:
        # dataset classes the model does not have: attack the model's own clean predictions
        with torch.no_grad():
            labels = net(images).argmax(1)
        label_source = "model predictions"
    result = evaluate_pgd(net, images, labels, norm=norm, eps=eps, steps=steps, restarts=restarts, alpha=alpha,
                          eps_max=eps_max, bisection_steps=bisection_steps, seed=seed, batch_size=batch_size,
                          checks=checks, progress=progress)
    entry = result.to_dict() | {"model": info["name"], "data": info.get("data") or data,
                                "checkpoint": info.get("checkpoint"), "labels": label_source}
    if autoattack:
        from regcollide.attacks.autoattack import evaluate_autoattack

        entry["autoattack"] = evaluate_autoattack(net, images, labels, norm=norm, eps=eps, seed=seed).to_dict()
    folder = ensure_out(out)
    write_json(entry, folder / "results.json")
    plot_curve(result.curve, eps, norm, folder / "curve.png")
    click.echo(f"clean {result.clean_acc:.4f}  robust@{eps:g} {result.robust_acc:.4f}  "
               f"median ε* {result.median_eps_star:.4g}  censored {result.n_censored}")
    if autoattack:
        click.echo(f"AutoAttack robust@{eps:g} {entry['autoattack']['robust_acc']:.4f}")
    for flag in result.flags:
        click.echo(f"flag {flag['id']}: {flag['message']}", err=True)
    click.echo(f"wrote {folder / 'results.json'} and {folder / 'curve.png'}")


def plot_curve(curve: list[dict], eps: float, norm: str, path: Path) -> None:
    """Success rate (among correctly classified inputs) against ε, with the evaluation ε marked."""
    import matplotlib

    matplotlib.use("Agg")
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
