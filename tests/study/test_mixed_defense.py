"""MixedLM slope and Welch differences against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from regcollide.reports.study.defense import defense_table, welch_difference
from regcollide.reports.study.mixed import mixed_effects


def test_mixed_slope_equals_within_group_ols_for_group_centred_x():
    # With x centred within every (balanced) group, GLS and the fixed-effects (within) estimator coincide.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(8), 12)
    x = rng.normal(size=96)
    for g in range(8):
        x[groups == g] -= x[groups == g].mean()
    y = 0.6 * x + rng.normal(size=8)[groups] * 2 + rng.normal(size=96) * 0.5
    res = mixed_effects(y, x, groups)
    xs, ys = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    yw = ys.copy()
    for g in range(8):
        yw[groups == g] -= yw[groups == g].mean()
    within = float(xs @ yw / (xs @ xs))
    assert res["beta"] == pytest.approx(within, abs=1e-4)
    assert res["group_var"] > res["resid_var"]  # the random intercepts were made large
    assert res["ci_low"] < res["beta"] < res["ci_high"] and res["p"] < 1e-6


def test_welch_difference_matches_the_formula():
    a, b = [0.9, 1.1, 1.3, 0.95], [0.5, 0.7, 0.4]
    res = welch_difference(a, b)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = stats.t.ppf(0.975, dof) * np.sqrt(va + vb)
    diff = np.mean(a) - np.mean(b)
    assert res["diff"] == pytest.approx(diff)
    assert (res["low"], res["high"]) == pytest.approx((diff - half, diff + half), rel=1e-9)
    assert welch_difference([1.0], [2.0, 3.0])["low"] is None  # one seed: no interval


def test_defense_table_pairs_configurations():
    rows = [{"config": c, "acc": v} for c, v in (("d", 1.0), ("d", 2.0), ("b", 0.0), ("b", 1.0))]
    (row,) = defense_table(rows, [("d", "b"), ("missing", "b")], ["acc"])
    assert row["defense"] == "d" and row["effects"]["acc"]["diff"] == pytest.approx(1.0)
