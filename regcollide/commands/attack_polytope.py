"""``regcollide attack polytope``: polytopes of colliding inputs (Li, Zhang & Malik, NeurIPS 2019)."""

from __future__ import annotations

import click
from click.core import ParameterSource

from regcollide.commands.options import (
    check_sample_memory,
    data_options,
    ensure_out,
    load_model_and_data,
    model_options,
    out_option,
    user_errors,
)
from regcollide.commands.types import count, finite

POOL = 1000  # extra test images: the 'other' starts and the dataset distance (>= 1000 pairs) come from them
SETTINGS = ("default", "li2019")  # regcollide.attacks.polytope.presets.SETTINGS plus our default


@click.command("polytope")
@model_options
@data_options(default_n=4)
@click.option("--layer", default=None, metavar="NAME",
              help="Module whose output feeds a ReLU [default: the first one]; a wrong name lists the valid ones.")
@click.option("--vertices", type=count(2, 1000), default=5, show_default=True,
              help="K, vertices per polytope (one per pushed inactive unit).")
@click.option("--samples", type=count(1, 10**7), default=2000, show_default=True,
              help="Dirichlet(1) convex combinations sampled per target (and sphere points for the control).")
@click.option("--loss", type=click.Choice(["hinge", "li2019"]), default="hinge", show_default=True,
              help="Hold of the other inactive units: hinge (<= 0) or li2019 (absolute value, the original).")
@click.option("--init", type=click.Choice(["target", "other"]), default="target", show_default=True,
              help="Start the vertices at the target or at an image of another class (Li et al., Table 1).")
@click.option("--steps", type=count(1, 10**7), default=20000, show_default=True,
              help="Budget: at most this many Adam steps; the stopping rule (spread plateaued, residual <= 1%) "
                   "usually ends earlier, and a search that hits the budget is flagged, not reported.")
@click.option("--beta", type=finite(0, 1e6), default=0.001, show_default=True,
              help="Weight of the push term against the collision term.")
@click.option("--lr", type=finite(0, 10, min_open=True), default=0.03, show_default=True,
              help="Constant Adam learning rate (constant, so the stopping rule, not the budget, sets the result).")
@click.option("--setting", type=click.Choice(SETTINGS), default="default", show_default=True,
              help="li2019 fixes the loss, vertices, unit choice, start, budget and samples to Li et al.'s "
                   "(docs/collisions.md lists each with its source); the options it fixes cannot be given too.")
@click.option("--exact-reference", is_flag=True,
              help="Also solve the exact polytope's vertices by linear programming (Linear first layer only).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@out_option("out/polytope")
@user_errors
def polytope(model, checkpoint, data, n, seed, layer, vertices, samples, loss, init, steps, beta, lr, setting,
             exact_reference, progress, out) -> None:
    """Vertices of a polytope of inputs colliding with each of N test images at a ReLU layer.

    Reports the share of sampled points classified like the target, their mean top probability, the
    vertex spread against the spread of the data, the feature residual and a random-sphere control.
    Writes OUT/results.json and OUT/polytope.png.
    """
    import torch

    from regcollide.attacks.polytope.evaluate import evaluate_polytope
    from regcollide.attacks.polytope.plot import plot_polytope
    from regcollide.data import adapt_images, load_tensors
    from regcollide.io import write_json

    search = _search_options(setting, dict(vertices=vertices, samples=samples, loss=loss, init=init, steps=steps,
                                           beta=beta, lr=lr))
    folder = ensure_out(out)  # before the search: a bad --out must not cost a whole run
    net, targets, target_labels, info = load_model_and_data(model, checkpoint, data, n, seed)
    # before the search, which can take minutes
    check_sample_memory(search["samples"], info["input_shape"], "--samples")
    pool, pool_labels = load_tensors(info.get("data") or data, "test", n=POOL, seed=seed + 1)
    pool = adapt_images(pool, *info["input_shape"][:2])  # same geometry as the targets
    device = next(net.parameters()).device
    images = torch.cat([targets, pool]).to(device)
    labels = torch.cat([target_labels, pool_labels]).to(device)
    result = evaluate_polytope(net, images, labels, layer=layer, targets=len(targets), data_images=pool.to(device),
                               seed=seed, progress=progress, exact_reference=exact_reference, **search)
    entry = result.to_dict() | {"model": info["name"], "data": info.get("data") or data,
                                "checkpoint": info.get("checkpoint"), "setting": setting}
    write_json(entry, folder / "results.json")
    plot_polytope(result, folder / "polytope.png")
    ratio = (f"n/a (at the budget, all targets: {entry['distance_ratio_all']:.4f})" if result.distance_ratio is None
             else f"{result.distance_ratio:.4f}")
    click.echo(f"layer {result.layer}: success {result.success_rate:.4f}  top prob {result.mean_top_prob:.4f}  "
               f"distance ratio {ratio}  max residual {result.max_rel_feature_residual:.4g}  "
               f"ball control {entry['ball_success_rate']:.4f}")
    click.echo(f"converged {entry['converged_targets']}/{entry['targets']} targets (steps used {entry['steps_used']} "
               f"of {entry['steps']}), failed {entry['failed_targets']}, valid {entry['valid_targets']}")
    if exact_reference:
        exact = entry["exact_distance_ratio"]
        click.echo("exact polytope (linear programs): " + ("n/a, the layer is not a Linear first layer"
                                                           if exact is None else f"distance ratio {exact:.4f}"))
    for flag in entry["flags"]:
        click.echo(f"{flag['severity']}: {flag['message']}", err=True)
    click.echo(f"wrote {folder / 'results.json'} and {folder / 'polytope.png'}")


def _search_options(setting: str, chosen: dict) -> dict:
    """The search keywords: the command line's, or those ``setting`` fixes (which may not be given as well)."""
    if setting == "default":
        return chosen
    from regcollide.attacks.polytope.presets import get_setting

    fixed = get_setting(setting)
    ctx = click.get_current_context()
    clash = [f"--{key.replace('_', '-')}" for key in fixed.fixed
             if key in chosen and ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE]
    if clash:
        raise click.UsageError(f"--setting {setting} fixes {', '.join(clash)}; drop "
                               f"{'them' if len(clash) > 1 else 'it'}, or use --setting default to choose every "
                               "option yourself")
    return chosen | fixed.kwargs()
