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
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
