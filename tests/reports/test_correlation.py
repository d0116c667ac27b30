"""Correlation study statistics: agreement with scipy.stats, Holm, bootstrap, constant metrics, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from test_leaderboard import fake_entry

from regcollide.commands.correlate import correlate
from regcollide.reports.correlation import bootstrap_ci, correlate_entries, holm
from regcollide.reports.correlation_report import markdown_report


def zoo(n: int = 6) -> list[dict]:
    """n entries: ν rises with the PGD robust accuracy falling (a planted monotone relation), μ constant."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        out.append(fake_entry(f"m{i}", aa=0.5 - 0.48 * i / n + 0.01 * rng.random(), pgd=0.6 - 0.6 * i / n, nu=i,
                              mu=2, nullity=10 + 7 * i + int(5 * rng.random()), first=i % 3,
                              eps_star=0.2 - 0.18 * i / n + 0.01 * rng.random(), steps=float(rng.integers(1, 9)),
                              sigma_ratio=0.05 + 0.1 * rng.random(), cosine=0.3 + 0.5 * rng.random()))
    return out


def _scipy_exact_p(x, y, statistic: str) -> float:
    """Reference: scipy's permutation test over all n! pairings (exact for n! <= n_resamples)."""
    fn = {"spearman": stats.spearmanr, "kendall": stats.kendalltau, "pearson": stats.pearsonr}[statistic]
    res = stats.permutation_test((np.asarray(x, float),), lambda a: fn(a, y).statistic,
                                 permutation_type="pairings", n_resamples=np.inf, vectorized=False)
    return float(res.pvalue)


def _reference_holm(p: list[float]) -> list[float]:
    # Definition: adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j)), sorted ascending.
    m = len(p)
    order = np.argsort(p)
    sorted_adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * np.array(p)[order]))
    out = np.empty(m)
    out[order] = sorted_adj
    return out.tolist()


def test_holm_matches_definition():
    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    assert holm(p) == pytest.approx(_reference_holm(p))
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert all(a >= b for a, b in zip(holm(p), p))


def test_statistics_match_scipy():
    entries = zoo()
    study = correlate_entries(entries, n_boot=500, seed=3)
    tests = {(t.structural, t.ease): t for t in study.tests}
    nu = [e["audit"]["nu"] for e in entries]
    for ease, values in (("pgd_robust_acc", [e["pgd"]["robust_acc"] for e in entries]),
                         ("median_eps_star", [e["pgd"]["median_eps_star"] for e in entries]),
                         ("autoattack_acc", [e["autoattack"]["robust_acc"] for e in entries])):
        t = tests[("nu", ease)]
        assert t.n == 6 and t.skipped is None
        assert t.spearman == pytest.approx(stats.spearmanr(nu, values).statistic, abs=1e-12)
        assert t.kendall == pytest.approx(stats.kendalltau(nu, values).statistic, abs=1e-12)
        assert t.pearson == pytest.approx(stats.pearsonr(nu, values).statistic, abs=1e-12)
        # p-values are exact permutation p-values at n = 6 (all 720 pairings); they used to be scipy's
        # asymptotic ones, which at n = 6 gave p ≈ 0 for ρ = -1. Reference: scipy.stats.permutation_test.
        assert t.p_method.startswith("exact (all 720")
        for stat in ("spearman", "kendall", "pearson"):
            assert getattr(t, f"{stat}_p") == pytest.approx(_scipy_exact_p(nu, values, stat), rel=1e-12)
        # Pearson's normal-theory p is kept alongside, for comparison.
        assert t.pearson_p_normal == pytest.approx(stats.pearsonr(nu, values).pvalue, rel=1e-9)
    # The planted relation is perfectly monotone: ρ = -1 for ν against PGD robust accuracy, and its exact
    # p-value is the smallest a two-sided test on 6 models can give, 2/6! (never 0).
    assert tests[("nu", "pgd_robust_acc")].spearman == pytest.approx(-1.0)
    assert tests[("nu", "pgd_robust_acc")].spearman_p == pytest.approx(2 / 720)

    computed = [t for t in study.tests if t.skipped is None]
    for stat in ("spearman", "kendall", "pearson"):
        raw = [getattr(t, f"{stat}_p") for t in computed]
        assert [getattr(t, f"{stat}_p_holm") for t in computed] == pytest.approx(_reference_holm(raw))
    assert all(t.significant == (t.spearman_p_holm < 0.05) for t in computed)


def test_constant_metrics_reported_not_correlated():
    study = correlate_entries(zoo(), n_boot=200)
    assert study.constant["mu"] == 2.0
    mu_tests = [t for t in study.tests if t.structural == "mu"]
    assert mu_tests and all(t.skipped and "constant" in t.skipped and t.spearman is None for t in mu_tests)


def test_bootstrap_ci_seeded_and_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + 0.5 * rng.normal(size=12)
    a = bootstrap_ci(x, y, "spearman", 400, np.random.default_rng(7))
    b = bootstrap_ci(x, y, "spearman", 400, np.random.default_rng(7))
    assert a == b and a[0] < stats.spearmanr(x, y).statistic < a[1]
    # Reference: the same resamples scored one by one with scipy.
    idx = np.random.default_rng(7).integers(0, 12, size=(400, 12))
    ref = [stats.spearmanr(x[i], y[i]).statistic for i in idx]
    ref = np.array([r for r in ref if np.isfinite(r)])
    assert a == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])), abs=1e-9)
    for stat, fn in (("pearson", stats.pearsonr), ("kendall", stats.kendalltau)):
        # Ties included (rounding), so the vectorized τ-b must handle them like scipy.
        xr, yr = np.round(x, 1), np.round(y, 1)
        got = bootstrap_ci(xr, yr, stat, 300, np.random.default_rng(1))
        idx = np.random.default_rng(1).integers(0, 12, size=(300, 12))
        ref = np.array([fn(xr[i], yr[i]).statistic for i in idx])
        assert got == pytest.approx(tuple(np.percentile(ref[np.isfinite(ref)], [2.5, 97.5])), abs=1e-9)


def test_report_outputs_and_cli(tmp_path):
    # Ten models: with exact permutation p-values, six cannot give a Holm-significant result across 28 tests
    # (smallest p = 2/720, times 28 = 0.078), and this test checks the wording of significant findings.
    entries = zoo(10)
    src = tmp_path / "entries"
    src.mkdir()
    for e in entries:
        (src / f"{e['name']}.json").write_text(json.dumps(e))
    out = tmp_path / "cli"
    result = CliRunner().invoke(correlate, [str(src), "--out", str(out), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    for name in ("report.md", "scatter.png", "correlations.csv", "correlations.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "correlations.json").read_text())
    assert saved["n_models"] == 10 and len(saved["tests"]) == 9 * 4

    report = (out / "report.md").read_text()
    study = correlate_entries(entries, n_boot=200)
    significant = [t for t in study.tests if t.significant]
    assert significant
    # The report names every significant pair in plain words and says how many there are.
    assert f"{len(significant)} of {sum(t.skipped is None for t in study.tests)} correlations" in report
    assert "higher ν goes with smaller PGD robust acc" in report
    assert "μ = 2" in report and "no correlation can be computed" in report
    assert report == markdown_report(study)


def test_too_few_entries_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        correlate_entries(zoo()[:2])
    src = tmp_path / "two"
    src.mkdir()
    for e in zoo()[:2]:
        (src / f"{e['name']}.json").write_text(json.dumps(e))
    result = CliRunner().invoke(correlate, [str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "at least 3" in result.output
