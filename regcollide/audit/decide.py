"""Deciding the ranks of one batch of equal-shape matrices: the staged pipeline of the rank engine.

Each stage is cheaper than the next and only passes on what it could not prove (see
``regcollide.audit.rank`` for the numerical argument):

0. small matrices (m n k up to ``_svd_max_work``) go straight to the reference computation,
   ``torch.linalg.svdvals`` in the weight's dtype: there one SVD costs less than a Gram stage (its fixed
   overhead, or for square-ish matrices the float64 eigensolve). Their sigma_min and sigma_max are that
   SVD's, as for borderline matrices;
1. a float32 Gram (``certify.gram``), for rectangular float32 matrices whose Marchenko-Pastur smallest
   eigenvalue clears the float32 error bound, and on it either the full-rank certificate (large batches)
   or a float32 symmetric eigensolve whose eigenvalues, widened by both error bounds, all clear the band;
2. the float64 Gram and the full-rank certificate: Lanczos, then two certified Choleskys. Both
   certificates are skipped for batches too small to repay their fixed cost (``_certificate_pays``);
3. the deflation certificate (``regcollide.audit.deflate``, k >= 512): a few small eigenvalues counted
   exactly with Choleskys instead of an eigensolver;
4. the symmetric eigensolver on the Gram, and for any matrix with an eigenvalue in the band around tol^2,
   ``torch.linalg.svdvals`` in the matrix's own dtype, exactly as ``torch.linalg.matrix_rank`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from regcollide.audit.certify import (
    U32,
    U64,
    blas_threads,
    chunk_gamma,
    eigensolver_error,
    gram,
    is_positive_definite,
    lanczos_top,
)
from regcollide.audit.deflate import deflated_ranks
from regcollide.audit.noise import expected_random_count

__all__ = ["Decided", "NonFiniteWeightsError", "Rule", "decide_batch"]

_SCIPY_EIGEN_MIN_K = 192  # see _eigvalsh32
# m n k up to which one reference SVD is cheaper than a Gram stage (whose fixed cost is about 0.07 ms),
# measured on one thread. LAPACK starts a tall matrix's SVD with a QR, cheaper than the wide one's
# bidiagonalization; square-ish matrices, which the float32 Gram cannot serve, pay a float64
# eigensolve, which costs about as much as the SVD itself.
_SVD_MAX_WORK = 1e5
_SVD_MAX_WORK_TALL = 2.5e5
_SVD_MAX_WORK_SQUARE = 2e6
_CERTIFY_MIN_K = 129  # below this a batched eigensolve is as cheap as the certificate
# The certificate's fixed cost (about 80 Lanczos steps in Python) is repaid once the eigensolves it saves,
# about B k^3 flops at BLAS-2 speed, exceed it: B k^3 >= 4e8 (one 768 x 768 Gram, three of 512, ...).
_CERTIFY_MIN_WORK = 4e8
_DEFLATE_MIN_K = 512  # below this the eigensolver is as cheap as the deflation certificate
_LANCZOS_STEPS = 40
_FLOAT32_LANCZOS_MIN_K = 512  # from here on, Lanczos matvecs read a float32 copy of the Gram
_UPPER_MARGIN = 1.01  # certify lambda_max < 1.01 * (Lanczos estimate): tol is over-estimated by <= 0.5%


@dataclass(frozen=True)
class Rule:
    """One tolerance rule applied to a batch: rtol, atol, the factors and the matrix dtype's eps."""

    rtol: float
    atol: float
    factors: tuple[float, ...]
    eps: float

    def tol(self, sigma_max: Tensor | np.ndarray | float, factor: float = 1.0):
        """f * max(atol, rtol * sigma_max), elementwise on a tensor or an array."""
        if isinstance(sigma_max, Tensor):
            return factor * torch.clamp(self.rtol * sigma_max, min=self.atol)
        if isinstance(sigma_max, np.ndarray):
            return factor * np.maximum(self.rtol * sigma_max, self.atol)
        return factor * max(self.atol, self.rtol * sigma_max)


def _svd_ranks(matrix: Tensor, rule: Rule) -> tuple[int, tuple[int, ...], float, float, float]:
    """The reference computation of torch.linalg.matrix_rank, in the matrix's own dtype."""
    sigma = torch.linalg.svdvals(matrix)  # descending
    tol = rule.tol(float(sigma[0]))
    ranks = tuple(int((sigma > f * tol).sum()) for f in rule.factors)  # f = 1.0 multiplies exactly
    return int((sigma > tol).sum()), ranks, float(sigma[-1]), float(sigma[0]), tol


