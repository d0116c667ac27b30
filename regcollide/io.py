"""Safe I/O, a leaf module: atomic writes, JSON results with plain numbers, and weights read without pickle.

A run folder holds ``config.yaml``, ``model.safetensors``, ``metrics.jsonl``, ``results.json`` and the
accelerate state used for resuming. Nothing here unpickles arbitrary objects: weights are read with
safetensors (or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.safetensors"


class CheckpointError(ValueError):
    """A run folder or weights file that cannot be used; the message says what is wrong."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Save ``model``'s state dict as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state))


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` strictly; on any mismatch raise one error naming the mismatched layers."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("shape mismatch", shapes), ("missing in checkpoint", missing),
                             ("not in model", unexpected)):
            if items:
                shown = ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source} does not fit this architecture; " + "; ".join(parts) +
                              ". Check the model name and width in the run's config.yaml.")
    model.load_state_dict(state, strict=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a ``torch.save`` state dict read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' does not exist (weights load only from local files).")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        # Truncated, empty, random bytes, or a pickle that is not plain tensors (refused, never executed).
        raise CheckpointError(f"cannot read weights file '{path}': {_first_line(err)}. Pass a complete "
                              "safetensors file or a torch.save state dict of tensors.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file '{path}' does not hold a state dict of tensors.")
    return state


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load safetensors (or a ``torch.save`` state dict, with ``weights_only=True``) into ``model``."""
    load_state_dict_checked(model, read_state_dict(path), source=str(path))
    return model


def to_plain(obj: Any) -> Any:
    """Dataclasses, tensors and numpy values -> JSON-ready Python values; NaN and inf become ``None``."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_plain(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_plain(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return to_plain(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(to_plain(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as sorted, indented JSON via a temporary file and a rename."""
    path = Path(path)
    atomic_write_bytes(path, dumps(obj).encode())
    return path


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)
