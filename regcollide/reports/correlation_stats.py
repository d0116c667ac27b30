"""Small-sample statistics for the correlation study: row-wise correlations, permutation p-values,
bootstrap intervals, Holm's correction and leave-out influence.

- Permutation tests (Fisher, "The Design of Experiments", 1935; Pitman 1937): the null distribution of a
  correlation is that of the statistic over re-pairings of y with x. Up to ``EXACT_MAX_N`` models every one
  of the n! pairings is enumerated (exact p-value, at least 2/n! two-sided, never 0); above, ``m`` random
  pairings give the Monte Carlo estimate (b + 1)/(m + 1) of Phipson & Smyth ("Permutation p-values should
  never be zero", Stat. Appl. Genet. Mol. Biol. 2010). Two-sided p = 2·min(P(T ≤ t), P(T ≥ t)), capped at
  1, with a relative tolerance of 100·eps for ties: the conventions of ``scipy.stats.permutation_test``.
- Percentile bootstrap intervals (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993).
- Holm's step-down correction (Holm, Scand. J. Statistics 1979).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from scipy import stats

STATISTICS = ("spearman", "kendall", "pearson")
EXACT_MAX_N = 8           # 8! = 40,320 pairings: enumerated in well under a second
N_PERMUTATIONS = 9999     # Monte Carlo pairings above EXACT_MAX_N; smallest possible p = 1/10,000


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of (B, n) arrays; NaN where a row is constant."""
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    denom = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (xc * yc).sum(1) / denom, np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Spearman ρ of (B, n) arrays: Pearson of average ranks (ties averaged like scipy)."""
    return pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Kendall τ-b (scipy's default variant) of (B, n) arrays from pairwise sign matrices."""
    out = []
    for i in range(0, len(x), 256):   # (256, n, n) sign matrices at a time bound the memory
        sx = np.sign(x[i:i + 256, :, None] - x[i:i + 256, None, :])   # 0 on ties, which τ-b leaves out
        sy = np.sign(y[i:i + 256, :, None] - y[i:i + 256, None, :])
        denom = np.sqrt((sx ** 2).sum((1, 2)) * (sy ** 2).sum((1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(denom > 0, (sx * sy).sum((1, 2)) / denom, np.nan))
    return np.concatenate(out) if out else np.empty(0)


ROWS = {"pearson": pearson_rows, "spearman": spearman_rows, "kendall": kendall_rows}


def bootstrap_ci(x: np.ndarray, y: np.ndarray, statistic: str, n_boot: int, rng: np.random.Generator,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI over models (pairs resampled together).

    Resamples in which either variable is constant have no correlation and are dropped; None if fewer
    than half the resamples remain, since the interval would then describe a biased subset.
    """
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))   # (B, n)
    values = ROWS[statistic](x[idx], y[idx])
    values = values[np.isfinite(values)]
    if len(values) < n_boot / 2:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


@lru_cache(maxsize=EXACT_MAX_N)
def _all_permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.intp)   # (n!, n)


def _null_distribution(name: str, x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """The statistic for every pairing (x, y[perm]) — (P,) — using what a re-pairing leaves unchanged."""
    if name == "kendall":
        # The τ-b denominator does not depend on the pairing; only Σ sign(x_i - x_j)·sign(y_πi - y_πj) does.
        sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])   # (n, n)
        denom = np.sqrt((sx ** 2).sum() * (sy ** 2).sum())
        chunks = [np.einsum("ij,bij->b", sx, sy[p[:, :, None], p[:, None, :]]) for p in np.array_split(
            perms, max(1, len(perms) // 4096))]
        return np.concatenate(chunks) / denom
    if name == "spearman":
        # Ranks of a re-paired y are the re-paired ranks of y.
        x, y = stats.rankdata(x), stats.rankdata(y)
    return pearson_rows(np.broadcast_to(x, perms.shape), y[perms])


def permutation_pvalues(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                        n_permutations: int = N_PERMUTATIONS, exact_max_n: int = EXACT_MAX_N,
                        statistics: tuple[str, ...] = STATISTICS) -> tuple[dict[str, float], str]:
    """Two-sided permutation p-value of each of ``statistics``, and how it was computed.

    Exact over all n! pairings when n ≤ ``exact_max_n``; else ``n_permutations`` random pairings with the
    (b + 1)/(m + 1) estimator. The same pairings serve every statistic.
    """
    n = len(x)
    if n <= exact_max_n:
        perms, adjust = _all_permutations(n), 0
        method = f"exact (all {len(perms):,} pairings)"
    else:
        perms, adjust = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1), 1
        method = f"Monte Carlo ({n_permutations:,} random pairings, p = (b+1)/(m+1))"
    out = {}
    for name in statistics:
        observed = ROWS[name](x[None], y[None])[0]
        null = _null_distribution(name, x, y, perms)
        gamma = abs(observed) * np.finfo(float).eps * 100
        less = (np.count_nonzero(null <= observed + gamma) + adjust) / (len(perms) + adjust)
        greater = (np.count_nonzero(null >= observed - gamma) + adjust) / (len(perms) + adjust)
        out[name] = float(min(1.0, 2 * min(less, greater)))
    return out, method


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def most_influential(x: np.ndarray, y: np.ndarray) -> int:
    """Index of the point whose removal changes Pearson r the most (leave-one-out influence)."""
    full = pearson_rows(x[None], y[None])[0]
    n = len(x)
    keep = ~np.eye(n, dtype=bool)                                  # (n, n): row i leaves out point i
    xs, ys = np.broadcast_to(x, (n, n))[keep], np.broadcast_to(y, (n, n))[keep]
    loo = pearson_rows(xs.reshape(n, n - 1), ys.reshape(n, n - 1))   # (n,)
    return int(np.nanargmax(np.abs(np.nan_to_num(loo, nan=0.0) - full)))
