"""Fast, exact numerical rank of weight matrices: the engine behind the spectrum audit.

The rank of a matrix A (m x n, k = min(m, n), N = max(m, n)) counts singular values sigma_i > tol, with
``tol = max(atol, rtol * sigma_max)``. With no rtol/atol given we use ``torch.linalg.matrix_rank``'s
default, ``rtol = N * eps(dtype)`` (eps of float32 for float32 weights), so ranks are *identical* to a
per-layer ``torch.linalg.matrix_rank(A)``, only much faster.

Numerical argument (why the Gram matrix is safe, and when it is not):

1. ``G = A A^T`` (or ``A^T A``, whichever is k x k) is formed in float64 from the stored values, which
   converts float32 exactly. Every computed eigenvalue is within
   ``delta = u64 * (N + 10 k + 10) * ||A||_F^2`` of the exact one (``regcollide.audit.certify.gram_error``).
2. The decision ``sigma > tol`` equals ``lambda > tol^2``. For float32 weights, tol^2 / sigma_max^2 =
   (N eps32)^2 ~ 1.4e-14 N^2 while delta / sigma_max^2 <= 2.2e-16 (N + 10k) k, i.e. the threshold sits
   at least ~30x above the Gram error even in the worst case (and orders of magnitude above in
   practice).
3. ``torch.linalg.matrix_rank`` itself computes singular values in the matrix's dtype, with error about
   sqrt(k) * eps(dtype) * sigma_max (eta). We widen every band by eta, so that a value the reference
   could place on either side of tol is never decided by us differently.
4. **Certificate of full rank** (matrices with k > 128, most layers): Lanczos gives theta <= lambda_max;
   a certified Cholesky (Rump 2006) of ``1.01 theta I - G`` proves lambda_max < 1.01 theta, hence an
   upper bound on tol; a second certified Cholesky of ``G - (tol_hi^2 + delta) I`` proves every
   sigma_i > tol_hi, so rank = k for us and for the reference. Two k^3/3 Choleskys replace a symmetric
   eigensolve (about 4x the flops, and much slower batched).
5. Otherwise the eigenvalues of G decide, unless one lies within the band around tol^2; such a
   *borderline* matrix is recomputed exactly as the reference does: ``torch.linalg.svdvals`` in the
   matrix's own dtype, same tolerance rule. For float64 matrices with the float64 default tolerance the
   band covers the small singular values, so those always take this path: correctness first.

``factors`` asks for the ranks at ``f * tol`` too (the tolerance sensitivity of nu), decided by the same
rules: the certificate at the largest factor covers all of them.

Speed: one k x k float64 Gram (N k^2 flops, BLAS-3) plus Cholesky certificates replace a full SVD of
the m x n matrix; matrices of equal shape are batched; results are cached by storage pointer, version
counter, shape, strides, dtype, tolerance and a content fingerprint.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from regcollide.audit.certify import gram, gram32, gram32_gamma, gram_error, is_positive_definite, lanczos_top
from regcollide.audit.cosines import max_cosines
from regcollide.audit.deflate import deflated_ranks
from regcollide.audit.noise import expected_random_count

__all__ = ["NonFiniteWeightsError", "RankInfo", "default_tolerance", "rank_and_singular_values", "ranks_of",
           "resolve_tolerance"]

_CERTIFY_MIN_K = 129  # below this a batched eigensolve is as cheap as the certificate
_DEFLATE_MIN_K = 512  # below this the eigensolver is as cheap as the deflation certificate
_LANCZOS_STEPS = 40
_UPPER_MARGIN = 1.01  # certify lambda_max < 1.01 * (Lanczos estimate): tol is over-estimated by <= 0.5%
_CACHE: OrderedDict[tuple, RankInfo] = OrderedDict()
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class RankInfo:
    """Rank and spectrum summary of one matrix under ``tol = max(atol, rtol * sigma_max)``."""

    rank: int
    sigma_min: float  # smallest of the k = min(m, n) singular values (a Lanczos estimate for "cholesky")
    sigma_max: float
    tol: float
    rtol: float
    atol: float
    method: str  # "cholesky" (certified full rank), "gram" (certified eigenvalues) or "svd" (borderline)
    max_cosine: float | None  # largest cosine between two rows; None with fewer than two rows or not asked
    max_abs_cosine: float | None
    ranks_at: tuple[int, ...] = ()  # ranks at f * tol for each requested factor f


def resolve_tolerance(
    shape: tuple[int, int], dtype: torch.dtype, rtol: float | None = None, atol: float | None = None
) -> tuple[float, float]:
    """(rtol, atol) exactly as ``torch.linalg.matrix_rank`` resolves them for this shape and dtype."""
    for label, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{label} must be a finite number >= 0, got {value}.")
    eps = torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps
    if rtol is None:
        # torch: rtol defaults to eps * max(m, n), but to 0 when a positive atol is given.
        rtol = 0.0 if atol is not None and atol > 0 else eps * max(shape)
    return float(rtol), float(atol or 0.0)


def default_tolerance(out_dim: int, in_dim: int, sigma_max: float, dtype: torch.dtype = torch.float32) -> float:
    """The default rank tolerance ``sigma_max * max(out, in) * eps(dtype)`` (torch.linalg.matrix_rank's)."""
    return float(sigma_max) * max(out_dim, in_dim) * torch.finfo(dtype).eps


@dataclass(frozen=True)
class _Rule:
    """One tolerance rule applied to a batch: rtol, atol, the factors and the matrix dtype's eps."""

    rtol: float
    atol: float
    factors: tuple[float, ...]
    eps: float

    def tol(self, sigma_max: Tensor | float, factor: float = 1.0):
        """f * max(atol, rtol * sigma_max), elementwise on a tensor."""
        if isinstance(sigma_max, Tensor):
            return factor * torch.clamp(self.rtol * sigma_max, min=self.atol)
        return factor * max(self.atol, self.rtol * sigma_max)


def _svd_ranks(matrix: Tensor, rule: _Rule) -> tuple[int, tuple[int, ...], float, float, float]:
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


def _certify_full_rank(grams: Tensor, delta: Tensor, rule: _Rule, lower: bool = True) -> _Certificate:
    """Try to prove every sigma_i > max(factors) * tol with two certified Choleskys (see the module doc).

    ``lower=False`` only bounds lambda_max (for the deflation certificate), skipping the full-rank test.
    """
    bsz, k, _ = grams.shape
    theta = lanczos_top(lambda q: (grams @ q[:, :, None])[:, :, 0], (bsz, k), _LANCZOS_STEPS, grams.dtype,
                        grams.device).clamp_min(0)  # (B,) <= lambda_max(G_hat)
    upper = _UPPER_MARGIN * theta + delta  # candidate bound on lambda_max(G_hat)
    upper_ok, _, _ = is_positive_definite(_shift_diagonal(-grams, upper))
    sig_hi = (upper + delta).sqrt()  # >= sigma_max(A) wherever upper_ok
    eta = 2.0 * math.sqrt(k) * rule.eps * sig_hi  # the reference's own SVD error
    tol_hi = rule.tol(sig_hi, max(rule.factors)) + eta
    floor = tol_hi**2 + delta  # lambda_min(G_hat) > floor => lambda_min(G) > tol_hi^2
    if not lower:
        nothing = torch.zeros_like(upper_ok)
        return _Certificate(nothing, torch.full_like(theta, math.nan), theta, upper, upper_ok)
    lower_ok, factor, shift = is_positive_definite(_shift_diagonal(grams, -floor))
    certified = upper_ok & lower_ok
    sig_min = torch.full_like(theta, math.nan)
    if bool(certified.any()):
        # Lanczos on (G - c I)^-1 through the Cholesky factor: its top Ritz value is ~1 / (lambda_min - c).
        # Only certified items: a failed factorization holds garbage that must not reach the eigensolver.
        ok, done = certified.nonzero()[:, 0], factor[certified]
        inv = lanczos_top(lambda q: _cholesky_solve(done, q), (len(ok), k), _LANCZOS_STEPS, grams.dtype,
                          grams.device)
        sig_min[ok] = (floor[ok] + shift[ok] + 1.0 / inv.clamp_min(1e-300)).sqrt()
    return _Certificate(certified, sig_min, theta, upper, upper_ok)


def _shift_diagonal(matrices: Tensor, shift: Tensor) -> Tensor:
    """matrices + shift_b I for a batch (B, k, k) and shifts (B,), without building an identity."""
    out = matrices.clone()
    out.diagonal(dim1=1, dim2=2).add_(shift[:, None])
    return out


def _cholesky_solve(factor: Tensor, rhs: Tensor) -> Tensor:
    """(L L^T)^-1 rhs for (B, k, k) L and (B, k) rhs; two triangular solves (torch.cholesky_solve is ~15x
    slower on batched single right-hand sides on CPU)."""
    half = torch.linalg.solve_triangular(factor, rhs[:, :, None], upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)[:, :, 0]


def _bands(lam_lo: Tensor, lam_hi: Tensor, delta: Tensor, rule: _Rule, k: int) -> list[tuple[Tensor, Tensor]]:
    """Per factor, the (B,) band [lo, hi] of Gram eigenvalues that the reference could rank either way.

    ``lam_lo <= lambda_max(G) <= lam_hi``; the band covers the tolerance's uncertainty, the reference
    SVD's own error eta and the Gram error delta, so an eigenvalue outside it is decided the same way.
    """
    sig_lo, sig_hi = (lam_lo - delta).clamp_min(0).sqrt(), (lam_hi + delta).sqrt()
    eta = 2.0 * math.sqrt(k) * rule.eps * sig_hi
    return [((rule.tol(sig_lo, f) - eta).clamp_min(0) ** 2 - delta, (rule.tol(sig_hi, f) + eta) ** 2 + delta)
            for f in rule.factors]


def _band_decide(eig: Tensor, delta: Tensor, rule: _Rule, k: int) -> tuple[Tensor, Tensor]:
    """Ranks (B, F) from the Gram eigenvalues (B, k) and which matrices are borderline at some factor."""
    ranks, borderline = [], torch.zeros(eig.shape[0], dtype=torch.bool, device=eig.device)
    for band_lo, band_hi in _bands(eig[:, -1], eig[:, -1], delta, rule, k):
        borderline |= ((eig >= band_lo[:, None]) & (eig <= band_hi[:, None])).any(dim=1)
        ranks.append((eig > band_hi[:, None]).sum(dim=1))
    return torch.stack(ranks, dim=1), borderline


# One decided matrix: (ranks at each factor of the rule, sigma_min, sigma_max, tol, method).
_Decided = tuple[tuple[int, ...], float, float, float, str]


def _float32_pays(batch: Tensor, k: int, big: int) -> bool:
    """Whether a float32 Gram can plausibly certify full rank: its error bound gamma ||A||_F^2 must sit
    well below lambda_min, which for i.i.d. weights is (1 - sqrt(k/N))^2 times the mean eigenvalue
    ||A||_F^2 / k (Marchenko-Pastur). Square-ish matrices go straight to float64. CPU only (scipy BLAS)."""
    if batch.device.type != "cpu" or batch.dtype != torch.float32 or k < _CERTIFY_MIN_K:
        return False
    return gram32_gamma(big) * k < 0.5 * (1 - math.sqrt(k / big)) ** 2


def _likely_deficient(m: int, n: int, rule: _Rule) -> bool:
    """Random weights of this shape expect >= 0.5 singular values under the largest tolerance."""
    return rule.atol == 0 and expected_random_count(m, n, rule.rtol * max(rule.factors)) >= 0.5


def _rank_batch(batch: Tensor, rule: _Rule, cosines: bool) -> list[RankInfo]:
    """Ranks of a batch (B, m, n) of equal-shape matrices sharing one tolerance rule.

    float32 Gram + full-rank certificate where it pays; then, for what is left, the float64 Gram, the
    full-rank certificate, the deflation certificate (large k) and finally the eigensolver / SVD.
    """
    bsz, m, n = batch.shape
    k, big = min(m, n), max(m, n)
    decided: dict[int, _Decided] = {}
    # Wide matrices: the Gram is the row Gram, which the row cosines reuse.
    row_grams = torch.empty(bsz, k, k, dtype=torch.float64, device=batch.device) if cosines and m <= n else None
    todo = list(range(bsz))
    if _float32_pays(batch, k, big):
        todo = _stage(batch, todo, rule, decided, row_grams, precise=False)
    if todo:
        _stage(batch, todo, rule, decided, row_grams, precise=True)
    cos = max_cosines(batch, row_grams) if cosines else [(None, None)] * bsz
    one = rule.factors.index(1.0)
    return [RankInfo(ranks[one], s_min, s_max, tol, rule.rtol, rule.atol, method, *cos[i], ranks)
            for i, (ranks, s_min, s_max, tol, method) in sorted(decided.items())]


def _stage(batch: Tensor, todo: list[int], rule: _Rule, decided: dict[int, _Decided], row_grams: Tensor | None,
           precise: bool) -> list[int]:
    """Decide the matrices ``todo`` of ``batch`` from one Gram (float64 if ``precise``); return the rest."""
    _, m, n = batch.shape
    k, big = min(m, n), max(m, n)
    sub = batch[todo]
    if precise:
        grams = gram(sub)  # (R, k, k) float64
        frob2, delta = gram_error(grams, big)
    else:
        grams, frob2, delta = gram32(sub)
    _check_finite(frob2, batch.shape)
    if row_grams is not None:
        row_grams[todo] = grams
    left, cert = list(range(len(todo))), None
    if k >= _CERTIFY_MIN_K:
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


def _deflate(batch: Tensor, todo: list[int], left: list[int], state: tuple, rule: _Rule,
             decided: dict[int, _Decided]) -> list[int]:
    """The deflation certificate (``regcollide.audit.deflate``) on large rank-deficient matrices."""
    grams, frob2, delta, cert = state
    k = grams.shape[-1]
    rest = []
    for j in left:
        if not bool(cert.upper_ok[j]):
            rest.append(j)
            continue
        theta, upper = cert.theta[j : j + 1], cert.upper[j : j + 1]
        bands = [(float(lo), float(hi)) for lo, hi in _bands(theta, upper, delta[j : j + 1], rule, k)]
        found = deflated_ranks(grams[j], bands, float(frob2[j]), float(upper))
        if found == "borderline":
            decided[todo[j]] = _svd_decided(batch[todo[j]], rule)
        elif found is None:
            rest.append(j)
        else:
            ranks, s_min = found
            s_max = math.sqrt(float(theta))
            decided[todo[j]] = (tuple(ranks), s_min, s_max, rule.tol(s_max), "deflation")
    return rest


def _svd_decided(matrix: Tensor, rule: _Rule) -> _Decided:
    _, ranks, s_min, s_max, tol = _svd_ranks(matrix, rule)
    return ranks, s_min, s_max, tol, "svd"


def _eigen(batch: Tensor, idx: list[int], grams: Tensor, delta: Tensor, rule: _Rule,
           decided: dict[int, _Decided]) -> None:
    """The symmetric eigensolver on the Grams; borderline matrices are recomputed as the reference does."""
    k = grams.shape[-1]
    eig = torch.linalg.eigvalsh(grams)  # (R, k) ascending
    band_ranks, borderline = _band_decide(eig, delta, rule, k)
    for j, i in enumerate(idx):
        if bool(borderline[j]):
            decided[i] = _svd_decided(batch[i], rule)
            continue
        s_min, s_max = math.sqrt(max(float(eig[j, 0]), 0.0)), math.sqrt(max(float(eig[j, -1]), 0.0))
        decided[i] = (tuple(int(r) for r in band_ranks[j]), s_min, s_max, rule.tol(s_max), "gram")


def _cache_key(matrix: Tensor, rtol: float | None, atol: float | None, cosines: bool, factors: tuple) -> tuple:
    # Pointer + version counter catch in-place updates; the content fingerprint guards against a freed
    # buffer being reused by a different tensor with the same pointer and version.
    flat = matrix.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // 4093)].double()
    weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64, device=sample.device)
    fingerprint = (float(flat.sum(dtype=torch.float64)), float((sample * weights).sum()))
    return (
        matrix.data_ptr(), matrix._version, tuple(matrix.shape), tuple(matrix.stride()), matrix.dtype,
        str(matrix.device), rtol, atol, cosines, factors, fingerprint,
    )


