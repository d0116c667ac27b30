"""Fast, exact numerical rank of weight matrices: the engine behind the spectrum audit.

The rank of a matrix A (m x n, k = min(m, n), N = max(m, n)) counts singular values sigma_i > tol, with
``tol = max(atol, rtol * sigma_max)``. With no rtol/atol given we use ``torch.linalg.matrix_rank``'s
default, ``rtol = N * eps(dtype)`` (eps of float32 for float32 weights), so ranks are *identical* to a
per-layer ``torch.linalg.matrix_rank(A)``, only much faster.

Numerical argument (why the Gram matrix is safe, and when it is not):

1. ``G = A A^T`` (or ``A^T A``, whichever is k x k) is formed in float64 from the stored values, which
   converts float32 exactly. Its eigenvalues are lambda_i = sigma_i^2. Standard rounding analysis of a dot
   product of length N gives |fl(G) - G| <= gamma_N |A||A|^T elementwise, hence in 2-norm at most
   gamma_N * ||A||_F^2 (gamma_N ~ N * u64). A backward-stable symmetric eigensolver adds at most
   p(k) * u64 * ||G||. Weyl's theorem then bounds every computed eigenvalue by
   ``|lambda_hat - lambda| <= delta = u64 * (N + 10 k + 10) * ||A||_F^2`` (we take u64 = 2^-52, twice
   the unit roundoff, and a generous p(k) = 10 k).
2. The decision ``sigma > tol`` equals ``lambda > tol^2``. For float32 weights, tol^2 / sigma_max^2 =
   (N eps32)^2 ~ 1.4e-14 N^2 while delta / sigma_max^2 <= 2.2e-16 (N + 10k) k, i.e. the threshold sits
   at least ~30x above the Gram error even in the worst case (and orders of magnitude above in
   practice). So the Gram eigenvalues settle the rank *unless* some lambda_hat lies within delta of
   tol^2 (tol itself is known only up to the error in sigma_max; the band accounts for that too).
3. ``torch.linalg.matrix_rank`` itself computes singular values in the matrix's dtype, with error about
   sqrt(k) * eps(dtype) * sigma_max. We widen the band by twice that, so that a value the reference
   could place on either side of tol is never decided by us differently.
4. Any matrix with an eigenvalue inside the band is *borderline* and is recomputed exactly as the
   reference does: ``torch.linalg.svdvals`` in the matrix's own dtype, same tolerance rule. For float64
   matrices with the float64 default tolerance the band covers the small singular values, so those always
   take this path: correctness first.

Speed: one k x k float64 Gram (N k^2 flops, BLAS-3) plus one k x k symmetric eigensolve replaces a full
SVD of the m x n matrix; matrices of equal shape are batched; results are cached by storage pointer,
version counter, shape, strides, dtype, tolerance and a content fingerprint.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RankInfo", "default_tolerance", "rank_and_singular_values", "ranks_of", "resolve_tolerance"]

_U64 = 2.0**-52
_GRAM_CHUNK_BYTES = 256 * 2**20  # float64 working set per Gram step
_SYRK_MIN_ELEMENTS = 2**22  # below this, batched torch matmuls are as fast
_CACHE: OrderedDict[tuple, RankInfo] = OrderedDict()
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class RankInfo:
    """Rank and spectrum summary of one matrix under ``tol = max(atol, rtol * sigma_max)``."""

    rank: int
    sigma_min: float  # smallest of the k = min(m, n) singular values
    sigma_max: float
    tol: float
    rtol: float
    atol: float
    method: str  # "gram" (certified by the Gram bound) or "svd" (borderline or tiny: reference path)
    max_cosine: float | None  # largest cosine between two rows; None with fewer than two rows
    max_abs_cosine: float | None


def resolve_tolerance(
    shape: tuple[int, int], dtype: torch.dtype, rtol: float | None = None, atol: float | None = None
) -> tuple[float, float]:
    """(rtol, atol) exactly as ``torch.linalg.matrix_rank`` resolves them for this shape and dtype."""
    if rtol is not None and rtol < 0 or atol is not None and atol < 0:
        raise ValueError("rtol and atol must be >= 0.")
    eps = torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps
    if rtol is None:
        # torch: rtol defaults to eps * max(m, n), but to 0 when a positive atol is given.
        rtol = 0.0 if atol is not None and atol > 0 else eps * max(shape)
    return float(rtol), float(atol or 0.0)


def default_tolerance(out_dim: int, in_dim: int, sigma_max: float, dtype: torch.dtype = torch.float32) -> float:
    """The default rank tolerance ``sigma_max * max(out, in) * eps(dtype)`` (DESIGN.md, Conventions)."""
    return float(sigma_max) * max(out_dim, in_dim) * torch.finfo(dtype).eps


def _gram(batch: Tensor) -> Tensor:
    """k x k float64 Gram of the smaller side for a batch (B, m, n) -> (B, k, k), chunked over N."""
    bsz, m, n = batch.shape
    wide = m <= n
    k, big = (m, n) if wide else (n, m)
    if batch.device.type == "cpu" and bsz == 1 and k * big >= _SYRK_MIN_ELEMENTS:
        return _gram_syrk(batch[0], wide)[None]
    gram = torch.zeros(bsz, k, k, dtype=torch.float64, device=batch.device)
    step = max(1, _GRAM_CHUNK_BYTES // (8 * bsz * k))
    for start in range(0, big, step):
        if wide:
            part = batch[:, :, start : start + step].to(torch.float64)  # (B, k, step)
            gram.baddbmm_(part, part.mT)
        else:
            part = batch[:, start : start + step, :].to(torch.float64)  # (B, step, k)
            gram.baddbmm_(part.mT, part)
    return gram


def _gram_syrk(matrix: Tensor, wide: bool) -> Tensor:
    """Large CPU matrices: BLAS dsyrk computes only one triangle, half the flops of a GEMM."""
    import numpy as np
    from scipy.linalg.blas import dsyrk

    k, big = (matrix.shape[0], matrix.shape[1]) if wide else (matrix.shape[1], matrix.shape[0])
    gram = np.zeros((k, k), dtype=np.float64, order="F")
    step = max(1, _GRAM_CHUNK_BYTES // (8 * k))
    for start in range(0, big, step):
        if wide:  # part (k, c) C-order -> its transpose is (c, k) Fortran-order: part @ part.T
            part = matrix[:, start : start + step].to(torch.float64).numpy()
            gram = dsyrk(1.0, part.T, beta=1.0, c=gram, trans=1, overwrite_c=True)
        else:  # part (c, k) C-order -> its transpose is (k, c) Fortran-order: part.T @ part
            part = matrix[start : start + step, :].to(torch.float64).numpy()
            gram = dsyrk(1.0, part.T, beta=1.0, c=gram, trans=0, overwrite_c=True)
    upper = np.triu(gram)
    return torch.from_numpy(upper + np.triu(upper, 1).T)


def _max_cosines(batch: Tensor, row_gram: Tensor | None) -> list[tuple[float | None, float | None]]:
    """Largest signed and absolute cosine between two different rows of each matrix in (B, m, n)."""
    bsz, m, _ = batch.shape
    if m < 2:
        return [(None, None)] * bsz
    best = torch.full((bsz,), -math.inf, dtype=torch.float64, device=batch.device)
    best_abs = torch.zeros(bsz, dtype=torch.float64, device=batch.device)
    if row_gram is not None:  # wide matrix: the float64 Gram is the row Gram already
        norms = row_gram.diagonal(dim1=1, dim2=2).clamp_min(1e-300).sqrt()  # (B, m)
        cos = row_gram / (norms[:, :, None] * norms[:, None, :])
        cos.diagonal(dim1=1, dim2=2).fill_(math.nan)
        best = cos.nan_to_num(nan=-math.inf).amax(dim=(1, 2))
        best_abs = cos.abs().nan_to_num(nan=0.0).amax(dim=(1, 2))
    else:  # tall matrix: cosines need only float32 accuracy, so compute them in the weight's precision
        rows = batch.float()
        rows = rows / rows.norm(dim=2, keepdim=True).clamp_min(1e-30)  # (B, m, n)
        block = max(1, (64 * 2**20) // (4 * bsz * m))
        for start in range(0, m, block):
            cos = (rows[:, start : start + block] @ rows.mT).double()  # (B, b, m)
            idx = torch.arange(start, min(start + block, m), device=batch.device)
            cos[:, idx - start, idx] = math.nan
            best = torch.maximum(best, cos.nan_to_num(nan=-math.inf).amax(dim=(1, 2)))
            best_abs = torch.maximum(best_abs, cos.abs().nan_to_num(nan=0.0).amax(dim=(1, 2)))
    return [(float(b), float(a)) for b, a in zip(best.tolist(), best_abs.tolist(), strict=True)]


def _svd_rank(matrix: Tensor, rtol: float, atol: float) -> tuple[int, float, float, float]:
    """The reference computation of torch.linalg.matrix_rank, in the matrix's own dtype."""
    sigma = torch.linalg.svdvals(matrix)  # descending
    tol = max(atol, rtol * float(sigma[0]))
    return int((sigma > tol).sum()), float(sigma[-1]), float(sigma[0]), tol


