"""Certified linear algebra on float64 Gram matrices: the fast path of the rank engine.

The rank engine (``regcollide.audit.rank``) decides ``sigma_i > tol`` from the k x k Gram matrix of the
smaller side of a weight matrix A (m x n, k = min(m, n), N = max(m, n)). This module gives it

- ``gram``: the Gram in float64 or, on CPU, from float32 products (BLAS ``ssyrk``, about twice the
  speed), with ``delta``, a rigorous bound on ``|lambda_hat - lambda|`` for every eigenvalue: products are
  formed over chunks of ``CHUNK`` columns into fresh outputs and the chunks added one by one, so each
  entry passes through at most ``CHUNK + chunks`` roundings and ``|G_hat - G| <= gamma |A| |A|^T``
  entrywise (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, sec. 3.1), hence
  ``||G_hat - G||_2 <= gamma ||A||_F^2`` and, by Weyl, the same bound on every eigenvalue. The float32
  bound is far too coarse to resolve tol^2, but enough to certify full rank of well-conditioned
  rectangular matrices;
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

import contextlib
import math
import threading

import numpy as np
import torch
from scipy.linalg.blas import dsyrk, ssyrk
from threadpoolctl import ThreadpoolController
from torch import Tensor

__all__ = ["CHUNK", "U32", "U64", "blas_threads", "chunk_gamma", "eigensolver_error", "gram",
           "is_positive_definite", "lanczos_top"]

U64 = 2.0**-52  # twice the float64 unit roundoff: every bound below is taken generously
U32 = 2.0**-24  # float32 unit roundoff
CHUNK = 512  # columns per fresh product in a Gram: an entry sees at most CHUNK + N / CHUNK roundings
_CHECK_EVERY = 8  # Lanczos steps between convergence checks
_SYRK_MIN_K = 256  # smaller float64 Grams are faster as batched torch matmuls than one syrk call each


# Below this many flops per call (N k^2 for a Gram) scipy's OpenBLAS runs on one thread. Its threads
# compete for the cores with torch's OpenMP threads, which keep spinning after each torch call: on two
# cores SqueezeNet's audit took 90-150 ms with both pools at 2 threads and 26 ms with OpenBLAS at 1, and
# ResNet-50's 470 ms against 315 ms. Only VGG-sized Grams (fc6: 4e11 flops) gain from the second thread.
_PARALLEL_MIN_FLOPS = 1e9


def blas_threads(flops: float) -> contextlib.AbstractContextManager:
    """A context running scipy's BLAS/LAPACK (the Grams' ``syrk``, the float32 eigensolver) on one thread
    for a call under ``_PARALLEL_MIN_FLOPS``; larger calls keep the library's own thread count.

    The contexts nest and may overlap across threads: the first one to open switches the libraries to one
    thread, the last one to close gives them their count back, and those in between cost a lock and a
    counter (switching costs about 10 us, more than many of the small calls it wraps).
    """
    if flops >= _PARALLEL_MIN_FLOPS:
        return contextlib.nullcontext()
    return _one_thread()


_ONE_THREAD_LOCK = threading.Lock()
_one_thread_state: dict = {"depth": 0, "libraries": None, "saved": []}


@contextlib.contextmanager
def _one_thread():
    state = _one_thread_state
    with _ONE_THREAD_LOCK:
        if state["depth"] == 0:
            if state["libraries"] is None:  # scanning the loaded libraries takes a few ms: once per process
                state["libraries"] = [lib for lib in ThreadpoolController().lib_controllers
                                      if lib.user_api == "blas"]
            # The libraries' own setters, not ThreadpoolController.limit, which re-reads every library.
            state["saved"] = [lib.get_num_threads() for lib in state["libraries"]]
            for lib in state["libraries"]:
                lib.set_num_threads(1)
        state["depth"] += 1
    try:
        yield
    finally:
        with _ONE_THREAD_LOCK:
            state["depth"] -= 1
            if state["depth"] == 0:
                for lib, count in zip(state["libraries"], state["saved"], strict=True):
                    lib.set_num_threads(count)


def chunk_gamma(big: int, unit: float) -> float:
    """gamma_n = n u / (1 - n u) for the n = CHUNK + chunks roundings an entry of a Gram sees."""
    terms = min(big, CHUNK) + math.ceil(big / CHUNK)
    return terms * unit / (1 - terms * unit)


def gram(batch: Tensor, single: bool = False, full: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Gram of the smaller side of a batch (B, m, n): (grams (B, k, k), ||A||_F^2 bound (B,), delta), the
    Grams in float64, or in float32 with ``single`` (``.double()`` converts them exactly), the bounds float64.
    ``full=False`` may leave the strict lower triangles zero, for a solver that reads only the upper one
    (filling them in costs a tenth of a 512 x 512 eigensolve).

    ``|lambda_i(G_hat) - lambda_i(G)| <= delta`` for every eigenvalue (the products' rounding only; an
    eigensolver run on G_hat adds its own error). ``single`` forms the products in float32 (CPU only).
    Each chunk of CHUNK columns is one fresh BLAS ``syrk`` product (half the flops of a GEMM), and the
    chunks are added one by one, so whatever order the BLAS sums in, an entry passes through at most
    CHUNK + N / CHUNK roundings (see the module docstring).
    """
    bsz, m, n = batch.shape
    wide = m <= n
    k, big = (m, n) if wide else (n, m)
    dtype = torch.float32 if single else torch.float64
    if batch.device.type == "cpu" and (single or k >= _SYRK_MIN_K):
        parts = [_gram_syrk(batch[b].detach(), wide, dtype, full) for b in range(bsz)]
        # Kept in LAPACK's column-major layout, which the eigensolvers would otherwise copy into (0.4 ms at
        # k = 512, as much as a fresh stack's page faults): one Gram is a view, several are stacked as such.
        grams = parts[0][None] if bsz == 1 else torch.stack([part.mT for part in parts]).mT
    else:  # float64 batched matmuls: small Grams, and other devices (whose float32 may use TF32 units)
        grams = torch.zeros(bsz, k, k, dtype=torch.float64, device=batch.device)
        for start in range(0, big, CHUNK):
            part = (batch[:, :, start : start + CHUNK] if wide else batch[:, start : start + CHUNK, :].mT).double()
            grams += part @ part.mT  # (B, k, c) @ (B, c, k), a fresh product per chunk
        dtype = torch.float64
    gamma = chunk_gamma(big, U32 if dtype == torch.float32 else U64 / 2)
    frob2 = grams.diagonal(dim1=1, dim2=2).double().sum(dim=1) / (1 - gamma) * (1 + 1e-12)  # >= ||A||_F^2
    return grams, frob2, gamma * frob2


