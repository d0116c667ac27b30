"""`regcollide eval RUN... --out DIR`: one eval entry (JSON) per trained run folder.

Every option's default comes from :class:`regcollide.evaluation.settings.EvalSettings`, the one schema
shared with the end-of-run eval of training and `regcollide attack pgd`. Runs on one process, or on
several with `accelerate launch -m regcollide.cli eval ...`: the per-sample parts are sharded over the
processes and only the main process writes files. A broken run is reported and skipped; the command
evaluates the others and exits non-zero at the end.
"""

from __future__ import annotations

from pathlib import Path

import click

from regcollide.commands.options import DATA_HELP, check_sample_memory, ensure_out, user_errors
from regcollide.commands.types import count, finite
from regcollide.evaluation.evaluate import evaluate_run
from regcollide.evaluation.settings import MAX_THREADS, NORMS, PARTS, EvalSettings, default
from regcollide.io import write_json
from regcollide.runs import read_run_config


def _parts(ctx, param, value: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise click.BadParameter(f"unknown part(s) {unknown}; choose a comma list from {','.join(PARTS)}")
    return parts


def _setting(name: str, type_, help_: str):
    """An option for the EvalSettings field ``name``, with the schema's default."""
    return click.option(f"--{name.replace('_', '-')}", name, type=type_, default=default(name),
                        show_default=True, help=help_)


@click.command("eval")
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Folder for the entries: one <run folder name>.json per run.")
@click.option("--parts", default=",".join(PARTS), show_default=True, callback=_parts,
              help="Comma list of parts to evaluate.")
@click.option("--data", default=None, help=f"Override each run's dataset. {DATA_HELP}")
@_setting("n", count(), "Test images for clean accuracy, PGD and the polytope pool.")
@_setting("norm", click.Choice(NORMS), "Threat model.")
@_setting("eps", finite(0, min_open=True), "Attack budget in pixel units ([0, 1] images).")
@_setting("pgd_steps", count(), "PGD steps.")
@_setting("pgd_restarts", count(), "PGD random restarts.")
@_setting("autoattack_n", count(), "AutoAttack (standard) attacks the first min(this, n) of PGD's images.")
@_setting("nullspace_n", count(), "Images for the valid-image Null-space search.")
@_setting("polytope_samples", count(), "Samples drawn inside each polytope.")
@_setting("polytope_steps", count(), "Optimizer step budget per polytope vertex.")
@_setting("batch_size", count(), "Images per batch (bounds memory; does not change results).")
@_setting("seed", count(min=0), "Seed for image selection and random starts.")
@_setting("num_threads", count(min=0, max=MAX_THREADS), "Torch CPU threads; 0 picks 1 for small models.")
@click.option("--force", is_flag=True, help="Recompute every part, ignoring entries already in --out.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors
def eval_cmd(runs, out, parts, data, force, progress, **values):
    """Evaluate trained RUN folders into leaderboard entries (clean, PGD, AutoAttack, audit, collisions).

    Parts already in an entry in --out are reused when the weights and the settings they depend on are
    unchanged. Example: regcollide eval runs/mlp-erm runs/mlp-singular --out results/ --n 200
    """
    from accelerate import Accelerator  # heavy: imported only when the command runs, not for --help

    settings = EvalSettings(parts=parts, data=data, **values)
    if "polytope" in parts:
        _check_polytope_memory(runs, settings.polytope_samples)  # before the minutes of the earlier parts
    out_dir = ensure_out(out)  # checked writable before any work
    accelerator = Accelerator()
    failed = [f"{run}: {err}" for run in runs if (err := _evaluate_one(run, out_dir, settings, accelerator,
                                                                         force, progress))]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(runs)} runs failed: " + "; ".join(failed))


def _check_polytope_memory(runs: tuple[str, ...], samples: int) -> None:
    """Refuse a --polytope-samples that no run's inputs can fit in memory, before any run is evaluated."""
    for run in runs:
        try:
            model = read_run_config(run)["model"]
        except (ValueError, OSError):  # a broken run folder is reported by its own evaluation, in one line
            continue
        chans, size = model.get("in_chans"), model.get("img_size")
        if isinstance(chans, int) and isinstance(size, int):
            check_sample_memory(samples, (chans, size, size), "--polytope-samples")


def _evaluate_one(run: str, out_dir: Path, settings: EvalSettings, accelerator, force: bool,
                  progress: bool) -> str | None:
    """Evaluate one run and write its entry; the one-line error of a broken run, or None."""
    target = out_dir / f"{Path(run).resolve().name}.json"
    # An empty dict reuses nothing (not even the run's results.json); None falls back to results.json.
    cache = {} if force else (target if target.is_file() else None)
    try:
        entry = evaluate_run(run, settings, accelerator=accelerator, progress=progress, cache=cache)
    except (ValueError, OSError, KeyError) as err:  # a broken run folder; bugs still propagate
        message = str(err.args[0] if err.args else err).splitlines()[0]
        click.echo(f"error: {run}: {message}", err=True)
        return message
    if accelerator.is_main_process:
        write_json(entry, target)
        reused = f" (reused: {', '.join(entry['cached_parts'])})" if entry["cached_parts"] else ""
        click.echo(f"{target}{reused}")
    return None
