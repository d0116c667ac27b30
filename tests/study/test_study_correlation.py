"""Partial Spearman and TOST against independent formulas on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from regcollide.reports.study.correlation import partial_spearman, spearman_se, tost_correlation


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    z = rng.normal(size=60)
    x = z + rng.normal(size=60)
    y = 0.5 * z - 0.4 * x + rng.normal(size=60)
    return x, y, z


def test_without_covariates_equals_scipy_spearman(data):
    x, y, _ = data
    ref = stats.spearmanr(x, y)
    res = partial_spearman(x, y)
    assert res.r == pytest.approx(ref.statistic, abs=1e-12)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_one_covariate_equals_closed_form_partial_correlation(data):
    x, y, z = data
    rxy, rxz, ryz = (stats.spearmanr(a, b).statistic for a, b in ((x, y), (x, z), (y, z)))
    closed = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    res = partial_spearman(x, y, covariates=z[:, None])
    assert res.r == pytest.approx(closed, abs=1e-12)
    t = closed * math.sqrt((60 - 3) / (1 - closed**2))
    assert res.p == pytest.approx(2 * stats.t.sf(abs(t), 57), rel=1e-9)


def test_group_indicators_equal_within_group_demeaned_ranks(data):
    x, y, _ = data
    groups = [i % 3 for i in range(60)]
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    g = np.array(groups)
    for level in range(3):
        rx[g == level] -= rx[g == level].mean()
        ry[g == level] -= ry[g == level].mean()
    assert partial_spearman(x, y, groups=groups).r == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)


def test_constant_within_groups_gives_nan_not_a_number():
    x = np.repeat([1.0, 2.0, 3.0], 5)
    y = np.arange(15.0)
    res = partial_spearman(x, y, groups=list(np.repeat([0, 1, 2], 5)))
    assert math.isnan(res.r)


def test_tost_is_the_90_percent_interval_inside_the_bound():
    # Schuirmann's duality: TOST rejects at alpha iff the (1 - 2 alpha) CI lies inside (-bound, bound).
    for r in np.linspace(-0.5, 0.5, 41):
        for n in (30, 99, 400):
            se = spearman_se(r, n, 2)
            z = math.atanh(r)
            lo, hi = math.tanh(z - 1.6448536269514722 * se), math.tanh(z + 1.6448536269514722 * se)
            assert tost_correlation(r, n, 2, 0.3)["equivalent"] == (lo > -0.3 and hi < 0.3)


def test_tost_rejects_a_bad_bound():
    with pytest.raises(ValueError, match="bound"):
        tost_correlation(0.1, 50, 0, 1.5)
