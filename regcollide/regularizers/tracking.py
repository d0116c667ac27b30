"""Extreme singular values of a matrix that moves a little every step, tracked in float64 by warm starts.

The minimum-singular-value penalty needs σ_min and σ_max of every layer matrix at every training step,
with the gradient of σ_min, u_min v_minᵀ, pointing the right way even when σ_min/σ_max is 1e-6: the
range where the audit counts excess nullity (Ozbulak et al., "Exact Feature Collisions in Neural
Networks", 2022). A float32 Gram matrix cannot see that range: its eigenvalues carry an absolute error of
about k·eps(float32)·σ_max² ≈ 1e-5·σ_max² for k = 100, so σ_min below ~1e-3·σ_max is noise.

The tracker never forms a Gram matrix between refreshes. It works on the tall view A (n × k, n ≥ k; the
transpose of a wide matrix) in float64 and keeps the right singular vectors of the ``BLOCK`` = 4 smallest
and of the largest singular value from the previous step.

A *cheap step* runs first: one Rayleigh–Ritz projection of A onto span{V_low, v_high, AᵀA v_high}, the
cached vectors and a Krylov direction for σ_max, p + 4 passes over A and no QR. Training rotates the
smallest vectors inside the cluster the penalty lifts σ_min into (σ_min reaches σ_2, then σ_3, ...), and
this projection undoes that rotation on the current A. Its smallest Ritz pair is accepted when its
eigen-residual r = AᵀA v − ρ v passes the Kato–Temple test: the eigenvalue error bound ‖r‖²/δ, with δ
the gap to the top of the block, must be below ``tolerance``·ρ.

Otherwise a *tracking step* runs one or more Rayleigh–Ritz projections of A onto

    span{ V_low,  P·(AᵀA V_low − V_low diag(ρ)),  v_high,  AᵀA v_high }

where P is the pseudo-inverse of AᵀA from the last refresh: a block preconditioned inverse-iteration
(PINVIT / LOBPCG-style; Knyazev, "Toward the Optimal Preconditioned Eigensolver", SIAM J. Sci. Comput.
2001) step for the smallest pairs and a power step for the largest, accepted by the same test. The block
is four wide because a block of two cannot resolve the cluster: its test then failed every few steps and
forced a decomposition, while a block of four holds the cluster and measures the gap to the values above.
If up to ``iterations`` projections do not converge, or every ``refresh_every`` steps, the tracker
*refreshes*: an eigendecomposition of the float64 Gram gives a new preconditioner and start vectors,
which projections on A itself then polish to full float64 accuracy.

Tracking runs every ``track_every`` steps, and on every step after one that did not converge at once
(the spectrum is moving). In between, the values are the float64 Rayleigh quotients ‖A v‖² of the
cached vectors: one pass over A, an upper bound of σ_min² and a lower bound of σ_max², with an error of
second order in how far the weights moved since the last tracking step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def skinny(matrix: Tensor, columns: Tensor) -> Tensor:
    """``matrix @ columns`` for a few columns, as matrix-vector products: BLAS GEMM with 2-6 columns is
    several times slower per column than GEMV on CPU (measured 0.18 ms against 2 × 0.023 ms, 256 × 784)."""
    return torch.stack([matrix @ column for column in columns.unbind(1)], dim=1)


BLOCK = 4  # smallest vectors tracked: enough to hold the cluster the penalty lifts σ_min into
TINY_RATIO = 1e-14  # λ_min/λ_max below this (σ ratio 1e-7) the residual test is relative to λ_max·1e-14


@dataclass
class Extremes:
    """One step's result for a tall float64 matrix A (n × k): right vectors and their images A v."""

    vectors: Tensor  # (k, 2) right singular vectors of σ_min and σ_max
    images: Tensor  # (n, 2) A · vectors, column norms σ_min and σ_max
    refreshed: bool  # this step ran a full decomposition


