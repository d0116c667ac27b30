"""Run folders: claimed atomically, marked as ours, and read back (config, weights, metrics log).

A run folder is ``out_dir/<run name>``. The name is one safe path component; the folder is created with
``os.mkdir`` (which fails if it exists, so two trainings never share one) and immediately gets a marker file
``.regcollide-run``. ``--overwrite`` deletes a folder only if it carries that marker and lies directly inside
``out_dir``. Training states under ``state/`` are written by :mod:`regcollide.training.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
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
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path} is not valid YAML ({' '.join(str(err).split())[:200]}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "name" not in config["model"]:
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
    # NaN/inf weights make every audit rank and attack number meaningless (or crash tolerance checks).
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()),
               None)
    if bad is not None:
        raise CheckpointError(f"{Path(run_dir) / WEIGHTS_FILE} holds NaN or inf values in '{bad}': the training "
                              "that wrote it diverged; retrain, or resume from an earlier state.")
    return model.eval(), config


# ------------------------------------------------------------------ run folders: names, claiming, overwrite

RUN_MARKER = ".regcollide-run"
_MAX_SUFFIX = 10_000


class RunFolderError(ValueError):
    """A run name or run folder that cannot be used; the message is one line saying what to do."""


def check_run_name(name: str) -> str:
    """``name`` if it is one safe path component (no separators, not ``..``, no leading ``-`` or ``.``)."""
    bad = (not name or name != name.strip() or "/" in name or "\\" in name or os.sep in name
           or name.startswith(("-", ".")) or "\0" in name or any(ch in name for ch in "\n\r\t"))
    if bad or Path(name).is_absolute() or len(name) > 200:
        raise RunFolderError(f"run_name {name!r} is not a plain folder name; use letters, digits, '-', '_' "
                             "(no '/', no leading '.' or '-')")
    return name


def is_marked_run(path: str | Path, out_dir: str | Path) -> bool:
    """True for a folder that carries our marker and lies directly inside ``out_dir`` (symlinks resolved)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not (path / RUN_MARKER).is_file():
        return False
    return path.resolve().parent == Path(out_dir).resolve()


def _mkdir_marked(path: Path) -> bool:
    """Create ``path`` and its marker; False if it already exists (the atomic claim)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    (path / RUN_MARKER).write_text(json.dumps({"created": time.time(), "pid": os.getpid()}) + "\n")
    return True


def claim_run_dir(out_dir: str | Path, run_name: str | None, default_name: str, overwrite: bool = False) -> Path:
    """Create a fresh, marked run folder and return it; call on the main process only.

    With an explicit ``run_name`` an existing folder is refused, or replaced under ``overwrite`` if it is a
    marked run inside ``out_dir``. Without one, ``default_name``, ``default_name-2``, ... whichever is free
    (what ``make run`` relies on).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"out_dir {str(out)!r} is a file; set out_dir to a folder")
    out.mkdir(parents=True, exist_ok=True)
    name = check_run_name(run_name if run_name is not None else default_name)
    base = out / name
    if run_name is None and not overwrite:
        for k in range(1, _MAX_SUFFIX):
            candidate = base if k == 1 else out / f"{name}-{k}"
            if _mkdir_marked(candidate):
                return candidate
        raise RunFolderError(f"no free run folder name {name}-N in {out}; set run_name")
    if _mkdir_marked(base):
        return base
    if not overwrite:
        raise RunFolderError(f"run folder {base} already exists: pass --resume {base} to continue it, "
                             "--overwrite to replace it, or --set run_name=<new name>")
    if not is_marked_run(base, out):
        raise RunFolderError(f"--overwrite refused: {base} is not a run folder written by regcollide (no "
                             f"{RUN_MARKER}); move it away or choose another run_name")
    shutil.rmtree(base)
    if not _mkdir_marked(base):  # another training claimed the name between the delete and the create
        raise RunFolderError(f"run folder {base} was claimed by another training; choose another run_name")
    return base


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes): equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # reshape(-1): a 0-dim buffer (BatchNorm's num_batches_tracked) cannot be viewed as bytes directly
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ------------------------------------------------------------------ metrics log


def read_metrics(path: str | Path) -> list[dict]:
    """Records of ``metrics.jsonl``; a torn line (a crash mid-write) and blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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
        """Drop lines logged after ``step`` (a resumed run replays them) and torn lines; atomic rewrite."""
        if self.accelerator.is_main_process and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
            atomic_write_bytes(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())
        self.accelerator.wait_for_everyone()
