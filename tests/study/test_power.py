"""Power analysis: the textbook value and agreement with a Monte Carlo simulation of the actual tests."""

from __future__ import annotations

import numpy as np
from scipy import stats

from regcollide.reports.study.power import detectable_rho, power_at, required_n


def test_textbook_sample_size_for_rho_0_3():
    # Cohen (1988), table 3.4.1: r = 0.3, two-sided alpha 0.05, power 0.80 -> n = 85.
    assert required_n(0.3) == 85
    assert required_n(0.3, spearman=True) == 89  # Bonett-Wright factor 1 + 0.045
    assert required_n(0.3, covariates=10, spearman=True) == 99


def test_power_and_detectable_rho_are_inverse():
    assert abs(power_at(85, 0.3) - 0.80) < 0.01
    assert abs(detectable_rho(85) - 0.3) < 0.005
    assert power_at(3, 0.3) != power_at(3, 0.3)  # nan: no degrees of freedom


def _simulated_power(n: int, rho: float, test, sims: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    cov = [[1, rho], [rho, 1]]
    hits = 0
    for _ in range(sims):
        x, y = rng.multivariate_normal([0, 0], cov, size=n).T
        hits += test(x, y).pvalue < 0.05
    return hits / sims


def test_formula_matches_monte_carlo_for_pearson_and_spearman():
    # 1500 simulations: binomial standard error of a power near 0.8 is 0.010; allow 0.035.
    assert abs(_simulated_power(85, 0.3, stats.pearsonr, 1500, 1) - power_at(85, 0.3)) < 0.035
    # Spearman's rho of normal data is (6/pi) asin(rho/2) = 0.287 for rho = 0.3.
    rho_s = 6 / np.pi * np.arcsin(0.15)
    assert abs(_simulated_power(89, 0.3, stats.spearmanr, 1500, 2) - power_at(89, rho_s, spearman=True)) < 0.035
