"""`regcollide eval RUN... --out DIR`: one eval entry (JSON) per trained run folder.

Runs on one process, or on several with `accelerate launch -m regcollide.cli eval ...`: the per-sample
parts are sharded over the processes and only the main process writes files.
"""

from __future__ import annotations

from pathlib import Path

import click

from regcollide.commands.options import ensure_out, user_errors
from regcollide.evaluation.settings import PARTS


def _parts(ctx, param, value: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise click.BadParameter(f"unknown part(s) {unknown}; choose a comma list from {','.join(PARTS)}")
    return parts


@click.command("eval")
@click.argument("runs", metavar="RUN...", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Folder for the entries: one <run folder name>.json per run.")
@click.option("--parts", default=",".join(PARTS), show_default=True, callback=_parts,
              help="Comma list of parts to evaluate.")
@click.option("--data", default=None, help="Dataset spec overriding the one each run was trained on.")
@click.option("--n", type=click.IntRange(min=1), default=500, show_default=True,
              help="Test images for clean accuracy, PGD and the polytope targets.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Attack budget in pixel units ([0, 1] images).")
@click.option("--pgd-steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--pgd-restarts", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--autoattack-n", type=click.IntRange(min=1), default=200, show_default=True,
              help="Test images for AutoAttack (standard version; slow on CPU).")
@click.option("--nullspace-n", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--polytope-samples", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Recompute every part, ignoring entries already in --out.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors
def eval_cmd(runs, out, parts, data, n, norm, eps, pgd_steps, pgd_restarts, autoattack_n, nullspace_n,
             polytope_samples, seed, force, progress):
    """Evaluate trained RUN folders into leaderboard entries (clean, PGD, AutoAttack, audit, collisions).

    Parts already in an entry in --out are reused when the weights and the settings they depend on are
    unchanged. Example: regcollide eval runs/mlp-erm runs/mlp-singular --out results/ --n 200
    """
    from accelerate import Accelerator

    from regcollide.evaluation.evaluate import EvalSettings, evaluate_run
    from regcollide.io import write_json

    settings = EvalSettings(parts=parts, data=data, n=n, norm=norm, eps=eps, pgd_steps=pgd_steps,
                            pgd_restarts=pgd_restarts, autoattack_n=autoattack_n, nullspace_n=nullspace_n,
                            polytope_samples=polytope_samples, seed=seed)
    accelerator = Accelerator()
    out_dir = ensure_out(out)
    for run in runs:
        target = out_dir / f"{Path(run).resolve().name}.json"
        # An empty dict reuses nothing (not even the run's results.json); None falls back to results.json.
        cache = {} if force else (target if target.is_file() else None)
        entry = evaluate_run(run, settings, accelerator=accelerator, progress=progress, cache=cache)
        if accelerator.is_main_process:
            write_json(entry, target)
            reused = f" (reused: {', '.join(entry['cached_parts'])})" if entry["cached_parts"] else ""
            click.echo(f"{target}{reused}")
