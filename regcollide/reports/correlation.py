"""Do ν, μ and nullity correlate with how easily PGD finds adversarial examples?

Ozbulak et al. ("Exact Feature Collisions in Neural Networks") count weight matrices with a non-trivial
null space (ν) and with fewer rows than columns (μ) but leave open whether these structural quantities
predict adversarial vulnerability. This module answers that across a zoo of eval entries: every
structural metric is set against every PGD-ease metric (Madry et al., ICLR 2018; AutoAttack, Croce & Hein,
ICML 2020) with Spearman ρ, Kendall τ and Pearson r, percentile-bootstrap 95% confidence intervals
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993) and Holm's step-down correction
(Holm, "A Simple Sequentially Rejective Multiple Test Procedure", Scand. J. Statistics 1979) across the
family of tests.

Example::

    study = correlate_entries(load_entries("results/"))
    [t for t in study.tests if t.significant]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

STATISTICS = ("spearman", "kendall", "pearson")


def _layer_mean(entry: dict, fn: Callable[[dict], float | None]) -> float | None:
    layers = (entry.get("audit") or {}).get("layers") or []
    values = [v for v in (fn(layer) for layer in layers) if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _sigma_ratio(layer: dict) -> float | None:
    lo, hi = layer.get("sigma_min"), layer.get("sigma_max")
    return lo / hi if lo is not None and hi else None


def _audit(key: str) -> Callable[[dict], Any]:
    return lambda e: (e.get("audit") or {}).get(key)


def _frac(count: str) -> Callable[[dict], Any]:
    def value(e: dict) -> float | None:
        a = e.get("audit") or {}
        if a.get(f"{count}_frac") is not None:
            return a[f"{count}_frac"]
        return a[count] / a["n_weights"] if a.get(count) is not None and a.get("n_weights") else None
    return value


# name -> (label, how to read it from an entry)
STRUCTURAL: dict[str, tuple[str, Callable[[dict], Any]]] = {
    "nu": ("ν", _audit("nu")),
    "mu": ("μ", _audit("mu")),
    "nu_frac": ("ν/n_θ", _frac("nu")),
    "mu_frac": ("μ/n_θ", _frac("mu")),
    "total_nullity": ("Σ nullity", _audit("total_nullity")),
    "first_nullity": ("nullity(W1)", _audit("first_nullity")),
    "excess_nullity": ("excess nullity", _audit("excess_nullity")),
    "mean_sigma_ratio": ("mean σ_min/σ_max", lambda e: _layer_mean(e, _sigma_ratio)),
    "mean_max_cosine": ("mean max cosine", lambda e: _layer_mean(e, lambda layer: layer.get("max_cosine"))),
}


def _part(part: str, key: str) -> Callable[[dict], Any]:
    return lambda e: (e.get(part) or {}).get(key)


# name -> (label, reader, what a larger value means)
EASE: dict[str, tuple[str, Callable[[dict], Any], str]] = {
    "median_eps_star": ("median ε*", _part("pgd", "median_eps_star"), "PGD needs a larger budget"),
    "pgd_robust_acc": ("PGD robust acc", _part("pgd", "robust_acc"), "PGD succeeds less often"),
    "mean_steps_to_success": ("mean PGD steps to success", _part("pgd", "mean_steps_to_success"),
                              "PGD needs more steps"),
    "autoattack_acc": ("AutoAttack acc", _part("autoattack", "robust_acc"), "AutoAttack succeeds less often"),
}


@dataclass
class CorrelationTest:
    structural: str
    ease: str
    n: int
    spearman: float | None = None
    spearman_p: float | None = None
    spearman_ci: tuple[float, float] | None = None
    kendall: float | None = None
    kendall_p: float | None = None
    kendall_ci: tuple[float, float] | None = None
    pearson: float | None = None
    pearson_p: float | None = None
    pearson_ci: tuple[float, float] | None = None
    spearman_p_holm: float | None = None
    kendall_p_holm: float | None = None
    pearson_p_holm: float | None = None
    significant: bool = False          # Spearman (the primary statistic) after Holm at alpha
    skipped: str | None = None         # why no correlation could be computed


@dataclass
class CorrelationStudy:
    n_models: int
    alpha: float
    n_boot: int
    seed: int
    tests: list[CorrelationTest] = field(default_factory=list)
    constant: dict[str, float] = field(default_factory=dict)   # metric -> its single value in the zoo
    values: dict[str, list[float | None]] = field(default_factory=dict)   # metric -> one value per entry
    names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def metric_values(entries: list[dict]) -> dict[str, list[float | None]]:
    """Every structural and ease metric per entry (None where an entry lacks it)."""
    readers = {k: v[1] for k, v in STRUCTURAL.items()} | {k: v[1] for k, v in EASE.items()}
    out = {}
    for name, read in readers.items():
        column = []
        for e in entries:
            v = read(e)
            column.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
        out[name] = column
    return out


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


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Spearman ρ of (B, n) arrays: Pearson of average ranks (ties averaged like scipy)."""
    return _pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    denom = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (xc * yc).sum(1) / denom, np.nan)


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Kendall τ-b (scipy's default variant) of (B, n) arrays from pairwise sign matrices."""
    sx = np.sign(x[:, :, None] - x[:, None, :])   # (B, n, n); 0 on ties, which τ-b leaves out
    sy = np.sign(y[:, :, None] - y[:, None, :])
    denom = np.sqrt((sx ** 2).sum((1, 2)) * (sy ** 2).sum((1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sx * sy).sum((1, 2)) / denom, np.nan)


def bootstrap_ci(x: np.ndarray, y: np.ndarray, statistic: str, n_boot: int, rng: np.random.Generator,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI over models (pairs resampled together).

    Resamples in which either variable is constant have no correlation and are dropped; None if fewer
    than half the resamples remain, since the interval would then describe a biased subset.
    """
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))   # (B, n)
    xb, yb = x[idx], y[idx]
    if statistic == "pearson":
        values = _pearson_rows(xb, yb)
    elif statistic == "spearman":
        values = _spearman_rows(xb, yb)
    else:
        values = np.concatenate([_kendall_rows(xb[i:i + 256], yb[i:i + 256]) for i in range(0, n_boot, 256)])
    values = values[np.isfinite(values)]
    if len(values) < n_boot / 2:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def _one_test(s: str, e: str, xs: list, ys: list, n_boot: int, rng: np.random.Generator) -> CorrelationTest:
    pairs = [(a, b) for a, b in zip(xs, ys) if a is not None and b is not None]
    test = CorrelationTest(structural=s, ease=e, n=len(pairs))
    if len(pairs) < 3:
        test.skipped = f"only {len(pairs)} models have both metrics (need at least 3)"
        return test
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    for name, arr in ((s, x), (e, y)):
        if np.ptp(arr) == 0:
            test.skipped = f"{name} is constant ({arr[0]:g}) across these models"
            return test
    for stat, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau), ("pearson", stats.pearsonr)):
        res = fn(x, y)
        setattr(test, stat, float(res.statistic))
        setattr(test, f"{stat}_p", float(res.pvalue))
        setattr(test, f"{stat}_ci", bootstrap_ci(x, y, stat, n_boot, rng))
    return test


def correlate_entries(entries: list[dict], alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
                      ) -> CorrelationStudy:
    """All structural × ease tests over ``entries``, Holm-corrected per statistic across the family."""
    if len(entries) < 3:
        raise ValueError(f"a correlation needs at least 3 eval entries, got {len(entries)}; evaluate more "
                         "runs with `regcollide eval`")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values = metric_values(entries)
    study = CorrelationStudy(n_models=len(entries), alpha=alpha, n_boot=n_boot, seed=seed, values=values,
                             names=[str(e.get("name")) for e in entries])
    for name, column in values.items():
        present = {v for v in column if v is not None}
        if len(present) == 1:
            study.constant[name] = present.pop()
    rng = np.random.default_rng(seed)
    for s in STRUCTURAL:
        for e in EASE:
            study.tests.append(_one_test(s, e, values[s], values[e], n_boot, rng))
    computed = [t for t in study.tests if t.skipped is None]
    for stat in STATISTICS:
        adjusted = holm([getattr(t, f"{stat}_p") for t in computed])
        for t, p in zip(computed, adjusted):
            setattr(t, f"{stat}_p_holm", p)
    for t in computed:
        t.significant = t.spearman_p_holm < alpha
    return study
