"""ERM: empirical risk minimisation, the no-regularizer baseline.

Training with no regularizer at all is ERM; this entry exists so a config can name the baseline
explicitly (``regularizers: [{name: erm}]``) and sweeps can treat it like any other regularizer.
"""

from __future__ import annotations

from torch import Tensor, nn

from regcollide.regularizers.base import Regularizer, zero_like


class ERM(Regularizer):
    """Adds nothing: the training loss stays the plain cross-entropy on the clean logits."""

    name = "erm"

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        return zero_like(outputs)