class SingularTracker:
    """Warm-started σ_min and σ_max of one matrix across steps (see the module docstring).

    Args:
        tolerance: accepted relative eigen-residual of the smallest Ritz pair.
        iterations: projections per step before a refresh is forced.
        refresh_every: a full decomposition at least every N steps (it renews the preconditioner).
    """

    def __init__(self, tolerance: float = 1e-3, iterations: int = 3, refresh_every: int = 100,
                 track_every: int = 1):
        self.tolerance, self.iterations, self.refresh_every = tolerance, iterations, refresh_every
        self.track_every = track_every
        self.low: Tensor | None = None  # (k, p) p = min(BLOCK, k) right vectors, smallest first
        self.high: Tensor | None = None  # (k,)
        self.precond: Tensor | None = None  # (k, k) pseudo-inverse of AᵀA at the last refresh
        self.shape: tuple[int, ...] | None = None  # (n, k) of the matrix the state belongs to
        self.age = 0
        self.refreshes = 0
        self.tracked = False  # the last update ran Ritz steps (False: Rayleigh quotients of cached vectors)
        self.unsettled = True  # the last tracking step needed more than one projection: track again

    def state_dict(self) -> dict:
        """The warm state (tensors, counters, flags): a resumed training continues bitwise from it."""
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        values = {key: state[key] for key in vars(self)}  # KeyError before anything changes
        values["shape"] = None if values["shape"] is None else tuple(values["shape"])
        for key, value in values.items():
            setattr(self, key, value)

    def update(self, tall: Tensor) -> Extremes:
        """Track the extremes of ``tall`` (n × k, n ≥ k, float64, no gradient)."""
        stale = self.shape != tall.shape or self.age >= self.refresh_every
        self.tracked = stale or self.unsettled or self.age % self.track_every == 0
        if not self.tracked:
            self.age += 1
            return self._images(tall, refreshed=False)  # Rayleigh quotients of the cached vectors
        if not stale:
            # after a step that needed several projections the spectrum is moving: skip the cheap step
            result = None if self.unsettled else self._cached(tall)
            if result is None:
                result = self._iterate(tall, self.iterations)
            if result is not None:
                self.age += 1
                return result
        self._refresh(tall)
        result = self._iterate(tall, max(2, self.iterations), refreshed=True)
        if result is None:  # a float64 eigendecomposition polished on A itself: accept it as exact
            result = self._images(tall, refreshed=True)
        return result

    def _refresh(self, tall: Tensor) -> None:
        lam, vectors = torch.linalg.eigh(tall.mT @ tall)  # (k,), (k, k) ascending
        floor = lam[-1].clamp_min(torch.finfo(tall.dtype).tiny) * tall.shape[1] * torch.finfo(tall.dtype).eps
        self.precond = (vectors / lam.clamp_min(floor)) @ vectors.mT  # (k, k)
        self.low = vectors[:, : min(BLOCK, tall.shape[1])].clone()
        self.high = vectors[:, -1].clone()
        self.age, self.refreshes, self.shape = 0, self.refreshes + 1, tall.shape

    def _cached(self, tall: Tensor) -> Extremes | None:
        """The cheap step: one Rayleigh–Ritz projection onto the cached vectors and a Krylov step of σ_max.

        The basis is span{V_low, v_high, AᵀA v_high}, without the preconditioned residual directions. The
        penalty keeps rotating the smallest vectors inside the cluster it lifts σ_min into, and the
        projection undoes exactly that rotation on the current A; the Krylov direction moves σ_max. Passes
        over A: p + 3 for the images and the Krylov direction, one for AᵀA of the smallest Ritz vector; no
        QR. Returns None when that pair fails the test (or the matrix is too small to gain anything).
        """
        p = self.low.shape[1]
        if tall.shape[1] <= p + 2:
            return None
        low_image, high_image = skinny(tall, self.low), tall @ self.high  # (n, p), (n,)
        power = tall.mT @ high_image  # (k,) AᵀA v_high
        basis = torch.cat([self.low, self.high.unsqueeze(1)], 1)  # (k, p + 1) orthonormal (a Ritz basis)
        images = torch.cat([low_image, high_image.unsqueeze(1)], 1)  # (n, p + 1)
        step = power - basis @ (basis.mT @ power)
        step = step - basis @ (basis.mT @ step)  # twice is enough (Kahan): orthogonal to working precision
        length = torch.linalg.vector_norm(step)
        if bool(length > torch.finfo(step.dtype).eps ** 0.5 * torch.linalg.vector_norm(power)):
            step = step / length  # else v_high is an eigenvector to working precision: nothing to add
            basis = torch.cat([basis, step.unsqueeze(1)], 1)  # (k, p + 2)
            images = torch.cat([images, (tall @ step).unsqueeze(1)], 1)  # (n, p + 2)
        _, _, right = torch.linalg.svd(images, full_matrices=False)  # (q, q), singular values descending
        smallest = right[-p:].flip(0).mT  # (q, p) smallest first
        low, low_image = basis @ smallest, images @ smallest
        high_image = images @ right[0]  # (n,) the largest Ritz vector's image
        rho = low_image.square().sum(0)  # (p,) ascending Ritz values
        residual = tall.mT @ low_image[:, 0] - low[:, 0] * rho[0]  # (k,)
        if not self._converged(residual, rho, high_image.square().sum(), projected=True):
            return None
        self.low, self.high, self.unsettled = low, basis @ right[0], False
        return Extremes(torch.stack([low[:, 0], self.high], 1), torch.stack([low_image[:, 0], high_image], 1),
                        refreshed=False)

    def _iterate(self, tall: Tensor, iterations: int, refreshed: bool = False) -> Extremes | None:
        """Ritz projections until the smallest pair's residual passes (at most ``iterations`` + 1 checks).

        Every call projects at least once, so σ_max gets its power step even when σ_min was already
        converged; a projection never raises the smallest Ritz value of a subspace holding the old vectors.
        Returns None when the pair did not converge.
        """
        low_image, high_image = skinny(tall, self.low), tall @ self.high  # (n, p), (n,)
        for done in range(iterations + 1):
            back = skinny(tall.mT, torch.cat([low_image, high_image.unsqueeze(1)], dim=1))  # (k, p + 1) AᵀA[V v]
            rho = low_image.square().sum(0)  # (p,) Rayleigh quotients σ²
            residual = back[:, :-1] - self.low * rho  # (k, p)
            projected = bool(done) or refreshed  # the vectors are Ritz vectors of the current A
            converged = self._converged(residual[:, 0], rho, high_image.square().sum(), projected)
            self.unsettled = done > 1 or refreshed
            if converged and done:
                break
            if done == iterations:
                return None
            low_image, high_image = self._ritz(tall, residual, back[:, -1])
            if converged:
                break
        return Extremes(torch.stack([self.low[:, 0], self.high], 1),
                        torch.stack([low_image[:, 0], high_image], 1), refreshed)

    def _converged(self, residual: Tensor, rho: Tensor, lam_high: Tensor, projected: bool) -> bool:
        """Kato–Temple test: with gap δ to the next eigenvalue the eigenvalue error is at most ‖r‖²/δ
        and the vector's angle to the true one about ‖r‖/δ; the error must be below ``tolerance``·ρ
        (ρ floored at 1e-14·λ_max), which bounds the angle by √(tolerance·ρ/δ).

        δ is estimated from the block. Right after a projection (``projected``) the Ritz values are sorted
        and the mixing inside the block is resolved on the current A, so δ reaches to the top of the block
        and a cluster of nearly equal smallest values passes once it is separated from the values above
        it (no vector inside such a cluster is better defined than the cluster). Cached vectors from the
        previous A must pass with δ to the second value; a reordered pair has δ ≤ 0 and fails."""
        scale = lam_high * TINY_RATIO
        if len(rho) == 1:
            gap = lam_high - rho[0]
        else:
            gap = (rho[-1] if projected else rho[1]) - rho[0]
        error = torch.linalg.vector_norm(residual).square() / gap.clamp_min(scale)
        return bool(error <= self.tolerance * rho[0].maximum(scale))

    def _ritz(self, tall: Tensor, residual: Tensor, power: Tensor) -> tuple[Tensor, Tensor]:
        """One Rayleigh–Ritz projection; updates the vectors and returns their images under A."""
        p = self.low.shape[1]
        basis = torch.cat([self.low, (residual.mT @ self.precond).mT,  # P R: P symmetric; a short-wide GEMM
                            self.high.unsqueeze(1), power.unsqueeze(1)], 1)
        basis, _ = torch.linalg.qr(basis)  # (k, q) orthonormal, q ≤ 2p + 2
        projected = skinny(tall, basis)  # (n, q)
        _, _, right = torch.linalg.svd(projected, full_matrices=False)  # (q, q), singular values descending
        smallest = right[-p:].flip(0).mT  # (q, p), smallest first
        self.low, self.high = basis @ smallest, basis @ right[0]
        return projected @ smallest, projected @ right[0]

    def _images(self, tall: Tensor, refreshed: bool) -> Extremes:
        vectors = torch.stack([self.low[:, 0], self.high], 1)  # (k, 2)
        return Extremes(vectors, skinny(tall, vectors), refreshed)