def _gram_syrk(matrix: Tensor, wide: bool, dtype: torch.dtype, full: bool = True) -> Tensor:
    """(k, k) Gram of one CPU matrix from scipy's BLAS syrk (IEEE arithmetic and result in ``dtype``); only
    its upper triangle unless ``full``."""
    k, big = (matrix.shape[0], matrix.shape[1]) if wide else (matrix.shape[1], matrix.shape[0])
    syrk = ssyrk if dtype == torch.float32 else dsyrk
    values = matrix.to(dtype).numpy()  # a view when the dtype already matches
    with blas_threads(min(big, CHUNK) * k * k):
        acc = _chunked_syrk(values, wide, big, syrk)
    return torch.from_numpy(_symmetrize(acc) if full else acc)


def _chunked_syrk(values: np.ndarray, wide: bool, big: int, syrk) -> np.ndarray:
    """The upper triangle of the Gram, one fresh product per CHUNK columns, added chunk by chunk."""
    acc = None
    for start in range(0, big, CHUNK):
        # wide: part (k, c) C-order, its .T is (c, k) F-order and trans=1 gives part @ part.T;
        # tall: part (c, k) C-order, its .T is (k, c) F-order and trans=0 gives part.T @ part.
        part = values[:, start : start + CHUNK] if wide else values[start : start + CHUNK, :]
        fresh = syrk(1.0, part.T, trans=1 if wide else 0)  # upper triangle of a fresh (k, k) product
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows as inf: the caller checks
            acc = fresh if acc is None else acc + fresh  # one rounding per chunk, in ``dtype``
    return acc


def _symmetrize(upper: np.ndarray) -> np.ndarray:
    """The full symmetric matrix from the upper triangle BLAS syrk wrote (its lower one is zero), in the
    Gram's own dtype (float32 halves the memory traffic of this pass)."""
    # syrk writes only the upper triangle of its fresh zero output, so the strict lower one is exactly 0
    # and U + U^T is the full matrix with a doubled diagonal (restored below); np.triu would cost 3x this.
    full = upper + upper.T
    np.fill_diagonal(full, np.diagonal(upper))
    return full


