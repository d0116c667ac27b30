"""Hierarchical bootstrap against analytic standard errors in cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from regcollide.reports.study.bootstrap import group_counts, hierarchical_bootstrap, hierarchical_indices


def test_each_row_its_own_family_is_the_ordinary_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    res = hierarchical_bootstrap(lambda idx: y[idx].mean(), [list(range(200)), list(range(200))], n_boot=3000)
    analytic = y.std(ddof=0) / np.sqrt(200)  # the bootstrap SE of a mean
    assert res["se"] == pytest.approx(analytic, rel=0.08)


def test_identical_rows_within_clusters_give_the_cluster_level_se():
    # 8 families of 1 configuration x 5 identical seeds: only family resampling adds variance, so the SE is
    # the ordinary bootstrap SE of the 8 family means, not that of 40 "independent" rows.
    fam_means = np.arange(8, dtype=float) ** 1.5
    y = np.repeat(fam_means, 5)
    fam = list(np.repeat(np.arange(8), 5))
    res = hierarchical_bootstrap(lambda idx: y[idx].mean(), [fam, fam], n_boot=4000, seed=1)
    analytic = fam_means.std(ddof=0) / np.sqrt(8)
    assert res["se"] == pytest.approx(analytic, rel=0.08)
    naive = y.std(ddof=0) / np.sqrt(40)
    assert res["se"] > 1.8 * naive


def test_resamples_keep_configurations_inside_their_family():
    fam = ["a"] * 6 + ["b"] * 3
    conf = ["a1", "a1", "a1", "a2", "a2", "a2", "b1", "b1", "b1"]
    for idx in hierarchical_indices([fam, conf], n_boot=50, seed=3):
        assert len(idx) % 3 == 0
        for start in range(0, len(idx), 3):  # seeds are drawn within one configuration at a time
            assert len({conf[i] for i in idx[start:start + 3]}) == 1
    assert group_counts([fam, conf]) == {"level_0": 2, "level_1": 3, "rows": 9}
