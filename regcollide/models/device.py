"""``--device``: cpu, cuda[:N], mps or auto (accelerate's choice: cuda, then mps, then cpu)."""

from __future__ import annotations

import os

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The torch device ``spec`` names; ``auto``/None follows accelerate (``ACCELERATE_USE_CPU=1``: cpu)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = spec.split(":", 1)[0]
    if kind not in DEVICES[1:]:
        raise ValueError(f"unknown device '{spec}': use auto, cpu, cuda, cuda:N or mps.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{spec}' requested but CUDA is not available here: use --device cpu.")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available here: use --device cpu.")
    try:
        return torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"invalid device '{spec}': {err}.") from err
