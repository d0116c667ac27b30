"""Training regularizers for collision resistance, and the baselines they must beat.

Every entry has one call shape (``regcollide.regularizers.base.Regularizer``)::

    reg = build_regularizer("singular", measure="ratio")
    model = reg.setup(model)                      # once, before the optimizer is built
    term = reg(model, batch, outputs)             # every step; outputs = model(batch["image"])
    loss = (0 if reg.replaces_task_loss else F.cross_entropy(outputs, batch["label"])) + weight * term

A config names them as ``regularizers: [{name: singular, weight: 0.1, params: {measure: ratio}}]``.
"""

from __future__ import annotations

from regcollide.regularizers.adversarial import TRADES, PGDAdversarialTraining
from regcollide.regularizers.base import Regularizer, describe_parameters, validate_parameters
from regcollide.regularizers.decorrelation import HyperplaneDecorrelation
from regcollide.regularizers.distill import Distillation
from regcollide.regularizers.erm import ERM
from regcollide.regularizers.orthogonality import SoftOrthogonality
from regcollide.regularizers.singular import MinSingularValuePenalty
from regcollide.regularizers.spectral import SpectralNormalization

__all__ = ["REGISTRY", "Regularizer", "build_regularizer", "describe_regularizer", "list_regularizers"]

REGISTRY: dict[str, type[Regularizer]] = {
    cls.name: cls
    for cls in (ERM, MinSingularValuePenalty, HyperplaneDecorrelation, Distillation,
                PGDAdversarialTraining, TRADES, SoftOrthogonality, SpectralNormalization)
}


def list_regularizers() -> list[str]:
    """Registry names, sorted."""
    return sorted(REGISTRY)


def describe_regularizer(name: str) -> str:
    """The parameters of one entry, ``name: type = default`` per line."""
    return describe_parameters(_lookup(name))


def _lookup(name: str) -> type[Regularizer]:
    if name not in REGISTRY:
        raise ValueError(f"unknown regularizer {name!r}; valid names: {', '.join(list_regularizers())}")
    return REGISTRY[name]


def build_regularizer(name: str, **params) -> Regularizer:
    """Instantiate a registry entry; unknown names or parameters raise ValueError listing the valid ones."""
    cls = _lookup(name)
    validate_parameters(cls, params)
    return cls(**params)