class _Isotropy(torch.autograd.Function):
    """The penalty 1 − √((λ_min + f) / (d + f)) of a matrix W from its tracked singular pairs, one node.

    d is λ_max (``ratio``) or the mean eigenvalue (``rms``), f = jitter · mean λ, and λ = σ². The gradient
    is exact: dλ_i/dW = 2 · left_i ⊗ right_i for the two tracked pairs and d(mean λ)/dW = 2 W / k (mean λ
    is ‖W‖²_F / k), so the backward direction is one fused rank-2 update ``addmm``. The value and the
    chain-rule coefficients are computed in float64 in the forward direction: one autograd node per layer
    instead of a dozen scalar ones, which on a small MLP cost as much as the tracking itself.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor, left: Tensor, right: Tensor, lams: Tensor, use_mean: bool,
                jitter: float) -> Tensor:
        low, high, mean = lams.unbind()  # float64 λ_min, λ_max, mean λ
        floor = jitter * mean
        denominator = (mean if use_mean else high) + floor
        quotient = (low + floor) / denominator
        root = quotient.sqrt()
        d_floor = (1 - quotient) / denominator  # ∂q/∂f
        d_denominator = -quotient / denominator  # ∂q/∂d
        d_high = lams.new_zeros(()) if use_mean else d_denominator
        d_mean = jitter * d_floor + (d_denominator if use_mean else 0)
        coefficients = torch.stack([1 / denominator, d_high, d_mean]) * (-0.5 / root)  # ∂T/∂(λ_min, λ_max, mean)
        ctx.save_for_backward(matrix, left.to(matrix.dtype), right.to(matrix.dtype),  # W, (m, 2), (n, 2)
                              coefficients.to(matrix.dtype))
        return (1 - root).to(matrix.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        matrix, left, right, coefficients = ctx.saved_tensors
        scaled = coefficients * grad  # (3,)
        k = min(matrix.shape)
        update = torch.addmm(matrix, left * (2 * scaled[:2]), right.mT, beta=2 * scaled[2] / k)
        return update, None, None, None, None, None


def tracked_isotropy(matrix: Tensor, tracker: SingularTracker, use_mean: bool,
                     jitter: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ``ratio`` (or with ``use_mean`` the ``rms``) penalty of a real ``(m, n)`` matrix via ``tracker``.

    Returns the penalty (differentiable in ``matrix``, its dtype) and the tracked float64 σ_min and σ_max.
    """
    wide = matrix.shape[0] < matrix.shape[1]
    with torch.no_grad():
        tall = matrix.detach().to(torch.float64)
        tall = tall.mT if wide else tall  # (n, k), n ≥ k
        ext = tracker.update(tall)
        mean = torch.linalg.vector_norm(tall).square().view(1) / tall.shape[1]  # ‖A‖²_F / k, no (n, k) temporary
        lams = torch.cat([ext.images.square().sum(0), mean])  # (3,) λ_min, λ_max, mean λ
    # tall A: dλ/dA = 2 (A v) vᵀ; for a wide W = Aᵀ it is the transpose, 2 v (A v)ᵀ
    left, right = (ext.vectors, ext.images) if wide else (ext.images, ext.vectors)
    term = _Isotropy.apply(matrix, left, right, lams, use_mean, jitter)
    return term, lams[0].sqrt(), lams[1].sqrt()
