"""Hyperplane decorrelation: a one-sided penalty on near-collinear hidden-unit hyperplanes.

Li, Zhang & Malik ("Approximate Feature Collisions in Neural Nets", NeurIPS 2019) build colliding inputs
from polytopes whose size grows when the hyperplanes of a ReLU layer are nearly collinear, and suggest
discouraging exactly that. The penalty follows OrthoReg (Rodríguez, Gonzàlez, Cucurull, Gonfaus & Roca,
"Regularizing CNNs with Locally Constrained Decorrelations", ICLR 2017): for each pair of rows (units) of a
layer matrix with cosine similarity c, it charges

    ( softplus(κ (c⁺ − τ)) − softplus(−κ τ) ) / κ,        c⁺ = max(c, 0)

averaged over pairs, then over layers. Large κ makes it focus on the most collinear pairs; τ shifts where
the charge starts to bite. Subtracting the constant makes the penalty exactly 0 whenever no cosine is
positive (an orthogonal matrix is a minimiser) and leaves the gradient for c > 0 unchanged.

Only *positive* cosines are charged. Opposite-pointing pairs are free, because they help injectivity: the
ReLU layer x ↦ ReLU([B; −B] x) is globally injective for any injective B (Puthawala, Kothari, Lassas,
Dokmanić & de Hoop, "Globally Injective ReLU Networks", JMLR 2022), and a pure cosine penalty would push
those pairs apart.

With ``use_bias`` the bias is appended to each row, so affine hyperplanes {x : wᵀx + b = 0} are compared
and not just their normals (two parallel units with different offsets are not redundant).

Layers with many rows: with m rows there are m(m−1)/2 pairs. When m exceeds ``max_rows`` (default 64)
the penalty draws a uniformly random subset of ``max_rows`` rows per step and averages over all pairs
inside it. Every pair
is equally likely to be drawn, so the expectation equals the full mean over pairs (an unbiased estimate),
at O(max_rows² · in) cost instead of O(m² · in). On a 784-256-256-10 MLP at batch 128 the all-pairs
Gram of the first layer alone costs twice that layer's forward pass, hence the default of 64 rows; raise
``max_rows`` for the exact mean. (Sampling rows rather than independent pairs keeps the work in one
matmul; scattering gradients of many individually indexed pairs is slower than the exact sum.)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regcollide.audit.matrices import WeightLayer
from regcollide.regularizers.base import (
    Regularizer,
    check_positive,
    full_precision,
    lazy_term,
    upcast,
    zero_like,
)
from regcollide.regularizers.selection import layer_blocks, select_layers


def layer_rows(layer: WeightLayer, convention: str, use_bias: bool) -> list[Tensor]:
    """The unit hyperplanes of a layer, one ``(m, n)`` matrix per block (bias appended on request)."""
    blocks = layer_blocks(layer, convention)  # G × (m, n)
    bias = getattr(layer.module, "bias", None)
    if not use_bias or layer.kind.startswith("mha") or layer.kind.startswith("convtranspose") \
            or not isinstance(bias, Tensor):
        return blocks  # MHA in-proj / transposed-conv rows do not own one bias entry each
    per_block = bias.chunk(len(blocks))
    return [torch.cat([block, part.unsqueeze(1)], dim=1) for block, part in zip(blocks, per_block)]


def one_sided_charge(cosines: Tensor, kappa: float, tau: float) -> Tensor:
    """Per-pair charge, 0 for c ≤ 0, increasing for c > 0."""
    positive = cosines.clamp_min(0)
    floor = math.log1p(math.exp(-kappa * tau))  # softplus(−κτ), the charge at c = 0
    return (F.softplus(kappa * (positive - tau)) - floor) / kappa


def unit_rows(rows: Tensor) -> Tensor:
    """Rows scaled to unit length (zero rows stay zero)."""
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)


class _PairCharge(torch.autograd.Function):
    """Mean one-sided charge over the row pairs of ``matrix[rows]``, with a hand-written backward.

    Forward: U = rows scaled to unit length (s, n), C = U Uᵀ (s, s), mean over i < j of charge(C_ij).
    Backward: with S the symmetric matrix of dcharge/dC_ij = sigmoid(κ(c⁺ − τ))·[c > 0] / pairs,
    dU = S U and dR = (dU − U·rowsum(dU ∘ U)) / ‖R‖, scattered back to the chosen rows. Autograd's
    generic graph for the same computation (norm, clamp, softplus, triu, gather) costs about five times
    as much, which on a small MLP is more than the training step itself.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor, rows: Tensor | None, kappa: float, tau: float, weight: float = 1.0,
                grad_weight: float = 1.0) -> Tensor:
        chosen = matrix if rows is None else matrix.index_select(0, rows)  # (s, n)
        norms = torch.linalg.vector_norm(chosen, dim=1, keepdim=True).clamp_min(torch.finfo(chosen.dtype).tiny)
        unit = chosen / norms  # (s, n)
        cosines = unit @ unit.T  # (s, s), symmetric
        # A zero diagonal charges nothing (c⁺ = 0) and has zero slope (c > 0 is false), so the sums over
        # the full symmetric matrix are twice the sums over pairs i < j: no triangle masks needed.
        cosines.fill_diagonal_(0.0)
        shifted = cosines.clamp_min(0).mul_(kappa).sub_(kappa * tau)  # (s, s) κ(c⁺ − τ)
        size = chosen.shape[0]
        pairs = size * (size - 1) / 2
        floor = math.log1p(math.exp(-kappa * tau))  # softplus(−κτ), the charge at c⁺ = 0
        total = F.softplus(shifted).sub_(floor).sum() / (2 * kappa)  # Σ_{i<j} charge; per element: no cancellation
        slope = torch.sigmoid(shifted).mul_(cosines > 0)  # (s, s) dcharge/dc, symmetric, zero diagonal
        ctx.save_for_backward(unit, norms, slope.mul_(grad_weight / pairs), rows)
        ctx.shape = matrix.shape
        return total * (weight / pairs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        unit, norms, slope, rows = ctx.saved_tensors
        d_unit = (slope @ unit).mul_(grad)  # (s, n): S is already the symmetric sum over both orders
        d_rows = (d_unit - unit * (d_unit * unit).sum(1, keepdim=True)) / norms
        if rows is None:
            return d_rows, None, None, None, None, None
        full = d_rows.new_zeros(ctx.shape)
        return full.index_copy_(0, rows, d_rows), None, None, None, None, None  # rows are distinct


def mean_pair_charge(rows: Tensor, kappa: float, tau: float, chosen: Tensor | None = None,
                     weight: float = 1.0, grad_weight: float = 1.0) -> Tensor:
    """Mean charge over all m(m−1)/2 unordered row pairs of ``rows`` ``(m, n)`` (of ``rows[chosen]``), times
    ``weight``; its gradient is weighted by ``grad_weight`` instead (a mean over layers and the lazy factor,
    without autograd nodes of their own)."""
    return _PairCharge.apply(rows, chosen, kappa, tau, weight, grad_weight)


def max_positive_cosine(rows: Tensor) -> Tensor:
    """Mean over rows of max(0, largest cosine with another row): how collinear the nearest pair is."""
    unit = unit_rows(rows)
    cosines = unit @ unit.T  # (m, m)
    cosines.fill_diagonal_(-1.0)
    return cosines.max(dim=1).values.clamp_min(0).mean()


class HyperplaneDecorrelation(Regularizer):
    """One-sided OrthoReg-style decorrelation of the rows of every selected layer matrix.

    Args:
        kappa: sharpness κ of the softplus (larger: closer to a hinge at τ).
        tau: cosine offset τ in [0, 1) where the charge's softplus is centred.
        use_bias: append the bias to each row (compare hyperplanes, not only normals).
        max_rows: exact mean over pairs up to this many rows per block; above, a random row subset.
        convention: ``paper`` or ``grouped`` layer matrices (as in the audit).
        layers: regex on layer names; empty selects all weight layers.
        seed: seed of the pair sampler (reproducible runs).
        lazy_every: while training, evaluate on every N-th step with the gradient scaled by N (lazy
            regularization, Karras et al. CVPR 2020); the steps in between cost nothing.
    """

    name = "decorrelation"

    def __init__(self, kappa: float = 10.0, tau: float = 0.0, use_bias: bool = False,
                 max_rows: int = 64, convention: Literal["paper", "grouped"] = "paper", layers: str = "",
                 seed: int = 0, lazy_every: int = 8):
        check_positive("kappa", kappa)
        check_positive("lazy_every", lazy_every)
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2, got {max_rows!r}")
        if not 0 <= tau < 1:
            raise ValueError(f"tau must be in [0, 1), got {tau!r}")
        self.kappa, self.tau, self.use_bias, self.max_rows = float(kappa), float(tau), use_bias, max_rows
        self.convention, self.layers, self.seed, self.lazy_every = convention, layers, seed, lazy_every
        self._generator = torch.Generator().manual_seed(seed)

    def penalty_of(self, rows: Tensor, weight: float = 1.0, grad_weight: float = 1.0) -> Tensor:
        """Mean charge over the row pairs of one ``(m, n)`` matrix (a random row subset when m is large),
        times ``weight``, its gradient weighted by ``grad_weight``."""
        chosen = None
        if rows.shape[0] > self.max_rows:
            chosen = torch.randperm(rows.shape[0], generator=self._generator)[: self.max_rows].to(rows.device)
        return mean_pair_charge(rows, self.kappa, self.tau, chosen, weight, grad_weight)

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        return lazy_term(self, self.lazy_every, lambda scale: self._penalty(model, outputs, scale))

    def _penalty(self, model: nn.Module, outputs: Tensor, scale: float = 1.0) -> Tensor:
        """Mean over the selected matrices with at least two rows, gradient × ``scale``: each term carries
        its share of the mean and of the factor, so the graph holds one node per layer and one sum."""
        with full_precision(outputs):
            blocks = [upcast(rows) for layer in select_layers(model, self.layers)
                      for rows in layer_rows(layer, self.convention, self.use_bias) if rows.shape[0] >= 2]
            terms = [self.penalty_of(rows, 1 / len(blocks), scale / len(blocks)) for rows in blocks]
        if not terms:
            return zero_like(outputs)
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum()
