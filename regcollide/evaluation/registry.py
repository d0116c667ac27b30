"""Eval parts registered by name: one :class:`Part` subclass per file in ``regcollide/evaluation/parts/``.

A part is one measurement of a model (clean accuracy, PGD ease, AutoAttack, the audit, the Null-space
and polytope searches). Adding one is one class in one file::

    @register_part("clean", entry_key="clean_acc", order=0, per_sample=True, settings_keys=("n", "seed"))
    class Clean(Part):
        def run(self, ctx: PartContext) -> PartOutcome: ...

The registry holds everything the pipeline needs to know about a part: where its value lives in the eval
entry, its position (parts run in ``order``; a part can read the outcomes of earlier ones), whether it is
measured per test sample (sharded over processes and merged) or once per model (main process only), and
which settings key its cache hash.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn


@dataclass
class PartOutcome:
    """One part's value (a JSON-ready dict or a number), or None with the reason it could not apply."""

    value: Any = None
    reason: str | None = None
    seconds: float = 0.0
    cached: bool = False


@dataclass
class PartContext:
    """What a part sees: the model, the eval images, the settings and the outcomes of earlier parts."""

    model: nn.Module
    images: Tensor          # (N, C, H, W) in [0, 1] on the model's device; N = max over the parts' n_images
    labels: Tensor          # (N,) int64
    settings: Any           # an EvalSettings
    input_shape: tuple[int, ...]  # (C, H, W) the model takes
    outcomes: dict[str, PartOutcome] = field(default_factory=dict)
    accelerator: Any = None  # an accelerate.Accelerator, or None for one process
    progress: bool = False


class Part(ABC):
    """Base class of an eval part; subclasses implement :meth:`run` and are registered by name."""

    name: ClassVar[str] = ""
    entry_key: ClassVar[str] = ""
    order: ClassVar[int] = 0
    per_sample: ClassVar[bool] = False
    settings_keys: ClassVar[tuple[str, ...]] = ()

    def n_images(self, settings: Any) -> int:
        """How many of the eval images (a prefix) this part reads; 0 for a part that needs none."""
        return settings.n

    @abstractmethod
    def run(self, ctx: PartContext) -> PartOutcome:
        """Evaluate this part on ``ctx`` (the model, the images and the settings)."""

    def cache_key(self, settings: Any) -> dict[str, Any]:
        """The settings this part's result depends on (anything else may change without invalidating it)."""
        return {k: getattr(settings, k) for k in self.settings_keys}

    def finalize(self, value: Any, values: dict[str, Any]) -> Any:
        """This part's entry value given every part's value (fresh or cached); the default keeps it."""
        del values
        return value


_PARTS: dict[str, Part] = {}


def register_part(name: str, *, entry_key: str | None = None, order: int, per_sample: bool = False,
                  settings_keys: tuple[str, ...] = ()) -> Callable[[type[Part]], type[Part]]:
    """Class decorator: register a :class:`Part` subclass under ``name`` (stored under ``entry_key``)."""

    def wrap(cls: type[Part]) -> type[Part]:
        if name in _PARTS:
            raise ValueError(f"eval part {name!r} is registered twice")
        cls.name, cls.entry_key, cls.order = name, entry_key or name, order
        cls.per_sample, cls.settings_keys = per_sample, tuple(settings_keys)
        _PARTS[name] = cls()
        return cls

    return wrap


def part_names() -> tuple[str, ...]:
    """Every registered part, in run order."""
    return tuple(sorted(_PARTS, key=lambda n: (_PARTS[n].order, n)))


def get_part(name: str) -> Part:
    if name not in _PARTS:
        raise ValueError(f"unknown eval part {name!r}; valid parts are {list(part_names())}")
    return _PARTS[name]


def applicable(call: Callable[[], Any]) -> PartOutcome:
    """Run an evaluator; a ValueError means "does not apply to this model" and becomes the skip reason.

    Evaluators raise ValueError for models outside their scope (documented in their docstrings), e.g. a
    first layer of nullity 0 for the Null-space search. Any other exception is a bug and propagates.
    """
    try:
        return PartOutcome(value=call().to_dict())
    except ValueError as err:
        return PartOutcome(reason=f"{type(err).__name__}: {err}")
