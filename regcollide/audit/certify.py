"""Certified linear algebra on float64 Gram matrices: the fast path of the rank engine.

The rank engine (``regcollide.audit.rank``) decides ``sigma_i > tol`` from the k x k Gram matrix of the
smaller side of a weight matrix A (m x n, k = min(m, n), N = max(m, n)). This module gives it

- ``gram``: the float64 Gram, batched and chunked (BLAS ``dsyrk`` for large CPU matrices), together with
  ``delta``, a rigorous bound on ``|lambda_hat - lambda|`` for every eigenvalue (see ``gram_error``);
- ``gram32``: the same Gram from float32 products (BLAS ``ssyrk`` on CPU, about twice the speed), with its
  own rigorous bound: every product is summed over chunks of ``CHUNK32`` columns into fresh outputs and
  the chunks are added one by one, so each entry passes through at most ``CHUNK32 + chunks`` float32
  roundings and ``|G_hat - G| <= gamma |A| |A|^T`` entrywise (Higham, "Accuracy and Stability of Numerical
  Algorithms", 2002, sec. 3.1), hence ``||G_hat - G||_2 <= gamma ||A||_F^2`` (Weyl). Far too coarse to
  resolve tol^2, but enough to certify full rank of well-conditioned rectangular matrices;
- ``is_positive_definite``: a *certified* positive-definiteness test by floating-point Cholesky after a
  shift (Rump, "Verification of positive definiteness", BIT 46, 2006): if Cholesky of ``M - s I``
  succeeds in float64 with ``s >= gamma_{k+1} / (1 - 2 gamma_{k+1}) * tr(M)``, then M is positive
  definite. It costs k^3 / 3 flops, a fraction of a symmetric eigensolve;
- ``lanczos_top``: the largest Ritz value of a symmetric operator (Lanczos with full reorthogonalisation,
  batched), a lower bound of its largest eigenvalue, used to estimate sigma_max and sigma_min.

Why float64 for anything but a full-rank certificate: the default tolerance is
``tol = max(m, n) * eps(float32) * sigma_max``, so tol^2 is about 1.4e-14 N^2 sigma_max^2. A float32 Gram
carries errors of about N * 6e-8 * ||A||_F^2 in its eigenvalues, far above tol^2: it cannot tell a
singular value near tol from 0. It can only prove that all of them are far above tol, which is what
``gram32`` is used for. In float64 the error bound sits at least ~30x below tol^2 (see
``regcollide.audit.rank``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg.blas import dsyrk, ssyrk
from torch import Tensor

__all__ = ["CHUNK32", "U64", "gram", "gram32", "gram32_gamma", "gram_error", "is_positive_definite", "lanczos_top"]

U64 = 2.0**-52  # twice the float64 unit roundoff: every bound below is taken generously
U32 = 2.0**-24  # float32 unit roundoff
CHUNK32 = 512  # columns per float32 product in gram32: the error bound grows with CHUNK32 + N / CHUNK32
_GRAM_CHUNK_BYTES = 256 * 2**20  # float64 working set per Gram step
_SYRK_MIN_ELEMENTS = 2**22  # below this, batched torch matmuls are as fast


def gram(batch: Tensor) -> Tensor:
    """k x k float64 Gram of the smaller side for a batch (B, m, n) -> (B, k, k), chunked over N."""
    bsz, m, n = batch.shape
    wide = m <= n
    k, big = (m, n) if wide else (n, m)
    if batch.device.type == "cpu" and bsz == 1 and k * big >= _SYRK_MIN_ELEMENTS:
        return _gram_syrk(batch[0], wide)[None]
    out = torch.zeros(bsz, k, k, dtype=torch.float64, device=batch.device)
    step = max(1, _GRAM_CHUNK_BYTES // (8 * bsz * k))
    for start in range(0, big, step):
        if wide:
            part = batch[:, :, start : start + step].to(torch.float64)  # (B, k, step)
            out.baddbmm_(part, part.mT)
        else:
            part = batch[:, start : start + step, :].to(torch.float64)  # (B, step, k)
            out.baddbmm_(part.mT, part)
    return out


def _gram_syrk(matrix: Tensor, wide: bool) -> Tensor:
    """Large CPU matrices: BLAS dsyrk computes only one triangle, half the flops of a GEMM."""
    k, big = (matrix.shape[0], matrix.shape[1]) if wide else (matrix.shape[1], matrix.shape[0])
    out = np.zeros((k, k), dtype=np.float64, order="F")
    step = max(1, _GRAM_CHUNK_BYTES // (8 * k))
    for start in range(0, big, step):
        if wide:  # part (k, c) C-order -> its transpose is (c, k) Fortran-order: part @ part.T
            part = matrix[:, start : start + step].to(torch.float64).numpy()
            out = dsyrk(1.0, part.T, beta=1.0, c=out, trans=1, overwrite_c=True)
        else:  # part (c, k) C-order -> its transpose is (k, c) Fortran-order: part.T @ part
            part = matrix[start : start + step, :].to(torch.float64).numpy()
            out = dsyrk(1.0, part.T, beta=1.0, c=out, trans=0, overwrite_c=True)
    return _symmetrize(torch.from_numpy(out))


def gram32_gamma(big: int) -> float:
    """gamma_n = n u / (1 - n u) for the n = CHUNK32 + chunks float32 roundings an entry of gram32 sees."""
    terms = min(big, CHUNK32) + math.ceil(big / CHUNK32)
    return terms * U32 / (1 - terms * U32)


def gram32(batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Float32 Gram of the smaller side of a CPU batch (B, m, n): (grams (B, k, k) float64, ||A||_F^2 bound,
    delta) with ``|lambda_hat - lambda| <= delta`` for every eigenvalue (products and eigensolver).

    Uses scipy's BLAS ``ssyrk`` (IEEE float32 whatever torch's matmul precision setting), one fresh product
    per chunk of CHUNK32 columns, summed in float32: see the module docstring for the bound.
    """
    bsz, m, n = batch.shape
    wide = m <= n
    k, big = (m, n) if wide else (n, m)
    out = torch.empty(bsz, k, k, dtype=torch.float64)
    for b in range(bsz):
        matrix = batch[b].detach().float().numpy()  # (m, n) C-order, a view of the weights
        acc = np.zeros((k, k), dtype=np.float32, order="F")
        for start in range(0, big, CHUNK32):
            # wide: part (k, c) C-order, its .T is (c, k) F-order and trans=1 gives part @ part.T;
            # tall: part (c, k) C-order, its .T is (k, c) F-order and trans=0 gives part.T @ part.
            part = matrix[:, start : start + CHUNK32] if wide else matrix[start : start + CHUNK32, :]
            acc += ssyrk(1.0, part.T, trans=1 if wide else 0)  # upper triangle of a fresh (k, k) product
        out[b] = _symmetrize(torch.from_numpy(acc).double())
    gamma = gram32_gamma(big)
    frob2 = out.diagonal(dim1=1, dim2=2).sum(dim=1) / (1 - gamma) * (1 + 1e-6)  # (B,) >= ||A||_F^2
    return out, frob2, (gamma + U64 * (10 * k + 10)) * frob2


