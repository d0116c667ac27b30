"""Honest small-sample statistics: permutation p-values (exact and Monte Carlo) against scipy, the minimum
n below which nothing is concluded, the Pearson influence check, and threat models kept apart."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from test_correlation import zoo
from test_leaderboard import fake_entry
from test_leaderboard_threats import _study_entries

from regcollide.commands.correlate import correlate
from regcollide.reports.correlation import MIN_N, correlate_entries
from regcollide.reports.correlation_report import markdown_report
from regcollide.reports.correlation_stats import most_influential, permutation_pvalues
from regcollide.reports.entries import MixedThreatModelsError, load_entries


def _write(folder, entries):
    folder.mkdir(parents=True, exist_ok=True)
    for e in entries:
        (folder / f"{e['name']}.json").write_text(json.dumps(e))
    return folder


def test_three_entries_are_not_significant_and_p_is_never_zero(tmp_path):
    # Issue case: 3 entries used to give ρ = -1, p = 0, "significant".
    entries = zoo(3)
    study = correlate_entries(entries, n_boot=200)
    t = next(t for t in study.tests if (t.structural, t.ease) == ("nu", "pgd_robust_acc"))
    assert t.spearman == pytest.approx(-1.0)
    assert t.spearman_p == pytest.approx(2 / math.factorial(3))   # exact: 2 of the 6 pairings are as extreme
    assert all(getattr(u, f"{s}_p") > 0 for u in study.tests if u.skipped is None
               for s in ("spearman", "kendall", "pearson"))
    assert not study.conclusive and not any(u.significant or u.pearson_significant for u in study.tests)
    assert all(u.inconclusive for u in study.tests)

    result = CliRunner().invoke(correlate, [str(_write(tmp_path / "e", entries)), "--out", str(tmp_path / "o"),
                                            "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    assert "nothing can be concluded" in result.output and "significant after Holm" not in result.output
    report = (tmp_path / "o" / "report.md").read_text()
    assert "Nothing can be concluded from 3 models" in report and "2/3! = 0.33" in report
    assert "are significant after Holm correction:" not in report


def test_minimum_n_is_per_test():
    assert MIN_N == 6
    entries = zoo(7)
    for e in entries[:2]:
        e["pgd"]["median_eps_star"] = None   # only 5 models have median ε*
    study = correlate_entries(entries, n_boot=200)
    by_pair = {(t.structural, t.ease): t for t in study.tests}
    short, full = by_pair[("nu", "median_eps_star")], by_pair[("nu", "pgd_robust_acc")]
    assert short.n == 5 and short.inconclusive and not short.significant and short.skipped is None
    assert full.n == 7 and not full.inconclusive and study.conclusive


@pytest.mark.parametrize("n", [4, 6])
def test_exact_p_values_match_scipy_permutation_test_with_ties(n):
    rng = np.random.default_rng(n)
    x = np.round(rng.normal(size=n), 0)          # ties on purpose
    y = np.round(x + rng.normal(size=n), 1)
    got, method = permutation_pvalues(x, y, np.random.default_rng(0))
    assert method == f"exact (all {math.factorial(n):,} pairings)"
    for name, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau), ("pearson", stats.pearsonr)):
        ref = stats.permutation_test((x,), lambda a: fn(a, y).statistic, permutation_type="pairings",
                                     n_resamples=np.inf, vectorized=False).pvalue
        assert got[name] == pytest.approx(ref, rel=1e-12), name


def test_monte_carlo_p_values_agree_with_exact_kendall_within_sampling_error():
    # Above 8 models: 9999 random pairings, (b+1)/(m+1). Reference: scipy's exact Kendall null (no ties).
    rng = np.random.default_rng(3)
    for trial in range(3):
        x = rng.permutation(14).astype(float)
        y = x + rng.normal(scale=6.0, size=14)
        got, method = permutation_pvalues(x, y, np.random.default_rng(trial))
        assert method.startswith("Monte Carlo (9,999")
        exact = stats.kendalltau(x, y, method="exact").pvalue
        # Tolerance: 4 standard errors of a binomial proportion at m = 9999 (doubled for two-sided), plus
        # the +1 of the estimator.
        se = 2 * math.sqrt(max(exact, 1e-4) * (1 - min(exact, 0.999)) / 2 / 9999)
        assert abs(got["kendall"] - exact) <= 4 * se + 2 / 10000, (got["kendall"], exact)
    # A perfect relation on 12 models: the estimator's floor is 2/(m+1), never 0.
    x = np.arange(12.0)
    got, _ = permutation_pvalues(x, x, np.random.default_rng(0), n_permutations=999)
    assert got["spearman"] == pytest.approx(2 / 1000)


def test_outlier_driven_pearson_is_flagged_with_the_driving_models():
    # 18 unrelated models plus 2 far-out ones that create a Pearson correlation by themselves (like the
    # study's two ViT points): Holm-significant with normal-theory p, gone without them.
    rng = np.random.default_rng(5)
    entries = []
    for i in range(20):
        far = i >= 18
        e = fake_entry(f"{'far' if far else 'm'}{i}", aa=0.3 + 0.01 * rng.random(), pgd=0.4, nu=i % 4, mu=2,
                       eps_star=(0.9 + 0.05 * (i - 18)) if far else 0.1 + 0.02 * rng.random())
        e["audit"]["nu_frac"] = (5.0 + (i - 18)) if far else float(rng.random())
        entries.append(e)
    study = correlate_entries(entries, n_boot=200, n_permutations=999)
    t = next(t for t in study.tests if (t.structural, t.ease) == ("nu_frac", "median_eps_star"))
    assert t.pearson > 0.8 and t.influence_p is not None
    assert sorted(t.influential) == ["far18", "far19"]
    assert t.pearson_survives_without == [False, False]
    assert abs(t.pearson_without[-1]) < 0.6
    report = markdown_report(study, None)
    assert "lose significance; the models that drive them: far18, far19" in report


def test_genuine_linear_relation_survives_the_influence_check():
    x = np.linspace(0, 1, 20)
    entries = []
    for i, v in enumerate(x):
        e = fake_entry(f"m{i}", aa=0.3, pgd=0.4, eps_star=0.1 + 0.5 * v + 0.01 * np.sin(7 * i))
        e["audit"]["nu_frac"] = float(v)
        entries.append(e)
    study = correlate_entries(entries, n_boot=200, n_permutations=999)
    t = next(t for t in study.tests if (t.structural, t.ease) == ("nu_frac", "median_eps_star"))
    assert t.pearson_significant and t.influence_p == "permutation"
    assert t.pearson_survives_without == [True, True]


def test_most_influential_point_matches_brute_force_leave_one_out():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=9), rng.normal(size=9)
    x[4], y[4] = 6.0, 6.0
    full = stats.pearsonr(x, y).statistic
    brute = max(range(9), key=lambda i: abs(full - stats.pearsonr(np.delete(x, i), np.delete(y, i)).statistic))
    assert most_influential(x, y) == brute == 4


def test_mixed_threat_models_refused_or_split(tmp_path):
    entries = zoo(6) + [fake_entry(f"big{i}", aa=0.1 * i, pgd=0.1 * i + 0.05, nu=i) for i in range(3)]
    for e in entries[6:]:
        e["pgd"]["eps"] = 0.3
    with pytest.raises(MixedThreatModelsError, match="ε = 0.1: 6 entries; mnist5k, linf, ε = 0.3: 3"):
        correlate_entries(entries)
    src = _write(tmp_path / "e", entries)
    refused = CliRunner().invoke(correlate, [str(src), "--out", str(tmp_path / "o"), "--n-boot", "200"])
    assert refused.exit_code != 0 and "--per-threat-model" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert not (tmp_path / "o").exists()

    split = CliRunner().invoke(correlate, [str(src), "--out", str(tmp_path / "o"), "--n-boot", "200",
                                           "--per-threat-model"])
    assert split.exit_code == 0, split.output
    small = json.loads((tmp_path / "o" / "mnist5k-linf-eps0.3" / "correlations.json").read_text())
    big = json.loads((tmp_path / "o" / "mnist5k-linf-eps0.1" / "correlations.json").read_text())
    assert (small["n_models"], big["n_models"]) == (3, 6)
    assert sorted(small["names"]) == ["big0", "big1", "big2"]


def test_malformed_entry_is_one_line_and_the_others_are_used(tmp_path):
    src = _write(tmp_path / "e", zoo(6))
    bad = fake_entry("bad", aa=0.2, pgd=0.3)
    bad["pgd"]["robust_acc"] = "0.3"
    (src / "bad.json").write_text(json.dumps(bad))
    runner = CliRunner()
    result = runner.invoke(correlate, [str(src), "--out", str(tmp_path / "o"), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and "bad.json" in skipped[0] and "'pgd.robust_acc' must be a finite number" in skipped[0]
    assert json.loads((tmp_path / "o" / "correlations.json").read_text())["n_models"] == 6


def test_study_pearson_findings_are_driven_by_the_two_vit_models():
    # The claim in docs/reports.md, on the committed study entries: Pearson tests that survive Holm do so
    # only with normal-theory p-values, and each loses significance without the two ViT models.
    study = correlate_entries(load_entries(_study_entries()), n_boot=100)
    checked = [t for t in study.tests if t.influence_p]
    assert len(checked) == 4 and all(t.influence_p == "normal" for t in checked)
    assert not any(t.pearson_significant for t in study.tests)
    assert all(sorted(t.influential) == ["vit-w0.5", "vit-w1"] and not any(t.pearson_survives_without)
               for t in checked)
    report = markdown_report(study, None)
    assert ("4 Pearson tests survive Holm with normal-theory p-values (which assume bivariate normality) and 0 "
            "with permutation p-values") in report
    assert "the models that drive them: vit-w0.5, vit-w1" in report


def test_hostile_model_names_do_not_break_the_plot_or_csv(tmp_path):
    entries = zoo(6)
    for e, model in zip(entries, ["$\\frac{$", "=HYPERLINK()", "a|b\nc", "mlp", "mlp", "cnn"]):
        e["model"] = model
    entries[0]["name"] = "=cmd"
    src = _write(tmp_path / "e", entries)
    result = CliRunner().invoke(correlate, [str(src), "--out", str(tmp_path / "o"), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "o" / "correlations.json").read_text())
    assert saved["names"][0] == "=cmd"   # JSON keeps the raw text; only CSV cells are neutralized
