"""Per-model cost of the library training loop as the study configures it, against the loop's defaults.

The study trains ~110 small models through ``regcollide.training.loop.train`` (``regcollide/study/train.py``).
"study" is that configuration: no resumable states, no per-epoch test accuracy, no end-of-run evaluation.
"states" adds a state and the test accuracy after every epoch; "defaults" also the end-of-run eval of
``EvalSettings`` (the loop's defaults for all three). Both train the same job for a fixed
number of epochs (the convergence rule is off), interleaved (study, states, defaults, study, ...) in one process
with one torch thread; each repeat prints the load average it ran under, and the medians are reported.
Wall time includes building the model, the Accelerator and the data loaders.

    python benchmarks/bench_study_train.py --quick      # mlp-h256, 5 epochs, 3 repeats (about 30 s idle)
    python benchmarks/bench_study_train.py --job vit-p7-32-s0 --epochs 10 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from regcollide.commands.argtypes import int_range
from regcollide.study.design import expand, load_design
from regcollide.study.train import job_config
from regcollide.training.loop import train

DESIGN = Path(__file__).resolve().parents[1] / "configs" / "study" / "design.yaml"


VARIANTS = ("study", "states", "defaults")


def _time(job, runs: Path, variant: str) -> float:
    config = job_config(job, runs)
    if variant != "study":  # a state after every epoch and the test accuracy after every epoch
        config.train.save_states = True
        config.eval.every_epoch = True
    if variant == "defaults":
        config.eval.enabled = True  # the end-of-run eval with every EvalSettings default
    start = time.perf_counter()
    train(config, overwrite=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default="width-256-s0", help="a job name of configs/study/design.yaml")
    parser.add_argument("--epochs", type=int_range(1, 10**4), default=None, help="default 10; 5 with --quick")
    parser.add_argument("--repeats", type=int_range(1, 1000), default=3)
    parser.add_argument("--quick", action="store_true", help="5 epochs, 3 repeats")
    args = parser.parse_args()
    epochs = args.epochs or (5 if args.quick else 10)
    jobs = {j.name: j for j in expand(load_design(DESIGN))}
    if args.job not in jobs:
        parser.error(f"--job {args.job!r} is not a job of {DESIGN.name}; e.g. {', '.join(list(jobs)[:3])}")
    torch.set_num_threads(1)
    job = dataclasses.replace(jobs[args.job], train={**jobs[args.job].train, "max_epochs": epochs})
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in VARIANTS:
                times[name].append(_time(job, Path(tmp), name))
            print(f"repeat {rep + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in VARIANTS)
                  + f" (load average {os.getloadavg()[0]:.1f})", flush=True)
    med = {name: statistics.median(times[name]) for name in VARIANTS}
    print(f"{args.job}, {epochs} epochs, median of {args.repeats}: "
          + ", ".join(f"{n} {med[n]:.2f} s ({med[n] / med['study']:.2f}x)" for n in VARIANTS))


if __name__ == "__main__":
    main()
