"""Extreme singular values of a matrix that moves a little every step, tracked in float64 by warm starts.

The minimum-singular-value penalty needs σ_min and σ_max of every layer matrix at every training step,
with the gradient of σ_min, u_min v_minᵀ, pointing the right way even when σ_min/σ_max is 1e-6: the
range where the audit counts excess nullity (Ozbulak et al., "Exact Feature Collisions in Neural
Networks", 2022). A float32 Gram matrix cannot see that range: its eigenvalues carry an absolute error of
about k·eps(float32)·σ_max² ≈ 1e-5·σ_max² for k = 100, so σ_min below ~1e-3·σ_max is noise.

The tracker never forms a Gram matrix between refreshes. It works on the tall view A (n × k, n ≥ k; the
transpose of a wide matrix) in float64 and keeps the right singular vectors of the ``BLOCK`` = 4 smallest
and of the largest singular value from the previous step, plus AᵀA v_high from the last tracking step.

A *tracking step* starts with one Rayleigh–Ritz projection of A onto span{V_low, v_high, AᵀA v_high,
V_prev}: the cached vectors, a Krylov direction for σ_max and the block one tracking step earlier (with
V_low it spans the direction the block drifts in), one pass over A for their images. Training rotates
the smallest vectors inside the cluster the penalty lifts σ_min into (σ_min reaches σ_2, then σ_3, ...),
and this projection undoes that rotation on the current A. A second pass gives AᵀA of the new vectors:
the smallest Ritz pair is accepted when its eigen-residual r = AᵀA v − ρ v passes the Kato–Temple test
(the eigenvalue error bound ‖r‖²/δ, with δ the gap to the top of the block, must be below
``tolerance``·ρ), and AᵀA v_high is the next step's Krylov direction. So a step that converges at once
costs two passes over A.

Otherwise the step continues with Rayleigh–Ritz projections of A onto

    span{ V_low,  P·(AᵀA V_low − V_low diag(ρ)),  v_high,  AᵀA v_high }

where P is the pseudo-inverse of AᵀA from the last refresh: a block preconditioned inverse-iteration
(PINVIT / LOBPCG-style; Knyazev, "Toward the Optimal Preconditioned Eigensolver", SIAM J. Sci. Comput.
2001) step for the smallest pairs and a power step for the largest, two passes over A each, accepted by
the same test. The block is four wide because a block of two cannot resolve the cluster: its test then
failed every few steps and forced a decomposition, while a block of four holds the cluster and measures
the gap to the values above. If up to ``iterations`` of these projections do not converge, or every
``refresh_every`` steps, the tracker *refreshes*: an eigendecomposition of the float64 Gram gives a new
preconditioner and start vectors, which projections on A itself then polish to full float64 accuracy.

A matrix with k ≤ 2·BLOCK + 2 columns is not tracked: a projection basis would span all of it, so the
eigenvectors of its k × k float64 Gram, with σ read afresh as ‖A v‖, are cheaper and as accurate.

Tracking runs every ``track_every`` steps, and on every step after one that did not converge at once
(the spectrum is moving). In between, the values are the float64 Rayleigh quotients ‖A v‖² of the
cached vectors: one pass over A, an upper bound of σ_min² and a lower bound of σ_max², with an error of
second order in how far the weights moved since the last tracking step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def images_of(rows: Tensor, tall: Tensor) -> Tensor:
    """A·V for the vectors in the rows of ``rows`` (r, k), returned as rows (r, n): one product in the
    row-vector form, the fast CPU kernel for a few vectors. Measured in float64 on a 784 × 256 A, five
    vectors take 0.10 ms this way, 0.2 ms as five matrix-vector products and 0.25 ms as A @ V."""
    return rows @ tall.mT


def ritz_coefficients(images: Tensor) -> Tensor:
    """Rayleigh–Ritz on an orthonormal basis, from its images Y (q, n) as rows: the eigenvectors (q, q) of
    the small Gram Y Yᵀ, as columns in ascending order of their eigenvalues.

    The Gram squares the condition number, so its eigenvalues near σ_min² carry an absolute error of about
    q·eps·σ_max²; they are never used. Its eigenvectors are used: one off by an angle θ inside the basis,
    θ ≈ q·eps·σ_max²/gap, changes the Rayleigh quotient by O(θ²) only, and every accepted pair passes an
    eigen-residual computed afresh on A. A LAPACK SVD of Y spans the same vectors at 2-3x the cost.
    """
    return torch.linalg.eigh(images @ images.mT)[1]


BLOCK = 4  # smallest vectors tracked: enough to hold the cluster the penalty lifts σ_min into
EXACT_COLUMNS = 2 * BLOCK + 2  # up to this k a projection basis spans A: take its SVD instead
CALM_STEPS = 3  # steps converged at the first projection before the start basis drops V_prev
TINY_RATIO = 1e-14  # λ_min/λ_max below this (σ ratio 1e-7) the residual test is relative to λ_max·1e-14


@dataclass
class Extremes:
    """One step's result for a tall float64 matrix A (n × k): right vectors and their images A v, as rows."""

    vectors: Tensor  # (2, k) right singular vectors of σ_min and σ_max
    images: Tensor  # (2, n) A · vectors, row norms σ_min and σ_max
    lams: list[float]  # [σ_min², σ_max²], the squared row norms of ``images``
    refreshed: bool  # this step ran a full decomposition


