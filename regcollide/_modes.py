"""Train/eval mode handling shared by evaluators and regularizers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model.eval()`` and restore the previous train/eval mode afterwards.

    Attacks and audits must see the deterministic network (no dropout, BatchNorm running statistics), and
    must hand a training loop back the mode it had.
    """
    # Restore each module's own flag, not one flag for all: a model that keeps some parts in eval mode
    # while training (frozen BatchNorm, say) gets exactly that state back. A model already in eval mode
    # costs one pass over its modules instead of two recursive ``train`` calls.
    training = [module for module in model.modules() if module.training]
    if training:
        model.eval()
    try:
        yield model
    finally:
        for module in training:
            module.training = True
