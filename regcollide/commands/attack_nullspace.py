"""``regcollide attack nullspace``: exact feature collisions from ker(W1) (Ozbulak et al. 2022), verified."""

from __future__ import annotations

import click

from regcollide.commands.options import (
    data_options,
    ensure_out,
    load_model_and_data,
    model_options,
    out_option,
    user_errors,
)
from regcollide.commands.types import count, finite

MODES = ("repeat", "per_patch", "random", "masked")


@click.command("nullspace")
@model_options
@data_options(default_n=16)
@click.option("--beta", type=finite(0, 1e6, min_open=True), default=1.0, show_default=True,
              help="Size β of the unit kernel vector on each patch (‖P‖₂ = β for a Linear first layer).")
@click.option("--mode", type=click.Choice(MODES), default="repeat", show_default=True,
              help="repeat: one kernel vector on every patch; per_patch: a different one per patch; random: "
                   "random combinations; masked: only patches inside a centred region (β_i = 0 elsewhere).")
@click.option("--collisions", type=count(1, 10_000), default=1, show_default=True,
              help="Distinct colliding images per input.")
@click.option("--valid-image", is_flag=True,
              help="Keep every colliding image in [0, 1] while staying exactly in the kernel (no clipping).")
@click.option("--adversarial-eps", type=finite(0, 1, min_open=True), default=None,
              help="Also build colliding adversarial examples (Eq. 7): L∞ PGD at this ε, then kernel "
                   "perturbations inside the same ε-ball.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@out_option("out/nullspace")
@user_errors
def nullspace(model, checkpoint, data, n, seed, beta, mode, collisions, valid_image, adversarial_eps, progress,
              out) -> None:
    """Colliding images x̂ = x + β·P with P from the kernel of the first weight layer, verified.

    Every collision is measured (output and first-layer residuals, prediction agreement, a same-norm noise
    baseline). Exact only for a Linear or patchify-conv first layer (or a stride-periodic kernel of another
    conv); otherwise the result says exact: false and uses the operator's smallest singular vectors.
    Data is adapted to the model: grey digits are replicated to RGB and resized to its input size.
    Writes OUT/results.json and OUT/grid.png.
    """
    import torch

    from regcollide.attacks.nullspace.plot import save_grid
    from regcollide.attacks.nullspace.search import evaluate_nullspace
    from regcollide.io import write_json

    folder = ensure_out(out)  # before the attack: a bad --out must not cost a whole run
    net, images, labels, info = load_model_and_data(model, checkpoint, data, n, seed)
    result, output = evaluate_nullspace(net, images, labels, beta=beta, mode=mode, collisions=collisions,
                                        valid_image=valid_image, seed=seed, name=info["name"], progress=progress,
                                        return_output=True)
    entry = result.to_dict() | {"data": info.get("data") or data, "checkpoint": info.get("checkpoint")}
    if adversarial_eps is not None:
        from regcollide.attacks.nullspace.adversarial import colliding_adversarial

        with torch.no_grad():
            logits = net(images)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise click.ClickException("--adversarial-eps needs a classifier (logits of shape (N, K)).")
        # the model's own clean predictions are the labels PGD moves away from (dataset classes may differ)
        adversarial = colliding_adversarial(net, images, logits.argmax(1), eps=adversarial_eps,
                                            collisions=max(collisions, 2), beta=beta, seed=seed)
        entry["colliding_adversarial"] = adversarial.to_dict()
    write_json(entry, folder / "results.json")
    save_grid(folder / "grid.png", images, output.images, output.reference_outputs, output.colliding_outputs,
              collisions=collisions, exact=result.exact)
    verdict = "exact collisions" if result.exact else "NOT exact (approximate directions)"
    click.echo(f"{info['name']}: first layer '{result.first_layer}' ({result.kind}), nullity {result.nullity}: "
               f"{verdict}")
    click.echo(f"max relative output residual {result.max_rel_output_residual:.3g}  "
               f"first layer {result.max_rel_first_layer_residual:.3g}  "
               f"same-norm noise {result.noise_min_rel_output_residual:.3g}  "
               f"prediction agreement {result.prediction_agreement:.3f}")
    moved = "n/a" if result.relative_distance is None else f"{result.relative_distance:.3f}"
    click.echo(f"valid colliding images (in [0, 1], exact, moved >= 1/255): {result.valid_count} of "
               f"{result.n * result.collisions}; moved {moved} of the median distance between two inputs")
    if not result.exact:
        click.echo(f"reason: {result.reason}", err=True)
    if adversarial_eps is not None:
        adv = entry["colliding_adversarial"]
        click.echo(f"colliding adversarial examples: {adv['count']} distinct (>= {adv['min_distance']:.3g} apart "
                   f"in L2) within ε={adversarial_eps:g}, agreement with x′ {adv['agreement_with_adversarial']:.3f}")
    click.echo(f"wrote {folder / 'results.json'} and {folder / 'grid.png'}")