class SingularTracker:
    """Warm-started σ_min and σ_max of one matrix across steps (see the module docstring).

    Vectors are handled as rows, so every product with A is one row-vector GEMM; ``low`` keeps the
    column layout (k, p) of the saved state (a transposed view). The code keeps the number of tensor
    operations small on purpose: on a small MLP each costs a few microseconds, as much as the arithmetic.

    Args:
        tolerance: accepted relative eigen-residual of the smallest Ritz pair.
        iterations: preconditioned projections per step before a refresh is forced.
        refresh_every: a full decomposition at least every N steps (it renews the preconditioner).
        track_every: Ritz steps every N steps, Rayleigh quotients of the cached vectors in between.
    """

    def __init__(self, tolerance: float = 1e-3, iterations: int = 3, refresh_every: int = 100,
                 track_every: int = 1):
        self.tolerance, self.iterations, self.refresh_every = tolerance, iterations, refresh_every
        self.track_every = track_every
        self.low: Tensor | None = None  # (k, p) p = min(BLOCK, k) right vectors, smallest first
        self.high: Tensor | None = None  # (k,)
        self.power: Tensor | None = None  # (1, k) AᵀA v_high at the end of the last tracking step
        self.previous: Tensor | None = None  # (p, k) the block before the last tracking step, as rows
        self.calm = 0  # tracking steps in a row that converged at the first projection
        self.precond: Tensor | None = None  # (k, k) pseudo-inverse of AᵀA at the last refresh
        self.shape: tuple[int, ...] | None = None  # (n, k) of the matrix the state belongs to
        self.age = 0
        self.refreshes = 0
        self.tracked = False  # the last update ran Ritz steps (False: Rayleigh quotients of cached vectors)
        self.unsettled = True  # the last tracking step needed several preconditioned projections: track again

    def state_dict(self) -> dict:
        """The warm state (tensors, counters, flags): a resumed training continues bitwise from it."""
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        # KeyError before anything changes; a state saved before the Krylov direction and the previous
        # block were kept starts without them
        added = {"power": None, "previous": None, "calm": 0}
        values = {key: state[key] for key in vars(self) if key not in added}
        values |= {key: state.get(key, default) for key, default in added.items()}
        values["shape"] = None if values["shape"] is None else tuple(values["shape"])
        for key, value in values.items():
            setattr(self, key, value)

    def update(self, tall: Tensor) -> Extremes:
        """Track the extremes of ``tall`` (n × k, n ≥ k, float64, no gradient)."""
        if tall.shape[1] <= EXACT_COLUMNS:
            return self._exact(tall)
        stale = self.shape != tall.shape or self.age >= self.refresh_every
        self.tracked = stale or self.unsettled or self.age % self.track_every == 0
        if not self.tracked:
            self.age += 1
            return self._images(tall, refreshed=False)  # Rayleigh quotients of the cached vectors
        if not stale:
            result = self._track(tall, self.iterations)
            if result is not None:
                self.age += 1
                return result
        self._refresh(tall)
        result = self._track(tall, max(2, self.iterations), refreshed=True)
        if result is None:  # a float64 eigendecomposition polished on A itself: accept it as exact
            result = self._images(tall, refreshed=True)
        return result

    def _exact(self, tall: Tensor) -> Extremes:
        """A few columns: the eigenvectors of the float64 Gram AᵀA (k × k), every step, and σ from the norms
        of their images ‖A v‖, computed afresh. The Gram's rounding tilts v_min towards v_j by about
        eps·σ_max²/(λ_j − λ_min), which moves the Rayleigh quotient ‖A v_min‖² by the square of that: below
        1e-8·σ_min² even at σ_min/σ_max = 1e-6 with σ_min and σ_2 a factor 2 apart (an SVD costs 2-4x more
        here, most of it in code the Ritz steps do not share)."""
        vectors = torch.linalg.eigh(tall.mT @ tall)[1]  # (k, k) columns, ascending
        self.low, self.high = vectors[:, : min(BLOCK, tall.shape[1])], vectors[:, -1]  # the state, as tracked
        self.shape, self.tracked, self.unsettled = tall.shape, True, False
        return self._images(tall, refreshed=True)

    def _refresh(self, tall: Tensor) -> None:
        lam, vectors = torch.linalg.eigh(tall.mT @ tall)  # (k,), (k, k) ascending
        floor = lam[-1].clamp_min(torch.finfo(tall.dtype).tiny) * tall.shape[1] * torch.finfo(tall.dtype).eps
        # float64: the small weights 1/λ_j of the directions a correction needs sit next to 1/λ_min, which
        # can be 1e8 times larger; float32 rounding of P would bury them
        self.precond = (vectors / lam.clamp_min(floor)) @ vectors.mT  # (k, k)
        self.low = vectors[:, : min(BLOCK, tall.shape[1])].clone()
        self.high = vectors[:, -1].clone()
        self.power = self.previous = None
        self.age, self.refreshes, self.shape = 0, self.refreshes + 1, tall.shape

    def _start_basis(self) -> Tensor:
        """span{V_low, v_high, AᵀA v_high} as orthonormal rows (p + 2, k), the cached vectors first. Unless the
        last ``CALM_STEPS`` tracking steps converged at their first projection (the block is drifting), also
        V_prev, the block one tracking step earlier: with V_low it spans the direction the block drifts in,
        as the search direction of LOBPCG does across its iterations (Knyazev 2001); on the MLP's square
        layer it cuts the residual of this projection about 30-fold. Right after a refresh there is neither
        extra."""
        basis = torch.cat([self.low.mT, self.high.unsqueeze(0)])  # (p + 1, k) orthonormal (a Ritz basis)
        if self.power is None:
            return basis
        if self.calm < CALM_STEPS and self.previous is not None:
            # Householder QR keeps span{V_low, v_high} in its first p + 1 rows; an extra that adds nothing
            # becomes some orthonormal direction, which a projection can only use
            return torch.linalg.qr(torch.cat([basis, self.power, self.previous]).mT)[0].mT
        power = self.power[0]
        step = power - (basis @ power) @ basis
        step = step - (basis @ step) @ basis  # twice is enough (Kahan): orthogonal to working precision
        length = torch.linalg.vector_norm(step)
        if not bool(length > torch.finfo(step.dtype).eps ** 0.5 * torch.linalg.vector_norm(power)):
            return basis  # v_high is an eigenvector to working precision: nothing to add
        return torch.cat([basis, (step / length).unsqueeze(0)])  # (p + 2, k)

    def _track(self, tall: Tensor, iterations: int, refreshed: bool = False) -> Extremes | None:
        """The cheap projection, then preconditioned ones until the smallest pair passes (at most
        ``iterations`` of them). Every step projects at least once, so σ_max gets its power step even when
        σ_min was already converged; a projection never raises the smallest Ritz value of a subspace that
        holds the old vectors. Returns None when the pair did not converge."""
        p = self.low.shape[1]
        basis, self.previous = self._start_basis(), self.low.mT
        rows, images = self._project(tall, basis)  # (p + 1, k), (p + 1, n): p smallest, then the largest
        for done in range(iterations + 1):
            back = images @ tall  # (p + 1, k) AᵀA [V v], as rows
            squares = images.square().sum(1)  # (p + 1,) Rayleigh quotients σ², ascending
            residual = torch.addcmul(back, rows, squares.unsqueeze(1), value=-1)  # (p + 1, k) AᵀA v − ρ v
            lams = squares.tolist()
            self.power = back[p:]  # (1, k)
            if self._converged(float(torch.linalg.vector_norm(residual[0])) ** 2, lams):
                self.calm = 0 if done else self.calm + 1
                self.unsettled = done > 1 or refreshed  # several preconditioned projections: track again
                return Extremes(rows[0::p], images[0::p], lams[0::p], refreshed)
            if done == iterations:
                self.unsettled = True
                return None
            # basis: [V_low, v_high, P R, AᵀA v_high] orthonormal rows (q, k), q ≤ 2p + 2; P symmetric
            basis = torch.linalg.qr(torch.cat([rows, residual[:p] @ self.precond, self.power]).mT)[0].mT
            rows, images = self._project(tall, basis)
        return None

    def _project(self, tall: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
        """Rayleigh–Ritz of A on the orthonormal rows ``basis`` (q, k): the p smallest and the largest Ritz
        vectors (p + 1, k) and their images (p + 1, n), one pass over A; the state takes the vectors."""
        p = self.low.shape[1]
        images = images_of(basis, tall)  # (q, n)
        coefficients = ritz_coefficients(images)  # (q, q) ascending
        keep = list(range(p)) + [coefficients.shape[1] - 1]  # the p smallest and the largest
        chosen = coefficients.mT[keep]  # (p + 1, q)
        rows = chosen @ basis  # (p + 1, k)
        self.low, self.high = rows[:p].mT, rows[p]
        return rows, chosen @ images

    def _converged(self, residual_norm2: float, lams: list[float]) -> bool:
        """Kato–Temple test: with gap δ to the next eigenvalue the eigenvalue error is at most ‖r‖²/δ
        and the vector's angle to the true one about ‖r‖/δ; the error must be below ``tolerance``·ρ
        (ρ floored at 1e-14·λ_max), which bounds the angle by √(tolerance·ρ/δ).

        ``lams`` are the Ritz values of the block, ascending, then λ_max. They are Ritz values of the
        current A (sorted, the mixing inside the block resolved), so δ reaches to the top of the block and a
        cluster of nearly equal smallest values passes once it is separated from the values above it (no
        vector inside such a cluster is better defined than the cluster). Product form, so a zero matrix
        passes instead of dividing by zero."""
        low, top, lam_high = lams[0], lams[-2], lams[-1]
        scale = lam_high * TINY_RATIO
        gap = (lam_high if len(lams) == 2 else top) - low
        return residual_norm2 <= self.tolerance * max(low, scale) * max(gap, scale)

    def _images(self, tall: Tensor, refreshed: bool) -> Extremes:
        vectors = torch.stack([self.low[:, 0], self.high])  # (2, k)
        images = images_of(vectors, tall)  # (2, n)
        return Extremes(vectors, images, images.square().sum(1).tolist(), refreshed)