class _Certificate(NamedTuple):
    """What the full-rank certificate learned about a batch of Grams (all (B,))."""

    certified: Tensor  # every sigma_i > max(factors) * tol, proven
    sigma_min: Tensor  # Lanczos estimate where certified, NaN elsewhere
    theta: Tensor  # Lanczos estimate of lambda_max, <= lambda_max(G_hat)
    upper: Tensor  # certified upper bound on lambda_max(G_hat) where upper_ok
    upper_ok: Tensor


def _certify_full_rank(grams: Tensor, delta: Tensor, rule: Rule, lower: bool = True) -> _Certificate:
    """Try to prove every sigma_i > max(factors) * tol with two certified Choleskys (see the module doc).

    ``lower=False`` only bounds lambda_max (for the deflation certificate), skipping the full-rank test.
    """
    bsz, k, _ = grams.shape
    theta = lanczos_top(_gram_matvec(grams), (bsz, k), _LANCZOS_STEPS, grams.dtype, grams.device,
                        rtol=1e-10).clamp_min(0)  # (B,) ~ lambda_max(G_hat), an estimate
    if not lower:  # the deflation certificate needs a tight bound on lambda_max: certify 1.01 theta
        upper = _UPPER_MARGIN * theta + delta
        upper_ok, _, _ = is_positive_definite(grams, upper, sign=-1.0)  # upper I - G > 0
        nothing = torch.zeros_like(upper_ok)
        return _Certificate(nothing, torch.full_like(theta, math.nan), theta, upper, upper_ok)
    # First with a free bound, lambda_max <= min(||G||_inf, tr G): it is loose (up to a few times
    # lambda_max) but usually leaves sigma_min far above the tolerance it implies. Where it does not, the
    # tight bound 1.01 theta is certified by a Cholesky of (1.01 theta I - G) and the test repeated.
    loose = _free_upper_bound(grams) + delta
    lower_ok, factor, shift, floor = _full_rank_test(grams, loose, delta, rule)
    upper, upper_ok = loose, torch.ones_like(lower_ok)
    if not bool(lower_ok.all()):
        upper = torch.where(lower_ok, loose, _UPPER_MARGIN * theta + delta)
        retry = (~lower_ok).nonzero()[:, 0]
        upper_ok[retry], _, _ = is_positive_definite(grams[retry], upper[retry], sign=-1.0)
        again, factor[retry], shift[retry], floor[retry] = _full_rank_test(grams[retry], upper[retry],
                                                                           delta[retry], rule)
        lower_ok[retry] = again
    certified = upper_ok & lower_ok
    sig_min = torch.full_like(theta, math.nan)
    if bool(certified.any()):
        # Lanczos on (G - c I)^-1 through the Cholesky factor: its top Ritz value is ~1 / (lambda_min - c).
        # Only certified items: a failed factorization holds garbage that must not reach the eigensolver.
        ok, done = certified.nonzero()[:, 0], factor[certified]
        # sigma_min is only reported (the certificate does not use it): 1e-7 relative is plenty.
        inv = lanczos_top(lambda q: _cholesky_solve(done, q), (len(ok), k), _LANCZOS_STEPS, grams.dtype,
                          grams.device, rtol=1e-7)
        sig_min[ok] = (floor[ok] + shift[ok] + 1.0 / inv.clamp_min(1e-300)).sqrt()
    return _Certificate(certified, sig_min, theta, upper, upper_ok)


def _gram_matvec(grams: Tensor):
    """q -> G q for Lanczos. Large Grams are read in float32: the matvecs are memory-bound, theta is only
    an estimate (the bound on lambda_max that the rank relies on is certified on the float64 Gram), and
    float32 storage moves it by at most about sqrt(k) * 6e-8 relative, below Lanczos' own error there."""
    # G is exactly symmetric, so G q = (q^T G)^T; the row-vector product is the much faster kernel on CPU.
    if grams.shape[-1] < _FLOAT32_LANCZOS_MIN_K:
        return lambda q: (q[:, None, :] @ grams)[:, 0]
    single = grams.float()  # (B, k, k)
    return lambda q: (q.float()[:, None, :] @ single)[:, 0].double()


def _free_upper_bound(grams: Tensor) -> Tensor:
    """min(||G||_inf, tr G) >= lambda_max(G) for (B, k, k) positive semidefinite G, rounded up (B,)."""
    k = grams.shape[-1]
    row_sums = grams.abs().sum(dim=2).amax(dim=1)  # the infinity norm bounds the spectral radius
    trace = grams.diagonal(dim1=1, dim2=2).sum(dim=1)  # the sum of the (nonnegative) eigenvalues
    return torch.minimum(row_sums, trace) * (1 + 2 * k * U64)


