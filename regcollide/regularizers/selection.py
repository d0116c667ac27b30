"""Which layers a weight-space regularizer acts on, and their matrices as batched stacks.

The layer matrices come from :mod:`regcollide.layers` (the same conventions as the audit), so a penalty
acts on exactly the matrices whose ν, μ and nullity the audit reports.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from regcollide.audit.matrices import WeightLayer, iter_weight_layers, layer_matrix


def select_layers(model: nn.Module, pattern: str = "") -> list[WeightLayer]:
    """The weight layers of ``model`` whose name matches the regex ``pattern`` (empty: all of them)."""
    layers = iter_weight_layers(model)
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"layers={pattern!r} is not a valid regular expression: {error}") from None
        layers = [layer for layer in layers if regex.search(layer.name)]
    if not layers:
        names = ", ".join(layer.name for layer in iter_weight_layers(model)) or "(none)"
        raise ValueError(f"no weight layer matches layers={pattern!r}; the model's weight layers are: {names}")
    return layers


def layer_blocks(layer: WeightLayer, convention: str) -> list[Tensor]:
    """The layer's ``(out, in)`` matrices (one per group with ``grouped``) as views of its weight.

    Views, not a stack: their gradients reach the weight without a copy, which on a small MLP is a
    noticeable part of a penalty's backward pass.
    """
    blocks = layer_matrix(layer, convention)
    return [blocks] if isinstance(blocks, Tensor) else list(blocks)


def layer_stacks(layer: WeightLayer, convention: str) -> list[Tensor]:
    """The layer's matrices: one ``(out, in)`` matrix (a view of the weight, so its gradient reaches the
    weight without a copy), or a stack ``(G, out/g, in/g * prod(k))`` of a grouped layer's G blocks."""
    blocks = layer_matrix(layer, convention)
    if isinstance(blocks, Tensor) or len(blocks) == 1:
        return [blocks if isinstance(blocks, Tensor) else blocks[0]]
    return [torch.stack(blocks)]  # groups of one layer share a shape


def smaller_gram(stack: Tensor) -> tuple[Tensor, bool]:
    """Gram matrix of the smaller side of each matrix, ``(B, k, k)`` with k = min(out, in).

    Returns the Gram and whether it is the row Gram ``A Aᴴ`` (wide or square matrices) rather than the
    column Gram ``Aᴴ A`` (tall matrices). Both have the squared singular values of ``A`` as eigenvalues.
    """
    rows, cols = stack.shape[-2], stack.shape[-1]
    if rows <= cols:
        return stack @ stack.mH, True  # (B, out, out)
    return stack.mH @ stack, False  # (B, in, in)
