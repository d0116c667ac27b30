"""Any weights file, any layout: plain torchvision/timm/RobustBench state dicts and our run folders' files.

Files are read only as safetensors or with ``torch.load(weights_only=True)``: nothing is unpickled. Wrapped
checkpoints (``{"state_dict": ...}``, ``{"model": ...}``, RobustBench's ``{"last": ...}``) are unwrapped,
and key prefixes (``module.`` from DataParallel, ``model.``, ``_orig_mod.`` from ``torch.compile``, our
``net.``) are stripped or added until the keys match the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from regcollide.io import CheckpointError, load_state_dict_checked

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "state", "last", "ema")
STRIPPABLE_PREFIXES = ("module.", "model.", "_orig_mod.", "net.", "base_model.")
LOCAL_FILE_HINT = "a safetensors file or a torch.save state dict"


def _read_raw(path: Path) -> object:
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"weights file '{path}' is empty: pass {LOCAL_FILE_HINT}.")
    with open(path, "rb") as handle:
        head = handle.read(8)
    # safetensors starts with a little-endian u64 header length; a zip (torch.save) starts with "PK".
    looks_safetensors = path.suffix == ".safetensors" or (head[:2] != b"PK" and
                                                           int.from_bytes(head, "little") < size)
    try:
        if looks_safetensors:
            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, KeyError, ImportError) as err:
        raise CheckpointError(_unreadable(path, err)) from err
    except Exception as err:  # torch.load's weights-only unpickler raises UnpicklingError and others
        raise CheckpointError(_unreadable(path, err)) from err


def _unreadable(path: Path, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return (f"weights file '{path}' cannot be read as {LOCAL_FILE_HINT} loadable without unpickling "
            f"(truncated, corrupt or holding code?): {first}")


def unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a (possibly wrapped) checkpoint: ``{"state_dict": {...}, "epoch": 3}`` -> ``{...}``."""
    for _ in range(4):  # wrappers nest at most a few levels deep
        if not isinstance(obj, dict):
            break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(f"weights file '{source}' holds no state dict (no tensors found): pass "
                          f"{LOCAL_FILE_HINT}.")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, unwrapped; refuses missing, empty, corrupt and non-finite files."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' does not exist (weights load only from local files).")
    state = unwrap(_read_raw(path), str(path))
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"weights file '{path}' holds NaN or inf values in '{key}': the training "
                                  "that wrote it diverged; use an earlier checkpoint.")
    return state


def _variants(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``state`` and its versions with shared wrapper prefixes stripped, one prefix at a time."""
    out = [state]
    for _ in range(3):
        current = out[-1]
        prefix = next((p for p in STRIPPABLE_PREFIXES if current and all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        out.append({k[len(prefix):]: v for k, v in current.items()})
    return out


def _overlap(state: dict, own: dict) -> int:
    return sum(k in own and state[k].shape == own[k].shape for k in state)


def fit_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(module to load into, keys renamed for it): the whole model, or its inner ``net`` for a bare file."""
    targets = [model] + ([model.net] if isinstance(getattr(model, "net", None), nn.Module) else [])
    best = (-1, model, state)
    for target in targets:
        own = target.state_dict()
        for variant in _variants(state):
            if set(variant) == set(own):
                return target, variant
            score = _overlap(variant, own)
            if score > best[0]:
                best = (score, target, variant)
    return best[1], best[2]


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local weights file of any supported layout into ``model`` (strict; mismatches in one line)."""
    target, state = fit_state(model, read_weights(path))
    load_state_dict_checked(target, state, source=f"weights file '{path}'")
    return model
