"""The pre-registered decision rule for the primary test."""

from __future__ import annotations

from regcollide.reports.study.report import verdict


def _primary(r, p, low, high, equivalent=False):
    return {"r": r, "p": p, "skipped": None, "bootstrap": {"low": low, "high": high},
            "equivalence": {"bound": 0.3, "p": 0.01 if equivalent else 0.4, "equivalent": equivalent}}


def test_support_needs_the_test_and_the_bootstrap_interval():
    assert verdict(_primary(-0.4, 0.001, -0.6, -0.2)).startswith("H1 supported")
    assert verdict(_primary(0.4, 0.001, 0.2, 0.6)).startswith("H1 contradicted")
    # significant by the t test, but the hierarchical interval covers 0: not support
    said = verdict(_primary(-0.4, 0.001, -0.7, 0.1))
    assert said.startswith("Inconclusive") and "test rejects" in said and "interval includes 0" in said


def test_no_effect_only_with_equivalence():
    assert verdict(_primary(0.02, 0.8, -0.1, 0.12, equivalent=True)).startswith("No effect")
    assert verdict(_primary(0.02, 0.8, -0.1, 0.12)).startswith("Inconclusive")
    assert verdict({"r": None, "skipped": "constant"}) == "H1 could not be tested."