def _symmetrize(upper: Tensor) -> Tensor:
    """The full symmetric matrix from the upper triangle BLAS syrk wrote (the lower one is not used)."""
    return upper.triu() + upper.triu(1).mT


def gram_error(grams: Tensor, big: int) -> tuple[Tensor, Tensor]:
    """(||A||_F^2 rounded up, delta) per Gram in (B, k, k).

    A dot product of length N in float64 errs by at most gamma_N |a||b|, so ``|G_hat - G|_2 <=
    gamma_N ||A||_F^2``; a backward-stable symmetric eigensolver adds p(k) u ||G||. Weyl's theorem gives
    ``|lambda_hat - lambda| <= delta = U64 * (N + 10 k + 10) * ||A||_F^2`` for every eigenvalue.
    """
    k = grams.shape[-1]
    frob2 = grams.diagonal(dim1=1, dim2=2).sum(dim=1) * (1 + 1e-6)  # (B,)
    return frob2, U64 * (big + 10 * k + 10) * frob2


def is_positive_definite(matrices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Certified: True only where a symmetric (B, k, k) float64 matrix is positive definite (Rump 2006).

    The shift ``s = (k + 2) * U64 * tr|M|`` covers Rump's bound gamma_{k+1}/(1 - 2 gamma_{k+1}) tr(M)
    plus the rounding of forming ``M - s I``. False means "not certified", not "indefinite". Also returns
    the Cholesky factor L of ``M - s I`` (B, k, k) and s (B,), for solves with the shifted matrix.
    """
    k = matrices.shape[-1]
    diag = matrices.diagonal(dim1=1, dim2=2)  # (B, k)
    shift = (k + 2) * U64 * diag.abs().sum(dim=1) + 1e-290  # (B,)
    shifted = matrices.clone()
    shifted.diagonal(dim1=1, dim2=2).sub_(shift[:, None])
    factor, info = torch.linalg.cholesky_ex(shifted)
    return (info == 0) & (diag.min(dim=1).values > shift), factor, shift


def lanczos_top(matvec, size: tuple[int, int], steps: int, dtype: torch.dtype, device) -> Tensor:
    """Largest Ritz value of a symmetric operator on a batch: (B,) lower bounds of lambda_max.

    ``matvec`` maps (B, k) -> (B, k). Full reorthogonalisation (twice) keeps the Krylov basis orthonormal,
    so ``steps`` of about 40 resolve the top of a dense random spectrum to ~1e-6 relative. Deterministic
    (fixed start vector seed) so that repeated audits report the same numbers.
    """
    bsz, k = size
    steps = min(steps, k)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(bsz, k, generator=gen, dtype=dtype).to(device)
    q = q / q.norm(dim=1, keepdim=True)
    basis = torch.zeros(bsz, k, steps, dtype=dtype, device=device)  # (B, k, s)
    alpha = torch.zeros(bsz, steps, dtype=dtype, device=device)
    beta = torch.zeros(bsz, steps, dtype=dtype, device=device)
    used = steps
    for j in range(steps):
        basis[:, :, j] = q
        w = matvec(q)  # (B, k)
        alpha[:, j] = (w * q).sum(dim=1)
        for _ in range(2):  # classical Gram-Schmidt, twice, against the whole basis
            w = w - (basis[:, :, : j + 1] @ (basis[:, :, : j + 1].mT @ w[:, :, None]))[:, :, 0]
        beta[:, j] = w.norm(dim=1)
        if j + 1 < steps and bool((beta[:, j] <= 1e-12 * alpha[:, : j + 1].abs().amax(dim=1)).all()):
            used = j + 1  # an invariant subspace: the Ritz values are exact eigenvalues already
            break
        q = w / beta[:, j : j + 1].clamp_min(1e-300)
    tri = torch.diag_embed(alpha[:, :used]) + torch.diag_embed(beta[:, : used - 1], 1)
    tri = tri + torch.diag_embed(beta[:, : used - 1], -1)  # (B, s, s) tridiagonal
    return torch.linalg.eigvalsh(tri)[:, -1]