def _rank_batch(batch: Tensor, rtol: float, atol: float, cosines: bool) -> list[RankInfo]:
    """Ranks of a batch (B, m, n) of equal-shape matrices sharing one (rtol, atol)."""
    bsz, m, n = batch.shape
    k, big = min(m, n), max(m, n)
    gram = _gram(batch)  # (B, k, k) float64
    eig = torch.linalg.eigvalsh(gram)  # (B, k) ascending, float64
    frob2 = gram.diagonal(dim1=1, dim2=2).sum(dim=1) * (1 + 1e-6)  # ||A||_F^2, rounded up
    delta = _U64 * (big + 10 * k + 10) * frob2  # (B,) bound on |lambda_hat - lambda|
    lam_max = eig[:, -1]
    sig_lo = (lam_max - delta).clamp_min(0).sqrt()
    sig_hi = (lam_max + delta).sqrt()
    eta = 2.0 * math.sqrt(k) * torch.finfo(batch.dtype).eps * sig_hi  # reference's own SVD error
    tol_lo = torch.clamp(rtol * sig_lo, min=atol) - eta
    tol_hi = torch.clamp(rtol * sig_hi, min=atol) + eta
    band_lo = tol_lo.clamp_min(0) ** 2 - delta
    band_hi = tol_hi**2 + delta
    borderline = ((eig >= band_lo[:, None]) & (eig <= band_hi[:, None])).any(dim=1)
    ranks = (eig > band_hi[:, None]).sum(dim=1)
    cos = _max_cosines(batch, gram if m <= n else None) if cosines else [(None, None)] * bsz
    out = []
    for i in range(bsz):
        if bool(borderline[i]):
            rank, s_min, s_max, tol = _svd_rank(batch[i], rtol, atol)
            method = "svd"
        else:
            rank, method = int(ranks[i]), "gram"
            s_min, s_max = math.sqrt(max(float(eig[i, 0]), 0.0)), math.sqrt(max(float(lam_max[i]), 0.0))
            tol = max(atol, rtol * s_max)
        out.append(RankInfo(rank, s_min, s_max, tol, rtol, atol, method, cos[i][0], cos[i][1]))
    return out


