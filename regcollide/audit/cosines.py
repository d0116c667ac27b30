"""Largest cosine between two rows of a weight matrix: how close two units are to computing the same feature.

Reported next to the rank by the spectrum audit (after Ozbulak et al. 2022, Table 1): two nearly parallel
rows are the simplest way for a matrix to lose rank. Wide matrices reuse the float64 row Gram the rank
engine already built; tall ones need an m x m float32 product, which is why it can be switched off.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["max_cosines"]


def max_cosines(batch: Tensor, row_gram: Tensor | None) -> list[tuple[float | None, float | None]]:
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
        # Scaled by the largest entry first: squares of entries beyond about 1e19 overflow float32.
        rows = rows / rows.abs().amax(dim=2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        rows = rows / rows.norm(dim=2, keepdim=True).clamp_min(1e-30)  # (B, m, n)
        block = max(1, (64 * 2**20) // (4 * bsz * m))
        for start in range(0, m, block):
            cos = (rows[:, start : start + block] @ rows.mT).double()  # (B, b, m)
            idx = torch.arange(start, min(start + block, m), device=batch.device)
            cos[:, idx - start, idx] = math.nan
            best = torch.maximum(best, cos.nan_to_num(nan=-math.inf).amax(dim=(1, 2)))
            best_abs = torch.maximum(best_abs, cos.abs().nan_to_num(nan=0.0).amax(dim=(1, 2)))
    return [(float(b), float(a)) for b, a in zip(best.tolist(), best_abs.tolist(), strict=True)]
