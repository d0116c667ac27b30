"""Exact rank of a rank-deficient Gram matrix without a full eigensolver: count the few small eigenvalues.

A large square weight matrix (VGG-16's 4096 x 4096 fc7 at random init, for instance) usually has a handful
of singular values below the rank tolerance, so the full-rank certificate of ``regcollide.audit.rank``
fails and, until now, a k x k symmetric eigensolve (4/3 k^3 flops, mostly BLAS-2) decided the rank. Here
two certificates do it with a few Cholesky factorizations (k^3 / 3 flops each, BLAS-3):

1. Block inverse iteration with p vectors on ``(G + mu I)^-1`` (mu = the smallest band) converges in a
   few steps to the p smallest eigenpairs, since (lambda_i + mu) / (lambda_{p+1} + mu) is tiny for the
   eigenvalues near 0; Rayleigh-Ritz gives Ritz values rho_1 <= ... <= rho_p and vectors U.
2. For each band [lo, hi] around tol^2, q = #{rho_i < lo}. **At least q eigenvalues lie below lo**: by
   Courant-Fischer, lambda_q <= max of the Rayleigh quotient over span(U_q), computed with a rigorous
   rounding bound (``_below``). **At most q eigenvalues lie at or below hi**: a certified Cholesky (Rump
   2006) of ``G + beta U_q U_q^T - c I`` proves lambda_min(G + beta U_q U_q^T) > hi; adding a positive
   semidefinite matrix of rank q raises each eigenvalue by at most q places (Weyl's interlacing,
   lambda_i(G + E) <= lambda_{i+q}(G)), so lambda_{q+1}(G) > hi (``_above``).

Together: exactly q eigenvalues below the band and none in it, so rank = k - q for us and for the
reference SVD. A Ritz value inside a band returns "borderline" (the caller recomputes exactly as the
reference does); any certificate that fails returns None (the caller falls back to the eigensolver), so
the answer is never a guess.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from regcollide.audit.certify import U64, is_positive_definite

__all__ = ["deflated_ranks"]

_BLOCK = 32  # inverse-iteration vectors: more small eigenvalues than this fall back to the eigensolver
_ITERATIONS = 3


def deflated_ranks(
    gram: Tensor, bands: list[tuple[float, float]], frob2: float, upper: float
) -> tuple[list[int], float] | str | None:
    """Ranks of the k x k float64 Gram ``gram`` at each band (lo, hi), lo < hi, in its eigenvalue units.

    ``frob2`` bounds ||A||_F^2 (= trace of the Gram) and ``upper`` bounds lambda_max, both from above.
    Returns (ranks, smallest Ritz value's square root = a sigma_min estimate), "borderline" when a Ritz
    value falls inside a band, or None when a certificate fails (use the eigensolver).
    """
    k = gram.shape[0]
    block = min(_BLOCK, k // 4)
    mu = min(hi for _, hi in bands)
    if block < 1 or mu <= 0:
        return None
    ritz, vectors = _smallest_ritz_pairs(gram, mu, block)
    if ritz is None:
        return None
    ranks = []
    for lo, hi in bands:
        if bool(((ritz >= lo) & (ritz <= hi)).any()):
            return "borderline"
        small = int((ritz < lo).sum())
        if small >= block:  # possibly more small eigenvalues than vectors: no certificate possible
            return None
        lead = vectors[:, :small]  # (k, q)
        if not (_below(gram, lead, lo, upper) and _above(gram, lead, hi, frob2)):
            return None
        ranks.append(k - small)
    return ranks, math.sqrt(max(float(ritz[0]), 0.0))


def _smallest_ritz_pairs(gram: Tensor, mu: float, block: int) -> tuple[Tensor | None, Tensor | None]:
    """Ritz values (p,) ascending and vectors (k, p) of the p smallest eigenpairs, by inverse iteration."""
    k = gram.shape[0]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(gram + mu * eye)  # G + mu I is positive definite
    if int(info) != 0:
        return None, None
    gen = torch.Generator().manual_seed(0)  # deterministic: repeated audits report the same numbers
    basis = torch.randn(k, block, generator=gen, dtype=gram.dtype).to(gram.device)  # (k, p)
    for _ in range(_ITERATIONS):
        basis, _ = torch.linalg.qr(torch.cholesky_solve(basis, factor))
    ritz, rotation = torch.linalg.eigh(basis.mT @ gram @ basis)  # (p,), (p, p)
    return ritz, basis @ rotation


def _below(gram: Tensor, lead: Tensor, lo: float, upper: float) -> bool:
    """Certified: at least q = lead.shape[1] eigenvalues of ``gram`` lie below ``lo`` (Courant-Fischer)."""
    k, q = lead.shape
    if q == 0:
        return True
    basis, _ = torch.linalg.qr(lead)  # (k, q), orthonormal up to rounding
    drift = float(torch.linalg.matrix_norm(basis.mT @ basis - torch.eye(q, dtype=basis.dtype,
                                                                         device=basis.device)))
    if drift >= 0.5:
        return False
    top = float(torch.linalg.eigvalsh(basis.mT @ gram @ basis)[-1])
    # |fl(Q^T G Q) - Q^T G Q| <= gamma_2k |Q|^T |G| |Q|, with || |G| || <= ||G||_F <= sqrt(k) lambda_max
    # and || |Q| ||^2 <= ||Q||_F^2 <= q (1 + drift); +10 k covers the small eigensolver.
    rounding = (2 * k + 10 * q + 10) * U64 * q * (1 + drift) * math.sqrt(k) * upper
    return (top + rounding) / (1 - drift) < lo


def _above(gram: Tensor, lead: Tensor, hi: float, frob2: float) -> bool:
    """Certified: at most q = lead.shape[1] eigenvalues of ``gram`` lie at or below ``hi`` (Weyl, Rump)."""
    k, q = lead.shape
    beta = 4.0 * hi  # lifts the q small eigenvalues well above hi
    # Rounding of forming G + beta U U^T - c I, in the Frobenius norm (which bounds the 2-norm).
    slack = 4 * U64 * (frob2 + beta * q * (q + 1) + 2 * hi * math.sqrt(k))
    shift = hi + slack
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    lifted = gram + beta * (lead @ lead.mT) - shift * eye  # (k, k)
    ok, _, _ = is_positive_definite(lifted[None])
    return bool(ok[0])
