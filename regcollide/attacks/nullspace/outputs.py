"""Task-agnostic model calls and output comparison for the Null-space search.

Classification models return a tensor (B, K), torchvision segmentation models a dict (``out``: (B, K, H, W)),
torchvision detection models a list of dicts (``boxes``, ``scores``, ``labels``) and take a list of images.
These helpers call any of them on an image batch and compare two outputs sample by sample, structurally.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from regcollide._tracing import StopForward, is_detection_model


def call_model(model: nn.Module, images: Tensor, detection: bool | None = None):
    """``model(images)``, or ``model(list(images))`` for detection models.  images: (B, C, H, W)."""
    detection = is_detection_model(model) if detection is None else detection
    return model(list(images)) if detection else model(images)


@contextmanager
def first_call_hook(module: nn.Module, store: dict, stop: bool = False) -> Iterator[None]:
    """Record the input (``store["input"]``) and output (``store["output"]``) of ``module``'s first call.

    With ``stop=True`` the forward pass is cut short right before the module runs (raises
    :class:`StopForward`, which the caller catches), so probing the first layer costs almost nothing.
    """

    def pre(_module, args):
        if "input" not in store:
            store["input"] = args[0].detach()
            if stop:
                raise StopForward

    def post(_module, _args, output):
        if "output" not in store:
            store["output"] = output.detach()

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def split_output(output, n: int) -> list[dict[str, Tensor]]:
    """Flatten a (nested) batch output into one ``{path: tensor}`` dict per sample.

    Tensors whose first dimension is ``n`` are split along it; a list/tuple of length ``n`` whose items
    are dicts (detection) gives one item per sample; dicts recurse with ``key.`` prefixes.
    """
    samples: list[dict[str, Tensor]] = [{} for _ in range(n)]

    def visit(obj, prefix: str, index: int | None) -> None:
        if isinstance(obj, Tensor):
            if index is None:
                if obj.dim() == 0 or obj.shape[0] != n:
                    raise ValueError(f"output '{prefix}' of shape {tuple(obj.shape)} has no batch dimension {n}")
                for i in range(n):
                    samples[i][prefix] = obj[i]
            else:
                samples[index][prefix] = obj
        elif isinstance(obj, dict):
            for key in sorted(obj):
                visit(obj[key], f"{prefix}.{key}" if prefix else str(key), index)
        elif isinstance(obj, (list, tuple)):
            if index is None and len(obj) == n and all(isinstance(o, dict) for o in obj):
                for i, item in enumerate(obj):
                    visit(item, prefix, i)
            else:
                for j, item in enumerate(obj):
                    visit(item, f"{prefix}[{j}]", index)
        else:
            raise ValueError(f"cannot compare model output of type {type(obj).__name__} at '{prefix}'")

    visit(output, "", None)
    return samples


@dataclass
class Comparison:
    """One sample's output compared with its reference."""

    max_abs: float  # max |g(x̂) − g(x)| over the leaves whose shapes agree
    rel: float  # max_abs / max |g(x)| over the same leaves
    agreement: float  # prediction agreement in [0, 1]
    mismatched: list[str]  # leaves whose shapes differ (e.g. a different number of detections)


def prediction_of(sample: dict[str, Tensor]) -> tuple[str, Tensor] | None:
    """The decision a person reads off an output: class, per-pixel class map, or detection labels."""
    if "labels" in sample:
        return "labels", sample["labels"]
    key = "out" if "out" in sample else ("" if "" in sample else None)
    if key is None:
        return None
    value = sample[key]
    if value.dim() == 0:
        return None
    return key, value.argmax(dim=0)  # (K,) -> class; (K, H, W) -> (H, W) mask


def compare(reference: dict[str, Tensor], other: dict[str, Tensor]) -> Comparison:
    """Compare one sample's outputs leaf by leaf.

    A leaf whose shape differs (a different number of detections), or that exists on one side only, is a
    *mismatch*: the residual cannot describe it, so it is listed, and the prediction counts as changed
    (agreement 0), whatever the leaves that still line up say.
    """
    max_abs, ref_abs = 0.0, 0.0
    mismatched = sorted(set(other) - set(reference))
    for key, ref in reference.items():
        value = other.get(key)
        if value is None or value.shape != ref.shape:
            mismatched.append(key)
            continue
        if ref.numel() == 0:
            continue
        diff = (value.double() - ref.double()).abs().max().item()
        max_abs = max(max_abs, diff)
        ref_abs = max(ref_abs, ref.double().abs().max().item())
    rel = max_abs / ref_abs if ref_abs > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Comparison(max_abs, rel, 0.0 if mismatched else _agreement(reference, other), sorted(mismatched))


def _agreement(reference: dict[str, Tensor], other: dict[str, Tensor]) -> float:
    """Prediction agreement in [0, 1] of two outputs with the same structure."""
    pred_ref, pred_other = prediction_of(reference), prediction_of(other)
    if pred_ref is None or pred_other is None:
        return float(all(torch.equal(reference[k], other[k]) for k in reference))
    if pred_ref[1].dim() >= 2:  # segmentation: share of pixels with the same class
        return (pred_ref[1] == pred_other[1]).double().mean().item()
    return float(torch.equal(pred_ref[1], pred_other[1]))