class NonFiniteWeightsError(ValueError):
    """A weight matrix holds NaN or inf: its rank is undefined."""


def _check_finite(frob2: Tensor, shape: tuple[int, ...]) -> None:
    # Any NaN/inf entry makes a row norm, hence ||A||_F^2, non-finite: checking the Gram's trace is free.
    if not bool(torch.isfinite(frob2).all()):
        raise NonFiniteWeightsError(
            f"a weight matrix of shape {tuple(shape[-2:])} holds NaN or inf values (or overflows float64), "
            "so its rank is undefined; check the weights (a diverged training run?)")


def ranks_of(
    matrices: list[Tensor], rtol: float | None = None, atol: float | None = None, cosines: bool = True,
    max_batch_bytes: int = 512 * 2**20, factors: tuple[float, ...] = (),
) -> list[RankInfo]:
    """Rank summaries of many matrices at once: equal shapes are batched, repeats come from the cache.

    ``factors`` (each > 0) also gives the ranks at ``f * tol`` in ``RankInfo.ranks_at``, in that order.
    """
    if any(not (math.isfinite(f) and f > 0) for f in factors):
        raise ValueError(f"tolerance factors must be finite and > 0, got {factors}.")
    results: list[RankInfo | None] = [None] * len(matrices)
    # half/bfloat16 weights: LAPACK has no such SVD; audit them as float32 (tolerance eps(float32)).
    matrices = [m if m.dtype in (torch.float32, torch.float64) else m.float() for m in matrices]
    keys = [_cache_key(mat, rtol, atol, cosines, tuple(factors)) for mat in matrices]
    groups: dict[tuple, list[int]] = {}
    for i, (mat, key) in enumerate(zip(matrices, keys, strict=True)):
        if mat.ndim != 2:
            raise ValueError(f"Expected a 2-D matrix, got shape {tuple(mat.shape)}.")
        if key in _CACHE:
            results[i] = _CACHE[key]
            _CACHE.move_to_end(key)
        else:
            groups.setdefault((tuple(mat.shape), mat.dtype, str(mat.device)), []).append(i)
    for (shape, dtype, _), idx in groups.items():
        r, a = resolve_tolerance(shape, dtype, rtol, atol)
        rule = _Rule(r, a, (*dict.fromkeys((1.0, *factors)),), torch.finfo(dtype).eps)
        step = max(1, max_batch_bytes // (8 * shape[0] * shape[1] or 1))
        for start in range(0, len(idx), step):
            chunk = idx[start : start + step]
            with torch.no_grad():
                batch = torch.stack([matrices[i].detach() for i in chunk])  # (B, m, n)
                infos = _rank_batch(batch, rule, cosines) if min(shape) else _empty(len(chunk), rule)
            for i, info in zip(chunk, infos, strict=True):
                results[i] = _select(info, rule, factors)
                _CACHE[keys[i]] = results[i]
                if len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
    return results  # type: ignore[return-value]


def _empty(count: int, rule: _Rule) -> list[RankInfo]:
    return [RankInfo(0, 0.0, 0.0, rule.atol, rule.rtol, rule.atol, "gram", None, None,
                     (0,) * len(rule.factors))] * count


def _select(info: RankInfo, rule: _Rule, factors: tuple[float, ...]) -> RankInfo:
    """Keep ``ranks_at`` in the caller's factor order (the rule always includes 1.0 first)."""
    by_factor = dict(zip(rule.factors, info.ranks_at, strict=True))
    return RankInfo(**{**info.__dict__, "ranks_at": tuple(by_factor[f] for f in factors)})


def rank_and_singular_values(
    matrix: Tensor, rtol: float | None = None, atol: float | None = None, cosines: bool = True
) -> RankInfo:
    """Rank, sigma_min, sigma_max and tolerance of one matrix; same rank as torch.linalg.matrix_rank."""
    return ranks_of([matrix], rtol, atol, cosines)[0]
