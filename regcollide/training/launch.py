"""Launching a run: the Accelerator, the run folder claimed by the main process, tracker hyperparameters."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from regcollide import runs
from regcollide.training.config import Config, to_dict


def use_cpu(cpu: bool = False) -> bool:
    """CPU training when asked, or when launched on several processes with no accelerator device.

    ``accelerate launch --multi_gpu`` on a CPU-only machine starts the processes but accelerate only forms a
    gloo group (DistributedType.MULTI_CPU) when the Accelerator is told to use the CPU.
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return cpu or (distributed and not torch.accelerator.is_available())


def make_accelerator(config: Config, cpu: bool = False) -> Accelerator:
    """The Accelerator :func:`train` builds when none is passed (trackers are attached to the run folder)."""
    return Accelerator(cpu=use_cpu(cpu), mixed_precision=config.train.mixed_precision,
                       rng_types=[])  # the sampler is seeded by (seed, epoch): nothing to sync


def claim_on_main(accelerator: Accelerator, config: Config, default_name: str, overwrite: bool) -> Path:
    """The main process claims a fresh run folder; every process learns its path (or the one-line error)."""
    outcome = [None]
    if accelerator.is_main_process:
        try:
            outcome = [str(runs.claim_run_dir(config.out_dir, config.run_name, default_name, overwrite))]
        except runs.RunFolderError as err:
            outcome = [f"error:{err}"]
    outcome = broadcast_object_list(outcome) if accelerator.num_processes > 1 else outcome
    if outcome[0].startswith("error:"):
        raise runs.RunFolderError(outcome[0][len("error:"):])
    return Path(outcome[0])


def tracker_config(config: Config) -> dict[str, int | float | str | bool]:
    """The full resolved config flattened to ``section.key`` scalars (what trackers accept as hparams)."""
    def flat(tree, prefix: str) -> dict:
        if isinstance(tree, dict):
            return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        if isinstance(tree, (bool, int, float, str)):
            return {prefix[:-1]: tree}
        return {prefix[:-1]: "none" if tree is None else str(tree)}

    return flat(to_dict(config), "")
