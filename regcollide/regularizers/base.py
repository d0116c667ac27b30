"""The one call shape every regularizer shares, and parameter introspection for the registry.

A regularizer is built once from a config entry (``build_regularizer(name, **params)``), wrapped around the
model once (``setup``), then called every training step as ``term = reg(model, batch, outputs)``. The
training loss is ``cross_entropy(outputs, batch["label"]) + sum(weight * term)``, except that the cross
entropy is dropped when any regularizer has ``replaces_task_loss = True`` (PGD-AT, TRADES, distillation):
their term already is the whole task loss.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import reprlib
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Union

import torch
from torch import Tensor, nn


class Regularizer(abc.ABC):
    """Base class: a penalty (or replacement task loss) computed from the model, the batch and its logits.

    Subclasses set ``name`` (the registry key), keep their hyperparameters as typed ``__init__`` keyword
    arguments (the registry reads them to validate configs), and implement ``__call__``.

    ``batch`` is the loader dict ``{"image": (B, C, H, W) in [0, 1], "label": (B,), "index": (B,)}`` and
    ``outputs`` are the logits ``(B, K)`` of ``model(batch["image"])`` computed by the training step with
    the model in its current (usually training) mode. The returned tensor is a scalar on the device of
    ``outputs``; the training script multiplies it by the config weight.
    """

    name: ClassVar[str] = ""
    replaces_task_loss: ClassVar[bool] = False

    def setup(self, model: nn.Module) -> nn.Module:
        """Prepare the model once before training (e.g. wrap layers); returns the model to train."""
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        """Undo training-only wrappers before weights are saved; the default removes the forward hooks
        a subclass kept in ``self._hooks``."""
        for hook in getattr(self, "_hooks", ()):
            hook.remove()
        if hasattr(self, "_hooks"):
            self._hooks.clear()
        return model

    @abc.abstractmethod
    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        """The scalar term for this batch (see the class docstring for the shapes)."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={getattr(self, key)!r}" for key in parameter_specs(type(self))
                          if hasattr(self, key) and not isinstance(getattr(self, key), nn.Module))
        return f"{type(self).__name__}({shown})"


def lazy_term(reg: Regularizer, every: int, compute: Callable[[float], Tensor]) -> Tensor:
    """Lazy regularization (Karras, Laine, Aittala, Hellsten, Lehtinen & Aila, "Analyzing and Improving
    the Image Quality of StyleGAN", CVPR 2020, sec. 3.1): while training, evaluate an expensive penalty
    on every ``every``-th call only, with its gradient scaled by ``every`` so the expected update is
    unchanged; the calls in between return the last value as a constant (no gradient, nothing computed).

    ``compute(scale)`` returns the penalty with its value unchanged and its gradient multiplied by
    ``scale``: a penalty with its own autograd node folds the factor into its backward (no extra nodes),
    any other wraps its result in :func:`scale_gradient`.

    Outside training (no gradient recording) every call evaluates. The call counter ``reg._calls`` and
    the cached value ``reg._lazy_value`` are plain private attributes, so training checkpoints keep them.
    """
    if every == 1 or not torch.is_grad_enabled():
        return compute(1.0)
    calls = getattr(reg, "_calls", 0)
    reg._calls = calls + 1
    cached = getattr(reg, "_lazy_value", None)
    if calls % every and cached is not None:
        return cached.clone()
    value = compute(float(every))
    reg._lazy_value = value.detach()
    return value


def scale_gradient(value: Tensor, scale: float) -> Tensor:
    """``value`` unchanged, its gradient multiplied by ``scale`` (three autograd nodes when scale ≠ 1)."""
    return value if scale == 1 else value + (scale - 1) * (value - value.detach())


def zero_like(outputs: Tensor) -> Tensor:
    """A scalar 0 on the device and dtype of ``outputs`` (penalties with nothing to penalise)."""
    return outputs.new_zeros(())


def parameter_specs(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``cls.__init__`` with their resolved type annotations."""
    hints = typing.get_type_hints(cls.__init__, globalns=vars(inspect.getmodule(cls)))
    specs = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        specs[param.name] = param.replace(annotation=hints.get(param.name, param.annotation))
    return specs


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "|".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def describe_parameters(cls: type) -> str:
    """One line per parameter: ``name: type = default`` (what an error message should list)."""
    lines = []
    for name, param in parameter_specs(cls).items():
        default = "required" if param.default is inspect.Parameter.empty else repr(param.default)
        lines.append(f"  {name}: {_type_name(param.annotation)} = {default}")
    return "\n".join(lines) if lines else "  (no parameters)"


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation``; ints pass for floats, bools never pass for numbers."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # generic aliases we do not check deeply (e.g. list[str])


# A value quoted in a message is cut short: a YAML alias bomb (lists sharing anchors) must never be expanded.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 2, 4, 4, 80


def validate_parameters(cls: type, params: dict[str, Any]) -> None:
    """Raise ValueError naming the bad key or value and listing every valid parameter of ``cls``."""
    specs = parameter_specs(cls)
    for key, value in params.items():
        if key not in specs:
            raise ValueError(f"regularizer {cls.name!r} has no parameter {key!r}. "
                             f"Valid parameters:\n{describe_parameters(cls)}")
        annotation = specs[key].annotation
        if not _matches(value, annotation):
            raise ValueError(f"regularizer {cls.name!r}: parameter {key!r} must be {_type_name(annotation)}, "
                             f"got {_SHORT.repr(value)}. Valid parameters:\n{describe_parameters(cls)}")
    missing = [k for k, p in specs.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ValueError(f"regularizer {cls.name!r} needs parameter(s) {', '.join(missing)}. "
                         f"Valid parameters:\n{describe_parameters(cls)}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Constructor-side range check with a message that says what to change."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def full_precision(reference: Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast: eigvalsh/Cholesky need float32 or float64, and bf16 Gram matrices lose σ_min.
    Without autocast on, nothing to disable: a null context (entering autocast costs a few µs a step)."""
    device = reference.device.type
    return torch.autocast(device_type=device, enabled=False) if torch.is_autocast_enabled(device) \
        else contextlib.nullcontext()


def upcast(tensor: Tensor) -> Tensor:
    """Half-precision weights to float32 for linear algebra; float32/float64 pass through unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for parameter-free modules)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
