"""Find the modules whose output feeds a ReLU, and read their pre-activations with hooks.

The polytope search of Li, Zhang & Malik ("Approximate Feature Collisions in Neural Nets", NeurIPS 2019)
works at a ReLU layer: it needs the pre-activation z(u) that a ReLU turns into features. Models are
never modified; a forward hook on the module that produces z records it.

A module *feeds a ReLU* when, during one forward pass, the very tensor it returns is the input of a ReLU:
an ``nn.ReLU`` module or a functional call (``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place
forms). ReLU6, LeakyReLU, GELU and clamps do not count: their zero region is not the one the method uses.
Functional calls are seen through a ``TorchFunctionMode``, which also sees the ``F.relu`` inside
``nn.ReLU.forward``, so both styles are handled by one rule.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from regcollide._tracing import StopForward

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}


class _ReluInputs(TorchFunctionMode):
    """Logs every tensor that enters a ReLU, in a shared event log, during a forward pass."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCTIONS and args and isinstance(args[0], Tensor):
            self.events.append(("relu", None, args[0], args[0]._version))
        return func(*args, **(kwargs or {}))


def relu_feeding_layers(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the modules whose output tensor is the input of a later ReLU, in the order they run.

    ``example`` is one input batch ``(B, C, H, W)``. Pass-through modules (``nn.Identity``, eval-mode
    dropout: output *is* the input) are skipped, and so is anything run after the ReLU that consumed
    the tensor (an in-place ReLU returns the very object it was given) or whose output was changed in
    place before reaching the ReLU. A container and its last child
    can return the same tensor; both are listed, the child first (its hook fires first).
    """
    # One log for hooks and ReLU calls; it also keeps every tensor alive, so identity checks are sound.
    # The version counter tells whether the tensor was changed in place (``x += shortcut`` in residual
    # blocks) between the module and the ReLU: then the ReLU's input is no longer that module's output.
    events: list[tuple[str, str | None, Tensor, int]] = []

    def record(name: str):
        def hook(_module, inputs, output):
            passthrough = any(output is t for t in inputs)
            if isinstance(output, Tensor) and not passthrough:
                events.append(("output", name, output, output._version))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), _ReluInputs(events):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    names: list[str] = []
    for position, (kind, name, tensor, version) in enumerate(events):
        if kind != "output" or name in names:
            continue
        if any(k == "relu" and t is tensor and v == version for k, _, t, v in events[position + 1:]):
            names.append(name)
    return names


def resolve_layer(model: nn.Module, layer: str | None, example: Tensor) -> str:
    """Check ``layer`` (or pick the default: the first module feeding a ReLU) and return its name.

    Raises ValueError listing the valid names when the layer does not exist or feeds no ReLU.
    """
    candidates = relu_feeding_layers(model, example)
    if not candidates:
        raise ValueError(
            "the polytope search needs a ReLU layer, but no module's output feeds a ReLU in this model "
            "(ReLU6, LeakyReLU and GELU do not count)."
        )
    if layer is None:
        return candidates[0]
    if layer not in candidates:
        exists = layer in dict(model.named_modules())
        why = "does not feed a ReLU" if exists else "does not exist in the model"
        raise ValueError(f"layer {layer!r} {why}; choose one of: {', '.join(candidates)}")
    return layer


@contextmanager
def capture_preactivation(model: nn.Module, layer: str, stop: bool = False) -> Iterator[dict]:
    """Record the output of ``layer`` as ``store["z"]``, flattened to ``(B, D)``.

    The hook clones the output because an in-place ReLU (``nn.ReLU(inplace=True)``, common in timm)
    overwrites it right after. With ``stop=True`` the forward pass ends at the layer (use
    ``run_to_layer``), which saves the cost of the rest of the network while optimizing.
    """
    store: dict = {}

    def hook(_module, _inputs, output):
        if "z" not in store:  # a module called twice: the first call is the one we resolved
            store["z"] = output.clone().flatten(1)
            if stop:
                raise StopForward

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def run_to_layer(model: nn.Module, store: dict, x: Tensor) -> Tensor:
    """Forward ``x`` until the hooked layer of a ``capture_preactivation(..., stop=True)`` block."""
    store.pop("z", None)
    try:
        model(x)
    except StopForward:
        pass
    return store["z"]
