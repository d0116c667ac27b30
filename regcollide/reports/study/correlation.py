"""Partial Spearman correlation with its Fisher-z interval, and the TOST equivalence test for it.

Partial Spearman (Conover 1999, ch. 5): rank x, y and the continuous covariates, regress the ranks of x and
of y on [1, covariates] (plus 0/1 indicator columns for categorical ones, which are not ranked), and take
Pearson's r of the two residuals. With k covariate columns the t test has n − 2 − k degrees of freedom.

Equivalence (Schuirmann's two one-sided tests, 1987): reject both H0: ρ ≤ −δ and H0: ρ ≥ δ on the Fisher
z scale with the Bonett–Wright Spearman standard error sqrt((1 + r²/2) / (n − 3 − k)). Equivalence at level
α holds exactly when the (1 − 2α) confidence interval lies inside (−δ, δ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class PartialCorrelation:
    r: float
    p: float
    n: int
    covariates: int
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return asdict(self)


def _design(covariates: np.ndarray | None, groups: list | None, n: int) -> np.ndarray:
    cols = [np.ones(n)]
    if covariates is not None and covariates.size:
        cov = covariates.reshape(n, -1)
        cols += [stats.rankdata(cov[:, j]) for j in range(cov.shape[1])]
    if groups is not None:
        levels = sorted(set(groups), key=str)
        cols += [np.array([g == level for g in groups], float) for level in levels[1:]]
    return np.column_stack(cols)  # (n, 1 + k)


def _residual(design: np.ndarray, v: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


def spearman_se(r: float, n: int, k: int) -> float:
    """Bonett–Wright standard error of atanh(Spearman ρ) with k covariates partialled out."""
    return math.sqrt((1 + r * r / 2) / (n - 3 - k))


def partial_spearman(x, y, covariates=None, groups=None, level: float = 0.95) -> PartialCorrelation:
    """Spearman correlation of x and y controlling for ``covariates`` (n, k) and fixed ``groups`` effects."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    design = _design(None if covariates is None else np.asarray(covariates, float), groups, n)
    k = design.shape[1] - 1
    if n - 3 - k <= 0:
        raise ValueError(f"{n} units cannot carry {k} covariate columns (need n > k + 3)")
    rx, ry = _residual(design, stats.rankdata(x)), _residual(design, stats.rankdata(y))
    if np.allclose(rx, 0) or np.allclose(ry, 0):
        return PartialCorrelation(float("nan"), float("nan"), n, k, float("nan"), float("nan"))
    r = float(np.clip(np.corrcoef(rx, ry)[0, 1], -1.0, 1.0))
    dof = n - 2 - k
    t = r * math.sqrt(dof / max(1 - r * r, 1e-300))
    p = float(2 * stats.t.sf(abs(t), dof))
    half = stats.norm.ppf(0.5 + level / 2) * spearman_se(r, n, k)
    z = math.atanh(min(max(r, -0.999999), 0.999999))
    return PartialCorrelation(r, p, n, k, math.tanh(z - half), math.tanh(z + half))


def tost_correlation(r: float, n: int, k: int, bound: float, alpha: float = 0.05) -> dict:
    """Two one-sided tests of |ρ| < bound; ``equivalent`` when both reject at level α."""
    if not 0 < bound < 1:
        raise ValueError(f"equivalence bound must be in (0, 1), got {bound}")
    se = spearman_se(r, n, k)
    z = math.atanh(min(max(r, -0.999999), 0.999999))
    p_lower = float(stats.norm.sf((z - math.atanh(-bound)) / se))   # H0: ρ ≤ −bound
    p_upper = float(stats.norm.cdf((z - math.atanh(bound)) / se))   # H0: ρ ≥ bound
    p = max(p_lower, p_upper)
    return {"bound": bound, "alpha": alpha, "p_lower": p_lower, "p_upper": p_upper, "p": p,
            "equivalent": bool(p < alpha)}
