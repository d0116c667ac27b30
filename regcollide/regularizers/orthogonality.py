"""Soft orthogonality (SO): the Frobenius distance of each layer's Gram matrix to the identity.

Bansal, Chen & Wang, "Can We Gain More from Orthogonality Regularizations in Training Deep CNNs?"
(NeurIPS 2018) penalise ‖WᵀW − I‖²_F per layer. We use the Gram of the smaller side (``W Wᵀ`` for wide
matrices, whose rows can be orthonormal; ``WᵀW`` for tall ones), so the penalty is 0 exactly for
matrices with orthonormal rows or columns, and average over layers.

SO is a baseline and deliberately *not* scale-invariant: it also pins every singular value to 1. With
``normalize=True`` the matrix is first divided by its root-mean-square singular value, which makes the
penalty scale-invariant (it then only measures the spread of the singular values, like ``singular``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from regcollide.regularizers.base import Regularizer, full_precision, upcast, zero_like
from regcollide.regularizers.selection import layer_stacks, select_layers, smaller_gram


def soft_orthogonality(stack: Tensor, normalize: bool = False) -> Tensor:
    """Mean over blocks of ‖G − I‖²_F for the smaller-side Gram G of ``stack`` ``(B, m, n)``."""
    if normalize:
        k = min(stack.shape[-2:])
        rms = (stack.square().sum(dim=(-2, -1), keepdim=True) / k).sqrt()  # (B, 1, 1) σ_rms
        stack = stack / rms.clamp_min(torch.finfo(stack.dtype).tiny)
    gram, _ = smaller_gram(stack)  # (B, k, k)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return (gram - eye).square().sum(dim=(-2, -1)).mean()


class SoftOrthogonality(Regularizer):
    """SO baseline (Bansal et al. 2018): mean over selected layers of ‖Gram − I‖²_F.

    Args:
        normalize: divide each matrix by its σ_rms first (scale-invariant variant).
        convention: ``paper`` or ``grouped`` layer matrices (as in the audit).
        layers: regex on layer names; empty selects all weight layers.
    """

    name = "orthogonality"

    def __init__(self, normalize: bool = False, convention: Literal["paper", "grouped"] = "paper",
                 layers: str = ""):
        self.normalize, self.convention, self.layers = normalize, convention, layers

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        with full_precision(outputs):
            terms = [soft_orthogonality(upcast(stack), self.normalize)
                     for layer in select_layers(model, self.layers) for stack in layer_stacks(layer, self.convention)]
        return torch.stack(terms).mean() if terms else zero_like(outputs)