def _full_rank_test(grams: Tensor, upper: Tensor, delta: Tensor, rule: Rule
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rump's Cholesky of G - floor I with floor above every requested tolerance, given lambda_max <= upper.

    Returns (proven (B,), Cholesky factor, Rump's shift, floor).
    """
    k = grams.shape[-1]
    sig_hi = (upper + delta).sqrt()  # >= sigma_max(A)
    eta = 2.0 * math.sqrt(k) * rule.eps * sig_hi  # the reference's own SVD error
    tol_hi = rule.tol(sig_hi, max(rule.factors)) + eta
    floor = tol_hi**2 + delta  # lambda_min(G_hat) > floor => lambda_min(G) > tol_hi^2
    ok, factor, shift = is_positive_definite(grams, -floor)
    return ok, factor, shift, floor


def _cholesky_solve(factor: Tensor, rhs: Tensor) -> Tensor:
    """(L L^T)^-1 rhs for (B, k, k) L and (B, k) rhs; two triangular solves (torch.cholesky_solve is ~15x
    slower on batched single right-hand sides on CPU)."""
    half = torch.linalg.solve_triangular(factor, rhs[:, :, None], upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)[:, :, 0]


def _bands(lam_lo: np.ndarray, lam_hi: np.ndarray, delta: np.ndarray, rule: Rule, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The bands [lo, hi] (B, F), one per matrix and factor, of Gram eigenvalues that the reference could
    rank either way.

    ``lam_lo <= lambda_max(G) <= lam_hi``; the band covers the tolerance's uncertainty, the reference
    SVD's own error eta and the Gram error delta, so an eigenvalue outside it is decided the same way.
    float64 arrays on the host: a few scalars per matrix, where each torch call would cost more than the
    arithmetic.
    """
    sig_lo, sig_hi = np.sqrt(np.maximum(lam_lo - delta, 0.0)), np.sqrt(lam_hi + delta)
    eta = (2.0 * math.sqrt(k) * rule.eps * sig_hi)[:, None]
    factors = np.asarray(rule.factors)  # f * max(atol, rtol s), as Rule.tol multiplies
    lo = np.maximum(rule.tol(sig_lo)[:, None] * factors - eta, 0.0) ** 2 - delta[:, None]
    hi = (rule.tol(sig_hi)[:, None] * factors + eta) ** 2 + delta[:, None]
    return lo, hi


def _band_decide(eig: np.ndarray, delta: np.ndarray, rule: Rule, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (B, F) from the Gram eigenvalues (B, k) and which matrices are borderline at some factor."""
    lo, hi = _bands(eig[:, -1], eig[:, -1], delta, rule, k)  # (B, F) each
    at_most_hi = (eig[:, None, :] <= hi[:, :, None]).sum(axis=2)  # (B, F)
    below_lo = (eig[:, None, :] < lo[:, :, None]).sum(axis=2)
    # A NaN (a solver failure) satisfies no comparison: it would count as above the band. Such a matrix
    # is never decided here.
    unusable = ~(np.isfinite(eig).all(axis=1) & np.isfinite(hi).all(axis=1))
    return k - at_most_hi, (at_most_hi > below_lo).any(axis=1) | unusable


# One decided matrix: (ranks at each factor of the rule, sigma_min, sigma_max, tol, method).
Decided = tuple[tuple[int, ...], float, float, float, str]


def _float32_pays(batch: Tensor, k: int, big: int) -> bool:
    """Whether a float32 Gram can serve: float32 weights on the CPU (scipy's BLAS) that are not square-ish."""
    return batch.device.type == "cpu" and batch.dtype == torch.float32 and not _square_ish(k, big)


def _square_ish(k: int, big: int) -> bool:
    """Whether a float32 Gram is too coarse for this shape: its error bound gamma ||A||_F^2 must sit well
    below lambda_min, which for i.i.d. weights is (1 - sqrt(k/N))^2 times the mean eigenvalue
    ||A||_F^2 / k (Marchenko-Pastur)."""
    return chunk_gamma(big, U32) * k >= 0.5 * (1 - math.sqrt(k / big)) ** 2


def _certificate_pays(count: int, k: int) -> bool:
    """Whether the certificates (Lanczos + Choleskys) beat the eigensolver on ``count`` k x k Grams."""
    return k >= _CERTIFY_MIN_K and count * float(k) ** 3 >= _CERTIFY_MIN_WORK


def _svd_max_work(m: int, n: int) -> float:
    """The m n k up to which the reference SVD is the cheapest path for an m x n matrix."""
    if _square_ish(min(m, n), max(m, n)):  # their Gram stage ends in a float64 eigensolve
        return _SVD_MAX_WORK_SQUARE
    return _SVD_MAX_WORK_TALL if m > n else _SVD_MAX_WORK


def _likely_deficient(m: int, n: int, rule: Rule) -> bool:
    """Random weights of this shape expect >= 0.5 singular values under the largest tolerance."""
    return rule.atol == 0 and expected_random_count(m, n, rule.rtol * max(rule.factors)) >= 0.5


def decide_batch(batch: Tensor, rule: Rule, keep_row_grams: bool = False) -> tuple[list[Decided], Tensor | None]:
    """Ranks of a batch (B, m, n) of equal-shape matrices sharing one tolerance rule, in batch order.

    float32 Gram + full-rank certificate where it pays; then, for what is left, the float64 Gram, the
    full-rank certificate, the deflation certificate (large k) and finally the eigensolver / SVD.
    ``keep_row_grams`` (wide matrices only) also returns the (B, m, m) row Grams, for the row cosines.
    """
    bsz, m, n = batch.shape
    k, big = min(m, n), max(m, n)
    if m * n * k <= _svd_max_work(m, n):  # the reference itself (row cosines then use their own
        # product)
        _check_finite(batch, batch.shape)
        return [_svd_decided(batch[i], rule) for i in range(bsz)], None
    decided: dict[int, Decided] = {}
    row_grams = None
    if keep_row_grams and m <= n:
        row_grams = torch.empty(bsz, k, k, dtype=torch.float64, device=batch.device)
    todo = list(range(bsz))
    with blas_threads(big * k * k):  # one switch of scipy's thread pool for all of a small batch's calls
        if _float32_pays(batch, k, big):
            todo = _stage(batch, todo, rule, decided, row_grams, precise=False)
        if todo:
            _stage(batch, todo, rule, decided, row_grams, precise=True)
    return [decided[i] for i in range(bsz)], row_grams


def _stage(batch: Tensor, todo: list[int], rule: Rule, decided: dict[int, Decided], row_grams: Tensor | None,
           precise: bool) -> list[int]:
    """Decide the matrices ``todo`` of ``batch`` from one Gram (float64 if ``precise``); return the rest."""
    _, m, n = batch.shape
    k = min(m, n)
    sub = batch if len(todo) == batch.shape[0] else batch[todo]  # indexing would copy the whole batch
    eigen_only = not precise and not _certificate_pays(len(todo), k)  # a float32 eigensolve on the float32 Grams
    # (R, k, k) float64 (float32 if not precise; only the upper triangles for the eigensolve), (R,), (R,)
    grams, frob2, delta = gram(sub, single=not precise, full=not eigen_only)
    if precise:
        _check_finite(frob2, batch.shape)
    elif not bool(torch.isfinite(frob2).all()):
        return todo  # float32 products overflow (entries beyond about 1e19): the float64 stage decides
    if row_grams is not None:
        row_grams[todo] = (grams.triu() + grams.triu(1).mT).double() if eigen_only else grams.double()
    left, cert = list(range(len(todo))), None
    if eigen_only:
        return _eigen(batch, todo, grams, delta, rule, decided, single=True)
    grams = grams.double()  # exact; a no-op for the float64 stage
    if _certificate_pays(len(todo), k):
        # Where float noise alone likely leaves singular values under the largest tolerance (big square
        # layers), the full-rank test would fail: go straight to the deflation certificate.
        deflate_first = precise and k >= _DEFLATE_MIN_K and _likely_deficient(m, n, rule)
        cert = _certify_full_rank(grams, delta, rule, lower=not deflate_first)
        for j in cert.certified.nonzero()[:, 0].tolist():
            s_max = math.sqrt(float(cert.theta[j]))
            decided[todo[j]] = ((k,) * len(rule.factors), float(cert.sigma_min[j]), s_max, rule.tol(s_max),
                                "cholesky")
        left = [j for j in left if not bool(cert.certified[j])]
    if not precise:
        return [todo[j] for j in left]
    if cert is not None and k >= _DEFLATE_MIN_K:
        left = _deflate(batch, todo, left, (grams, frob2, delta, cert), rule, decided)
    if left:
        _eigen(batch, [todo[j] for j in left], grams[left], delta[left], rule, decided)
    return []


def _deflate(batch: Tensor, todo: list[int], left: list[int], state: tuple, rule: Rule,
             decided: dict[int, Decided]) -> list[int]:
    """The deflation certificate (``regcollide.audit.deflate``) on large rank-deficient matrices."""
    grams, frob2, delta, cert = state
    k = grams.shape[-1]
    rest = []
    for j in left:
        if not bool(cert.upper_ok[j]):
            rest.append(j)
            continue
        theta, upper = cert.theta[j : j + 1].cpu().numpy(), cert.upper[j : j + 1].cpu().numpy()
        lo, hi = _bands(theta, upper, delta[j : j + 1].cpu().numpy(), rule, k)
        bands = list(zip(lo[0].tolist(), hi[0].tolist(), strict=True))
        found = deflated_ranks(grams[j], bands, float(frob2[j]), float(upper[0]))
        if found == "borderline":
            decided[todo[j]] = _svd_decided(batch[todo[j]], rule)
        elif found is None:
            rest.append(j)
        else:
            ranks, s_min = found
            s_max = math.sqrt(float(theta[0]))
            decided[todo[j]] = (tuple(ranks), s_min, s_max, rule.tol(s_max), "deflation")
    return rest


def _svd_decided(matrix: Tensor, rule: Rule) -> Decided:
    _, ranks, s_min, s_max, tol = _svd_ranks(matrix, rule)
    return ranks, s_min, s_max, tol, "svd"


def _eigen(batch: Tensor, idx: list[int], grams: Tensor, delta: Tensor, rule: Rule,
           decided: dict[int, Decided], single: bool = False) -> list[int]:
    """The symmetric eigensolver on the Grams (R, k, k); returns the items of ``idx`` left undecided.

    Only the upper triangles are read. float64 Grams: every matrix is decided, a borderline one recomputed
    as the reference does. ``single``: float32 Grams from ``gram(single=True)``, which a float32 solve sees
    exactly. A matrix is decided only if every eigenvalue, widened by the Gram bound and the float32
    solver's own error, lies above the band at every factor: then its rank is k for the reference too.
    The rest is left to the float64 stage. Their sigma_min and sigma_max are those of the float32 Gram
    (relative error about 1e-6 on these well-conditioned matrices, like the reference's own float32 SVD).
    """
    k = grams.shape[-1]
    eig = _eigvalsh32(grams) if single else torch.linalg.eigvalsh(grams, UPLO="U").cpu().numpy()  # (R, k) asc.
    # ||G_hat||_2 <= 2 * (computed lambda_max) for a backward-stable solver with p(k) u < 1/2.
    bound = delta.cpu().numpy() + eigensolver_error(2 * np.abs(eig[:, -1]), k, unit=2 * U32 if single else U64)
    band_ranks, borderline = _band_decide(eig, bound, rule, k)
    if single:  # only full rank proven with room to spare
        borderline |= (band_ranks < k).any(axis=1)
    rest = []
    for j, i in enumerate(idx):
        if borderline[j]:
            if single:
                rest.append(i)
            else:
                decided[i] = _svd_decided(batch[i], rule)
            continue
        s_min, s_max = math.sqrt(max(float(eig[j, 0]), 0.0)), math.sqrt(max(float(eig[j, -1]), 0.0))
        decided[i] = (tuple(int(r) for r in band_ranks[j]), s_min, s_max, rule.tol(s_max), "gram")
    return rest


def _eigvalsh32(grams: Tensor) -> np.ndarray:
    """Eigenvalues (R, k), ascending, in float64, of float32 symmetric matrices given by their upper
    triangles. From k = 192 on, scipy's LAPACK ``ssyev`` is 5-20% faster than torch's on one CPU thread,
    and reading the upper triangle another 10% (both solvers are backward stable: the same bound holds)."""
    if grams.device.type != "cpu" or grams.shape[-1] < _SCIPY_EIGEN_MIN_K:
        return torch.linalg.eigvalsh(grams, UPLO="U").double().cpu().numpy()
    with blas_threads(0):  # its tridiagonal reduction is memory-bound: a second thread only contends
        return np.stack([scipy.linalg.eigh(g, lower=False, eigvals_only=True, driver="ev", check_finite=False)
                         for g in grams.numpy()]).astype(np.float64)


class NonFiniteWeightsError(ValueError):
    """A weight matrix holds NaN or inf: its rank is undefined."""


def _check_finite(values: Tensor, shape: tuple[int, ...]) -> None:
    # Any NaN/inf entry makes a row norm, hence ||A||_F^2, non-finite: checking the Gram's trace (or, for
    # the tiny matrices that skip the Gram, the entries themselves) is free.
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteWeightsError(
            f"a weight matrix of shape {tuple(shape[-2:])} holds NaN or inf values (or overflows float64), "
            "so its rank is undefined; check the weights (a diverged training run?)")
