"""The tracked ``ratio``/``rms`` penalty of layer matrices as one autograd node.

The minimum-singular-value penalty (Ozbulak et al., "Exact Feature Collisions in Neural Networks", 2022)
of a matrix W is T = 1 − √((λ_min + f) / (d + f)) with λ = σ², d = λ_max (``ratio``) or the mean
eigenvalue (``rms``) and f = jitter · mean λ. Its σ_min and σ_max come from the warm-started trackers of
:mod:`regcollide.regularizers.tracking`; this module turns them into the value and the exact gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from regcollide.regularizers.tracking import SingularTracker


def _divide(a: float, b: float) -> float:
    """a / b with IEEE semantics for b = 0 (±inf, or nan for 0/0), as a tensor division would give."""
    if b:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)


def isotropy_coefficients(lams: tuple[float, float, float], use_mean: bool, jitter: float) -> tuple[float, ...]:
    """The penalty T = 1 − √((λ_min + f) / (d + f)) and ∂T/∂(λ_min, λ_max, mean λ), as float64 numbers.

    d is λ_max (``ratio``) or the mean eigenvalue (``rms``) and f = jitter · mean λ. Plain Python floats
    (float64) with IEEE division, so σ_min = 0 without jitter gives inf as a tensor would, not an exception.
    """
    low, high, mean = lams
    floor = jitter * mean
    denominator = (mean if use_mean else high) + floor
    quotient = _divide(low + floor, denominator)
    root = math.sqrt(quotient) if quotient >= 0 else math.nan
    scale = _divide(-0.5, root)  # ∂T/∂q
    d_floor = _divide(1 - quotient, denominator)  # ∂q/∂f
    d_denominator = _divide(-quotient, denominator)  # ∂q/∂d
    d_high = 0.0 if use_mean else d_denominator
    d_mean = jitter * d_floor + (d_denominator if use_mean else 0)
    return 1 - root, _divide(scale, denominator), d_high * scale, d_mean * scale


class _IsotropySum(torch.autograd.Function):
    """Σ over matrices W of the penalty T(W), from their tracked singular pairs: one autograd node.

    The gradient is exact: dλ_i/dW = 2 · left_i ⊗ right_i for the two tracked pairs and d(mean λ)/dW =
    2 W / k (mean λ is ‖W‖²_F / k), so each matrix's backward is one fused rank-2 ``addmm``. The value and
    the chain-rule coefficients are host-side float64 numbers computed in the forward direction: one node
    for all layers and no 0-dim tensor arithmetic, which on a small MLP would cost as much as the tracking.
    """

    @staticmethod
    def forward(ctx, value: float, factors: list[tuple[Tensor, Tensor, float]], grad_weight: float,
                *matrices: Tensor) -> Tensor:
        ctx.factors, ctx.grad_weight = factors, grad_weight  # per matrix: ∂T/∂λ-scaled left (2, m), right
        ctx.save_for_backward(*matrices)  # (2, n), ∂T/∂(mean λ); the weight of the sum's gradient
        return torch.tensor(value, dtype=matrices[0].dtype, device=matrices[0].device)

    @staticmethod
    def backward(ctx, grad: Tensor):
        g = 2 * ctx.grad_weight * grad.item()
        updates = [torch.addmm(matrix, left.mT, right, beta=g * d_mean / min(matrix.shape), alpha=g)
                   for matrix, (left, right, d_mean) in zip(ctx.saved_tensors, ctx.factors)]
        return None, None, None, *updates


def tracked_isotropy_sum(matrices: list[Tensor], trackers: list[SingularTracker], use_mean: bool,
                         jitter: float, weight: float = 1.0,
                         grad_weight: float = 1.0) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """``weight`` · Σ of the ``ratio`` (with ``use_mean`` the ``rms``) penalties of real ``(m, n)`` matrices,
    each through its tracker, with the gradient of the sum weighted by ``grad_weight`` (a mean and the
    lazy-regularization factor, without autograd nodes of their own).

    Returns the weighted sum (differentiable in every matrix, in their dtype) and each matrix's tracked
    float64 (σ_min, σ_max).
    """
    total, factors, lams = 0.0, [], []
    for matrix, tracker in zip(matrices, trackers):
        wide = matrix.shape[0] < matrix.shape[1]
        with torch.no_grad():
            tall = matrix.to(torch.float64)  # no graph: no_grad
            tall = tall.mT if wide else tall  # (n, k), n ≥ k
            ext = tracker.update(tall)
            mean = float(torch.linalg.vector_norm(tall)) ** 2 / tall.shape[1]  # ‖A‖²_F / k, no (n, k) temporary
        value, d_low, d_high, d_mean = isotropy_coefficients((*ext.lams, mean), use_mean, jitter)
        total += value
        lams += ext.lams
        # tall A: dλ/dA = 2 (A v) vᵀ; for a wide W = Aᵀ it is the transpose, 2 v (A v)ᵀ. Rows (2, m), (2, n).
        left, right = (ext.vectors, ext.images) if wide else (ext.images, ext.vectors)
        scaled = left * left.new_tensor([[d_low], [d_high]])  # ∂T/∂λ folded into the left factors
        factors.append((scaled.to(matrix.dtype), right.to(matrix.dtype), d_mean))
    sigmas = torch.tensor(lams, dtype=torch.float64, device=matrices[0].device).sqrt().view(-1, 2)
    return _IsotropySum.apply(weight * total, factors, grad_weight, *matrices), list(zip(*sigmas.unbind(1)))
