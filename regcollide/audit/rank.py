"""Fast, exact numerical rank of weight matrices: the engine behind the spectrum audit.

The rank of a matrix A (m x n, k = min(m, n), N = max(m, n)) counts singular values sigma_i > tol, with
``tol = max(atol, rtol * sigma_max)``. With no rtol/atol given we use ``torch.linalg.matrix_rank``'s
default, ``rtol = N * eps(dtype)`` (eps of float32 for float32 weights), so ranks are *identical* to a
per-layer ``torch.linalg.matrix_rank(A)``, only much faster.

Numerical argument (why the Gram matrix is safe, and when it is not):

1. ``G = A A^T`` (or ``A^T A``, whichever is k x k) is formed from the stored values in chunks of 512
   columns, each a fresh BLAS product, so every entry passes through at most 512 + N / 512 roundings:
   ``||G_hat - G||_2 <= delta = gamma * ||A||_F^2`` with gamma = (512 + N/512) u (``certify.gram``).
   An eigensolver run on G_hat adds its own p(k) u ||G_hat|| (``certify.eigensolver_error``).
2. The decision ``sigma > tol`` equals ``lambda > tol^2``. For float32 weights in a float64 Gram,
   tol^2 / sigma_max^2 = (N eps32)^2 ~ 1.4e-14 N^2 sits far above delta / sigma_max^2 <= 1.1e-16
   (512 + N/512) k. A float32 Gram (delta ~ 6e-8 (512 + N/512) ||A||_F^2) cannot resolve tol^2; it is
   used only to prove full rank of well-conditioned rectangular matrices.
3. ``torch.linalg.matrix_rank`` itself computes singular values in the matrix's dtype, with error about
   sqrt(k) * eps(dtype) * sigma_max (eta). We widen every band by eta, so that a value the reference
   could place on either side of tol is never decided by us differently.
4. **Certificate of full rank**: Lanczos gives theta <= lambda_max; a certified Cholesky (Rump 2006) of
   ``1.01 theta I - G`` proves lambda_max < 1.01 theta, hence an upper bound on tol; a second certified
   Cholesky of ``G - (tol_hi^2 + delta) I`` proves every sigma_i > tol_hi, so rank = k for us and for the
   reference. Two k^3/3 Choleskys replace a symmetric eigensolve (4/3 k^3 flops, mostly BLAS-2).
5. **Certificate of rank deficiency** (k >= 512, ``regcollide.audit.deflate``): inverse iteration finds
   the few eigenvalues below the band; Courant-Fischer proves there are at least q of them and a
   Cholesky of G lifted along their Ritz vectors proves there are at most q, so rank = k - q exactly.
6. Otherwise the eigenvalues of G decide, unless one lies within the band around tol^2; such a
   *borderline* matrix is recomputed exactly as the reference does: ``torch.linalg.svdvals`` in the
   matrix's own dtype, same tolerance rule. For float64 matrices with the float64 default tolerance the
   band covers the small singular values, so those always take this path: correctness first.

``regcollide.audit.decide`` runs these stages in order of cost for each batch of equal-shape matrices.
``factors`` asks for the ranks at ``f * tol`` too (the tolerance sensitivity of nu), decided by the same
rules: the full-rank certificate at the largest factor covers all of them, the deflation certificate
proves each factor's count.

Speed: one k x k Gram (N k^2 flops, BLAS-3, float32 where that suffices) plus Cholesky certificates
replace a full SVD of the m x n matrix; matrices of equal shape are batched; results are cached by
storage pointer, version counter, shape, strides, dtype, tolerance and a content fingerprint.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from regcollide.audit.cosines import max_cosines
from regcollide.audit.decide import NonFiniteWeightsError, Rule, decide_batch

__all__ = ["NonFiniteWeightsError", "RankInfo", "default_tolerance", "rank_and_singular_values", "ranks_of",
           "resolve_tolerance"]

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


def _cache_key(matrix: Tensor, rtol: float | None, atol: float | None, cosines: bool, factors: tuple) -> tuple:
    # Pointer + version counter catch in-place updates; the content fingerprint guards against a freed
    # buffer being reused by a different tensor with the same pointer and version.
    # Whole-matrix sums run in the matrix's own dtype: a float64 accumulation costs 10x more (0.4 ms per
    # million entries, more than the rank of many layers), and a fingerprint only has to differ, not be
    # accurate. The position-weighted float64 sum of a sample catches permutations the sums cannot.
    flat = matrix.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // 4093)].double()
    weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64, device=sample.device)
    sums = torch.stack((flat.sum(), flat @ flat)).tolist() if flat.numel() else [0.0, 0.0]
    fingerprint = (*sums, float((sample * weights).sum()))
    return (
        matrix.data_ptr(), matrix._version, tuple(matrix.shape), tuple(matrix.stride()), matrix.dtype,
        str(matrix.device), rtol, atol, cosines, factors, fingerprint,
    )


def _rank_batch(batch: Tensor, rule: Rule, cosines: bool) -> list[RankInfo]:
    """Ranks of a batch (B, m, n) of equal-shape matrices sharing one tolerance rule, with row cosines."""
    decided, row_grams = decide_batch(batch, rule, keep_row_grams=cosines)
    cos = max_cosines(batch, row_grams) if cosines else [(None, None)] * batch.shape[0]
    one = rule.factors.index(1.0)
    return [RankInfo(ranks[one], s_min, s_max, tol, rule.rtol, rule.atol, method, *c, ranks)
            for (ranks, s_min, s_max, tol, method), c in zip(decided, cos, strict=True)]


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
        rule = Rule(r, a, (*dict.fromkeys((1.0, *factors)),), torch.finfo(dtype).eps)
        step = max(1, max_batch_bytes // (8 * shape[0] * shape[1] or 1))
        for start in range(0, len(idx), step):
            chunk = idx[start : start + step]
            with torch.no_grad():
                # (B, m, n); one matrix is a view (stacking would copy it)
                batch = torch.stack([matrices[i].detach() for i in chunk]) if len(chunk) > 1 else \
                    matrices[chunk[0]].detach()[None]
                infos = _rank_batch(batch, rule, cosines) if min(shape) else _empty(len(chunk), rule)
            for i, info in zip(chunk, infos, strict=True):
                results[i] = _select(info, rule, factors)
                _CACHE[keys[i]] = results[i]
                if len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
    return results  # type: ignore[return-value]


def _empty(count: int, rule: Rule) -> list[RankInfo]:
    return [RankInfo(0, 0.0, 0.0, rule.atol, rule.rtol, rule.atol, "gram", None, None,
                     (0,) * len(rule.factors))] * count


def _select(info: RankInfo, rule: Rule, factors: tuple[float, ...]) -> RankInfo:
    """Keep ``ranks_at`` in the caller's factor order (the rule always includes 1.0 first)."""
    by_factor = dict(zip(rule.factors, info.ranks_at, strict=True))
    return RankInfo(**{**info.__dict__, "ranks_at": tuple(by_factor[f] for f in factors)})


def rank_and_singular_values(
    matrix: Tensor, rtol: float | None = None, atol: float | None = None, cosines: bool = True
) -> RankInfo:
    """Rank, sigma_min, sigma_max and tolerance of one matrix; same rank as torch.linalg.matrix_rank."""
    return ranks_of([matrix], rtol, atol, cosines)[0]
