"""Acceptance of the committed study: the primary and secondary statistics of docs/study/analysis.json are
recomputed here from the raw entry files with numpy and scipy only, by a different algebra than the report's
(partial correlation from the inverse covariance matrix of the ranks and indicators, instead of
least-squares residuals; Holm's step-down written out), and must match within 1e-9 (ρ) and 1e-6 relative (p).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from regcollide.reports.study.report import write_report

STUDY = Path(__file__).resolve().parents[2] / "docs" / "study"
STRUCTURE = ("first_nullity", "nu_frac", "mu_frac", "total_nullity", "mean_sigma_ratio")
OUTCOMES = ("pgd_eps_star", "fab_eps_star", "robust_0.1", "robust_0.3", "polytope_ratio", "nullspace_valid")


def _value(entry: dict, key: str) -> float | None:
    """One variable read straight from an entry's JSON (None where the measurement does not apply)."""
    out = entry["outcomes"]
    if key in STRUCTURE:
        v = out["structure"][key]
    elif key == "pgd_eps_star":
        v = out["pgd"]["0.1"]["median_eps_star"]
    elif key == "fab_eps_star":
        v = out["fab"]["median_eps_star"]
    elif key.startswith("robust_"):
        v = out["pgd"][key.split("_")[1]]["robust_acc"]
    elif key == "polytope_ratio":
        v = (out["polytope"]["value"] or {}).get("distance_ratio")
    elif key == "nullspace_valid":
        ns = out["nullspace"]["value"]
        v = ns["valid_count"] / ns["n"] if ns and ns.get("n") else None
    elif key == "clean_acc":
        v = out["pgd"]["0.1"]["clean_acc"]
    else:  # log parameter count
        v = math.log(out["structure"]["n_params"])
    return float(v) if v is not None and math.isfinite(v) else None


def independent_partial(entries: list[dict], x: str, y: str) -> tuple[float, float, int] | None:
    """(ρ, p, n) of the partial Spearman of x and y given ranked clean accuracy and log parameters and the
    family indicators; None when nothing varies (a variable constant, or fully explained by the covariates)."""
    keys = (x, y, "clean_acc", "log_params")
    use = [e for e in entries if all(_value(e, k) is not None for k in keys)]
    if len(use) < 8 or any(len({_value(e, k) for e in use}) < 2 for k in (x, y)):
        return None
    ranks = [stats.rankdata([_value(e, k) for e in use]) for k in keys]
    fams = sorted({e["job"]["family"] for e in use})
    dummies = [np.array([e["job"]["family"] == f for e in use], float) for f in fams[1:]]
    data = np.column_stack(ranks + dummies)  # (n, 2 + k)
    k = data.shape[1] - 2
    corr = np.corrcoef(data, rowvar=False)
    if np.linalg.cond(corr) > 1e10:  # a variable explained exactly by the others: nothing left to correlate
        return None
    prec = np.linalg.inv(corr)
    r = float(-prec[0, 1] / math.sqrt(prec[0, 0] * prec[1, 1]))
    dof = len(use) - 2 - k
    p = float(2 * stats.t.sf(abs(r) * math.sqrt(dof / (1 - r * r)), dof))
    return r, p, len(use)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), written out."""
    order = np.argsort(pvalues)
    m, out, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[idx]))
        out[idx] = running
    return out


@pytest.fixture(scope="module")
def committed():
    entries = [json.loads(p.read_text()) for p in sorted((STUDY / "entries").glob("*.json"))]
    analysis = json.loads((STUDY / "analysis.json").read_text())["analysis"]
    return entries, analysis


def test_primary_statistic_matches_an_independent_computation(committed):
    entries, analysis = committed
    p = analysis["primary"]
    r, pval, n = independent_partial(entries, "first_nullity", "pgd_eps_star")
    assert n == p["n"] == len(entries)
    assert p["r"] == pytest.approx(r, abs=1e-9) and p["p"] == pytest.approx(pval, rel=1e-6)
    # TOST with the pre-registered bound: Fisher z with the Bonett-Wright Spearman standard error
    se = math.sqrt((1 + r * r / 2) / (n - 3 - p["covariates"]))
    z = math.atanh(r)
    tost = max(stats.norm.sf((z + math.atanh(0.3)) / se), stats.norm.cdf((z - math.atanh(0.3)) / se))
    assert p["equivalence"]["bound"] == 0.3 and p["equivalence"]["p"] == pytest.approx(tost, rel=1e-6)


def test_secondary_statistics_and_holm_match_an_independent_computation(committed):
    entries, analysis = committed
    reported = {(t["structural"], t["outcome"]): t for t in analysis["secondary"]}
    pairs = [(s, o) for s in STRUCTURE for o in OUTCOMES if (s, o) != ("first_nullity", "pgd_eps_star")]
    assert sorted(reported) == sorted(pairs)
    mine = {pair: independent_partial(entries, *pair) for pair in pairs}
    done = [pair for pair in pairs if mine[pair] is not None]
    assert len(done) >= 10  # most secondary tests are computable in the committed study
    for pair in pairs:
        t = reported[pair]
        if mine[pair] is None:
            assert t["r"] is None or not math.isfinite(t["r"]), pair
            continue
        r, pval, n = mine[pair]
        assert (t["n"], t["r"]) == (n, pytest.approx(r, abs=1e-9)) and t["p"] == pytest.approx(pval, rel=1e-6), pair
    for pair, adjusted in zip(done, holm([mine[pair][1] for pair in done])):
        assert reported[pair]["p_holm"] == pytest.approx(adjusted, rel=1e-6), pair
        assert reported[pair]["significant"] == (adjusted < 0.05), pair


def test_report_only_recomputes_the_committed_report_byte_for_byte(tmp_path):
    # what `eval/study/run.py --report-only` does (its default --n-boot is 1000), into a scratch folder
    write_report(STUDY / "entries", tmp_path, n_boot=1000)
    for name in ("report.md", "analysis.json"):
        assert (tmp_path / name).read_bytes() == (STUDY / name).read_bytes(), name
