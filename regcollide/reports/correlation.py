"""Do ν, μ and nullity correlate with how easily PGD finds adversarial examples?

Ozbulak et al. ("Exact Feature Collisions in Neural Networks") count weight matrices with a non-trivial
null space (ν) and with fewer rows than columns (μ) but leave open whether these structural quantities
predict adversarial vulnerability. This module answers that across a zoo of eval entries: every
structural metric is set against every PGD-ease metric (Madry et al., ICLR 2018; AutoAttack, Croce & Hein,
ICML 2020) with Spearman ρ, Kendall τ and Pearson r, permutation p-values (exact up to 8 models, never
0; see :mod:`regcollide.reports.correlation_stats`), percentile-bootstrap 95% confidence intervals
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993) and Holm's step-down correction
(Holm, "A Simple Sequentially Rejective Multiple Test Procedure", Scand. J. Statistics 1979) across the
family of tests. Below :data:`MIN_N` models a test is computed but reported as inconclusive, and Pearson
tests that survive Holm are re-checked without their one and two most influential models.

Entries must share one threat model (dataset, norm, ε): robust accuracy at ε = 0.3 is not comparable with
robust accuracy at ε = 0.1.

Example::

    study = correlate_entries(load_entries("results/"))
    [t for t in study.tests if t.significant]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from regcollide.reports.correlation_stats import (
    EXACT_MAX_N,
    N_PERMUTATIONS,
    STATISTICS,
    bootstrap_ci,
    holm,
    most_influential,
    pearson_rows,
    permutation_pvalues,
)
from regcollide.reports.entries import require_one_threat_model

__all__ = ["EASE", "EXACT_MAX_N", "MIN_N", "STATISTICS", "STRUCTURAL", "CorrelationStudy", "CorrelationTest",
           "bootstrap_ci", "correlate_entries", "holm", "metric_label", "metric_values"]

# Below 6 models nothing can be concluded: one model moves ρ by more than ±0.5, and the smallest two-sided
# exact p-value, 2/n!, is 0.083 at n = 4 and 0.017 at n = 5, which no Holm family of more than two tests
# can bring under α = 0.05.
MIN_N = 6


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


def metric_label(name: str) -> str:
    """Display label of a structural or ease metric, e.g. ``ν/n_θ``."""
    return STRUCTURAL[name][0] if name in STRUCTURAL else EASE[name][0]


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
    p_method: str | None = None        # how the permutation p-values were computed
    # Pearson's normal-theory p (t-test, assumes bivariate normality), for comparison with the permutation p:
    pearson_p_normal: float | None = None
    pearson_p_normal_holm: float | None = None
    significant: bool = False          # Spearman (the primary statistic) after Holm at alpha, n >= MIN_N
    pearson_significant: bool = False  # Pearson after Holm at alpha, n >= MIN_N
    inconclusive: bool = False         # n < MIN_N: computed, but nothing can be concluded
    # Pearson tests that survive Holm (permutation p, else normal-theory p: influence_p says which),
    # re-tested with that same p-value without their most influential one and two models:
    influence_p: str | None = None
    influential: list[str] = field(default_factory=list)          # removed models, most influential first
    pearson_without: list[float | None] = field(default_factory=list)      # r without 1, then 2 models
    pearson_p_without: list[float | None] = field(default_factory=list)    # permutation p likewise
    pearson_survives_without: list[bool] = field(default_factory=list)     # still significant after Holm
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
    threat_model: str = ""
    min_n: int = MIN_N
    n_permutations: int = N_PERMUTATIONS
    exact_max_n: int = EXACT_MAX_N

    @property
    def conclusive(self) -> bool:
        return self.n_models >= self.min_n

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
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            column.append(float(v) if ok else None)
        out[name] = column
    return out


@dataclass
class _Pairs:
    x: np.ndarray
    y: np.ndarray
    names: list[str]


def _pairs(xs: list, ys: list, names: list[str]) -> _Pairs:
    kept = [(a, b, n) for a, b, n in zip(xs, ys, names) if a is not None and b is not None]
    return _Pairs(np.array([k[0] for k in kept]), np.array([k[1] for k in kept]), [k[2] for k in kept])


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(pearson_rows(x[None], y[None])[0])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.kendalltau(x, y).statistic)


ROWS_ONE = {"pearson": _pearson, "spearman": _spearman, "kendall": _kendall}


def _one_test(s: str, e: str, pairs: _Pairs, n_boot: int, rng: np.random.Generator,
              perm_rng: np.random.Generator, n_permutations: int) -> CorrelationTest:
    x, y = pairs.x, pairs.y
    test = CorrelationTest(structural=s, ease=e, n=len(x), inconclusive=len(x) < MIN_N)
    if len(x) < 3:
        test.skipped = f"only {len(x)} models have both metrics (need at least 3)"
        return test
    for name, arr in ((s, x), (e, y)):
        if np.ptp(arr) == 0:
            test.skipped = f"{name} is constant ({arr[0]:g}) across these models"
            return test
    pvalues, test.p_method = permutation_pvalues(x, y, perm_rng, n_permutations)
    for stat in STATISTICS:
        setattr(test, stat, float(ROWS_ONE[stat](x, y)))
        setattr(test, f"{stat}_p", pvalues[stat])
        setattr(test, f"{stat}_ci", bootstrap_ci(x, y, stat, n_boot, rng))
    test.pearson_p_normal = float(stats.pearsonr(x, y).pvalue)
    return test


def _pearson_p(kind: str, x: np.ndarray, y: np.ndarray, perm_rng: np.random.Generator, n_permutations: int
               ) -> float:
    if kind == "normal":
        return float(stats.pearsonr(x, y).pvalue)
    return permutation_pvalues(x, y, perm_rng, n_permutations, statistics=("pearson",))[0]["pearson"]


def _influence(test: CorrelationTest, pairs: _Pairs, family: list[CorrelationTest], alpha: float,
               perm_rng: np.random.Generator, n_permutations: int) -> None:
    """Re-test a Holm-significant Pearson correlation without its 1 and 2 most influential models.

    The same kind of p-value that made it significant is recomputed, and Holm is re-run on the whole
    Pearson family with this test's p-value replaced, so "survives" means the same decision rule as the
    full analysis, only without those models.
    """
    kind = test.influence_p
    raw = [t.pearson_p if kind == "permutation" else t.pearson_p_normal for t in family]
    position = family.index(test)
    keep = np.ones(len(pairs.x), dtype=bool)
    while len(test.influential) < 2 and keep.sum() > 3:
        idx = np.flatnonzero(keep)
        drop = idx[most_influential(pairs.x[idx], pairs.y[idx])]
        keep[drop] = False
        x, y = pairs.x[keep], pairs.y[keep]
        test.influential.append(pairs.names[drop])
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            test.pearson_without.append(None)
            test.pearson_p_without.append(None)
            test.pearson_survives_without.append(False)
            continue
        p = _pearson_p(kind, x, y, perm_rng, n_permutations)
        test.pearson_without.append(_pearson(x, y))
        test.pearson_p_without.append(p)
        adjusted = holm(raw[:position] + [p] + raw[position + 1:])[position]
        test.pearson_survives_without.append(bool(adjusted < alpha and keep.sum() >= MIN_N))


def correlate_entries(entries: list[dict], alpha: float = 0.05, n_boot: int = 2000, seed: int = 0,
                      n_permutations: int = N_PERMUTATIONS, progress: bool | None = None) -> CorrelationStudy:
    """All structural × ease tests over ``entries`` (one threat model), Holm-corrected per statistic.

    ``progress``: a labelled bar on stderr (None: only when stderr is a terminal).
    """
    if len(entries) < 3:
        raise ValueError(f"a correlation needs at least 3 eval entries, got {len(entries)}; evaluate more "
                         "runs with `regcollide eval`")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_permutations < 99:
        raise ValueError(f"n_permutations must be at least 99, got {n_permutations}")
    threat = require_one_threat_model(entries, "a correlation study",
                                      "use `regcollide correlate --per-threat-model` to analyse each group")
    values = metric_values(entries)
    names = [str(e.get("name")) for e in entries]
    study = CorrelationStudy(n_models=len(entries), alpha=alpha, n_boot=n_boot, seed=seed, values=values,
                             names=names, threat_model=threat.label, n_permutations=n_permutations)
    for name, column in values.items():
        present = {v for v in column if v is not None}
        if len(present) == 1:
            study.constant[name] = present.pop()
    # Separate streams: the bootstrap intervals do not depend on how many permutation tests ran.
    rng, perm_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    pairs = {(s, e): _pairs(values[s], values[e], names) for s in STRUCTURAL for e in EASE}
    label = f"correlate {len(entries)} models: permutation tests and bootstrap"
    for (s, e), pair in tqdm(pairs.items(), desc=label, unit="pair", file=sys.stderr,
                             disable=None if progress is None else not progress, leave=False):
        study.tests.append(_one_test(s, e, pair, n_boot, rng, perm_rng, n_permutations))
    computed = [t for t in study.tests if t.skipped is None]
    for stat in (*STATISTICS, "pearson_p_normal"):
        key = stat if stat == "pearson_p_normal" else f"{stat}_p"
        adjusted = holm([getattr(t, key) for t in computed])
        for t, p in zip(computed, adjusted):
            setattr(t, f"{key}_holm", p)
    for t in computed:
        t.significant = t.spearman_p_holm < alpha and not t.inconclusive
        t.pearson_significant = t.pearson_p_holm < alpha and not t.inconclusive
        if t.inconclusive or min(t.pearson_p_holm, t.pearson_p_normal_holm) >= alpha:
            continue
        t.influence_p = "permutation" if t.pearson_significant else "normal"
        _influence(t, pairs[(t.structural, t.ease)], computed, alpha, perm_rng, n_permutations)
    return study