def _cache_key(matrix: Tensor, rtol: float | None, atol: float | None, cosines: bool) -> tuple:
    # Pointer + version counter catch in-place updates; the content fingerprint guards against a freed
    # buffer being reused by a different tensor with the same pointer and version.
    flat = matrix.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // 4093)].double()
    weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64, device=sample.device)
    fingerprint = (float(flat.sum(dtype=torch.float64)), float((sample * weights).sum()))
    return (
        matrix.data_ptr(), matrix._version, tuple(matrix.shape), tuple(matrix.stride()), matrix.dtype,
        str(matrix.device), rtol, atol, cosines, fingerprint,
    )


def ranks_of(
    matrices: list[Tensor], rtol: float | None = None, atol: float | None = None, cosines: bool = True,
    max_batch_bytes: int = 512 * 2**20,
) -> list[RankInfo]:
    """Rank summaries of many matrices at once: equal shapes are batched, repeats come from the cache."""
    results: list[RankInfo | None] = [None] * len(matrices)
    # half/bfloat16 weights: LAPACK has no such SVD; audit them as float32 (tolerance eps(float32)).
    matrices = [m if m.dtype in (torch.float32, torch.float64) else m.float() for m in matrices]
    keys = [_cache_key(mat, rtol, atol, cosines) for mat in matrices]
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
        if min(shape) == 0:
            for i in idx:
                results[i] = RankInfo(0, 0.0, 0.0, a, r, a, "gram", None, None)
            continue
        per_item = 8 * shape[0] * shape[1]
        step = max(1, max_batch_bytes // per_item)
        for start in range(0, len(idx), step):
            chunk = idx[start : start + step]
            with torch.no_grad():
                batch = torch.stack([matrices[i].detach() for i in chunk])  # (B, m, n)
                infos = _rank_batch(batch, r, a, cosines)
            for i, info in zip(chunk, infos, strict=True):
                results[i] = info
                _CACHE[keys[i]] = info
                if len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
    return results  # type: ignore[return-value]


def rank_and_singular_values(
    matrix: Tensor, rtol: float | None = None, atol: float | None = None, cosines: bool = True
) -> RankInfo:
    """Rank, sigma_min, sigma_max and tolerance of one matrix; same rank as torch.linalg.matrix_rank."""
    return ranks_of([matrix], rtol, atol, cosines)[0]
