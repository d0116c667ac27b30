"""Run folders: the resolved config, weights, metrics log and training states written by training."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from torch import nn

from regcollide.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    atomic_write_bytes,
    load_weights,
)
from regcollide.models import create_model


def read_run_config(run_dir: str | os.PathLike) -> dict:
    run = Path(run_dir)
    config_path = run / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"'{run}' is not a run folder: no {CONFIG_FILE}. Pass a folder written by "
                              "train/regularized.py.")
    with open(config_path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config.get("model"), dict) or "name" not in config["model"]:
        raise CheckpointError(f"{config_path} has no 'model.name'.")
    return config


def build_model_from_config(config: dict) -> nn.Module:
    spec = dict(config["model"])
    name = spec.pop("name")
    return create_model(name, **{k: v for k, v in spec.items() if v is not None})


def load_run(run_dir: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model from ``config.yaml`` and load ``model.safetensors``; returns (model in eval mode, config)."""
    config = read_run_config(run_dir)
    model = build_model_from_config(config)
    load_weights(model, Path(run_dir) / WEIGHTS_FILE)
    return model.eval(), config


# ------------------------------------------------------------------ training state (accelerate) and run folders
# A run folder keeps its resumable accelerate states under ``state/``: one complete ``step_NNNNNNNN`` folder
# per checkpoint plus a ``latest`` file naming the newest one. A state is written into a hidden temporary
# folder and renamed into place only when complete; ``latest`` is replaced atomically afterwards, and older
# states are deleted last. A crash at any point therefore leaves ``latest`` naming a complete state.

STATE_DIR = "state"
LATEST_FILE = "latest"


def state_name(step: int) -> str:
    return f"step_{step:08d}"


def save_training_state(accelerator, run_dir: str | Path, step: int, keep: int = 2) -> Path:
    """``accelerator.save_state`` into ``run_dir/state/step_N`` atomically; every process must call this.

    Keeps the ``keep`` newest states. Returns the final folder.
    """
    root = Path(run_dir) / STATE_DIR
    final = root / state_name(step)
    tmp = root / f".tmp-{state_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()  # every process writes its own RNG state into tmp
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # a stale state of the same step from an earlier attempt
        os.replace(tmp, final)
        atomic_write_bytes(root / LATEST_FILE, (final.name + "\n").encode())
        for old in list_training_states(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_training_states(run_dir: str | Path) -> list[Path]:
    """Complete states in step order (hidden temporary folders are never listed)."""
    root = Path(run_dir) / STATE_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_training_state(run_dir: str | Path) -> Path | None:
    """The state named by ``state/latest``, or the newest complete one if the pointer is missing."""
    root = Path(run_dir) / STATE_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if candidate.is_dir():
            return candidate
    states = list_training_states(run_dir)
    return states[-1] if states else None


def remove_partial_states(run_dir: str | Path) -> None:
    """Delete temporary state folders left by a crash mid-save."""
    root = Path(run_dir) / STATE_DIR
    if root.is_dir():
        for tmp in root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


class TrainState:
    """Step counters saved with every accelerate state (``register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.epoch = 0            # completed epochs
        self.step_in_epoch = 0    # optimizer steps done in the current epoch (batches to skip on resume)
        self.global_step = 0
        self.samples_seen = 0     # by this process; with shard_digest, shows each process saw its own shard
        self.shard_digest = 0

    def state_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in vars(self):
            setattr(self, key, int(state[key]))


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes): equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, epoch or event, written by the main process."""

    def __init__(self, path: str | Path, accelerator) -> None:
        self.path, self.accelerator = Path(path), accelerator

    def write(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
                handle.flush()
        loggable = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if "step" in record and loggable:
            self.accelerator.log(loggable, step=record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they will be replayed by a resumed run); atomic rewrite."""
        if self.accelerator.is_main_process and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())
        self.accelerator.wait_for_everyone()


def prepare_run_dir(out_dir: str, run_name: str | None, default_name: str, resume: str | None,
                    overwrite: bool, accelerator) -> tuple[Path, bool]:
    """Choose the run folder and say whether it is resumed. Creates nothing (see :func:`create_run_dir`).

    ``resume`` is None (a new run), ``""`` (resume the config's own folder) or a run folder path. A new run
    with an explicit ``run_name`` refuses an existing folder unless ``overwrite``; without a name it takes
    ``default_name``, then ``default_name-2``, ``-3``, ... whichever is free.
    """
    if resume:
        return Path(resume), True
    base = Path(out_dir) / (run_name or default_name)
    if resume == "":
        return base, base.is_dir()
    if run_name is None and not overwrite:
        candidate, k = base, 1
        while candidate.exists():
            k += 1
            candidate = base.with_name(f"{base.name}-{k}")
        return candidate, False
    if base.exists() and any(base.iterdir()) and not overwrite:
        raise ValueError(f"run folder {base} already exists: pass --resume {base} to continue it, "
                         "--overwrite to replace it, or --set run_name=<new name>")
    return base, False


def create_run_dir(run_dir: Path, config_yaml: str, resuming: bool, overwrite: bool, accelerator) -> None:
    """Create (or reuse, when resuming) the run folder and write the resolved ``config.yaml``."""
    accelerator.wait_for_everyone()  # every process has chosen its folder name before one appears
    if accelerator.is_main_process:
        if overwrite and not resuming and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / CONFIG_FILE, config_yaml.encode())
        remove_partial_states(run_dir)
    accelerator.wait_for_everyone()
