"""Results as data: dataclasses and dicts -> JSON with plain numbers, written atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regcollide.checkpoints import atomic_write_bytes


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