def eigensolver_error(grams_norm: Tensor | np.ndarray, k: int, unit: float = U64) -> Tensor | np.ndarray:
    """Error bound of a backward-stable symmetric eigensolver on a k x k matrix of 2-norm ``grams_norm``,
    run in the precision whose (generously taken) unit roundoff is ``unit``."""
    return unit * (10 * k + 10) * grams_norm


def is_positive_definite(matrices: Tensor, offset: Tensor | None = None, sign: float = 1.0
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Certified: True only where the symmetric (B, k, k) float64 matrix ``M = sign * matrices + offset I``
    is positive definite (Rump 2006). ``offset`` (B,) defaults to 0; M is formed once, in a single copy.

    The shift ``s = (k + 2) * U64 * tr|M|`` covers Rump's bound gamma_{k+1}/(1 - 2 gamma_{k+1}) tr(M)
    plus the rounding of forming ``M - s I``. False means "not certified", not "indefinite". Also returns
    the Cholesky factor L of ``M - s I`` (B, k, k) and s (B,), for solves with the shifted matrix.
    """
    k = matrices.shape[-1]
    shifted = matrices * sign if sign != 1.0 else matrices.clone()  # (B, k, k), the one copy
    diag = shifted.diagonal(dim1=1, dim2=2)  # (B, k), a view
    if offset is not None:
        diag.add_(offset[:, None])
    shift = (k + 2) * U64 * diag.abs().sum(dim=1) + 1e-290  # (B,)
    smallest = diag.min(dim=1).values
    diag.sub_(shift[:, None])
    factor, info = torch.linalg.cholesky_ex(shifted)
    return (info == 0) & (smallest > shift), factor, shift


def lanczos_top(matvec, size: tuple[int, int], steps: int, dtype: torch.dtype, device,
                rtol: float = 1e-12) -> Tensor:
    """Largest Ritz value of a symmetric operator on a batch: (B,) lower bounds of lambda_max.

    ``matvec`` maps (B, k) -> (B, k). Full reorthogonalisation (twice) keeps the Krylov basis orthonormal,
    so ``steps`` of about 40 resolve the top of a dense random spectrum to ~1e-6 relative; every
    ``_CHECK_EVERY`` steps the run stops early once no top Ritz value moved by more than ``rtol`` relative
    (the value only grows with more steps). Deterministic (fixed start vector seed) so that repeated
    audits report the same numbers.
    """
    bsz, k = size
    steps = min(steps, k)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(bsz, k, generator=gen, dtype=dtype).to(device)
    q = q / q.norm(dim=1, keepdim=True)
    basis = torch.zeros(bsz, steps, k, dtype=dtype, device=device)  # (B, s, k): rows are Lanczos vectors
    alpha = torch.zeros(bsz, steps, dtype=dtype, device=device)
    beta = torch.zeros(bsz, steps, dtype=dtype, device=device)
    top = None
    for j in range(steps):
        basis[:, j] = q
        w = matvec(q)  # (B, k)
        alpha[:, j] = (w * q).sum(dim=1)
        done = basis[:, : j + 1]  # (B, j + 1, k), a contiguous slice
        for _ in range(2):  # classical Gram-Schmidt, twice, against the whole basis
            w = w - ((done @ w[:, :, None]).mT @ done)[:, 0]
        beta[:, j] = w.norm(dim=1)
        if bool((beta[:, j] <= 1e-12 * alpha[:, : j + 1].abs().amax(dim=1)).all()):
            return _ritz_top(alpha, beta, j + 1)  # an invariant subspace: the Ritz values are exact
        if (j + 1) % _CHECK_EVERY == 0:
            latest = _ritz_top(alpha, beta, j + 1)
            if top is not None and bool(((latest - top).abs() <= rtol * latest.abs()).all()):
                return latest
            top = latest
        q = w / beta[:, j : j + 1].clamp_min(1e-300)
    return _ritz_top(alpha, beta, steps)


def _ritz_top(alpha: Tensor, beta: Tensor, used: int) -> Tensor:
    """Largest eigenvalue of the leading used x used Lanczos tridiagonal matrices (B,)."""
    tri = torch.diag_embed(alpha[:, :used]) + torch.diag_embed(beta[:, : used - 1], 1)
    tri = tri + torch.diag_embed(beta[:, : used - 1], -1)  # (B, s, s) tridiagonal
    return torch.linalg.eigvalsh(tri)[:, -1]
