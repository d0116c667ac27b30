"""The pre-registered analysis (docs/study/preregistration.md) of the study's rows.

Primary test: partial Spearman between nullity(W1) and median PGD ε*, controlling for clean accuracy and
log parameter count, within architecture family (family indicator columns), over trained models; its
interval from the hierarchical bootstrap (families → configurations → seeds); the mixed-effects slope with a
random intercept per family; and, when not significant, the TOST equivalence test with bound δ = 0.3.
Secondary tests: every other (structure, outcome) pair of ``table.STRUCTURAL`` × ``table.OUTCOMES``, Holm
corrected. Sensitivity: the primary test on configuration means (seeds averaged).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from regcollide.reports.study.bootstrap import group_counts, hierarchical_bootstrap
from regcollide.reports.study.claims import claims_table
from regcollide.reports.study.correlation import partial_spearman, tost_correlation
from regcollide.reports.study.defense import defense_table
from regcollide.reports.study.mixed import mixed_effects
from regcollide.reports.study.power import detectable_rho, power_at, required_n
from regcollide.reports.study.table import COVARIATES, EXPLORATORY_OUTCOMES, OUTCOMES, STRUCTURAL, config_means

PRIMARY = ("first_nullity", "pgd_eps_star")
EQUIVALENCE_BOUND = 0.3
VIT_REFERENCE = "vit-p4-"  # + embedding dimension: the injective-patch ViT each patch-7 ViT is compared with
ALPHA = 0.05
DEFENSE_OUTCOMES = ("clean_acc", "pgd_eps_star", "fab_eps_star", "robust_0.1", "robust_0.3", "aa_robust_0.3",
                    "polytope_ratio", "nullspace_valid", "first_nullity", "mean_sigma_ratio", "mean_max_cosine")


def _complete(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    return [r for r in rows if all(r.get(k) is not None for k in keys)]


def _partial(rows: list[dict], x: str, y: str, fixed_family: bool = True):
    xs = np.array([r[x] for r in rows], float)
    cov = np.array([[r[c] for c in COVARIATES] for r in rows], float)
    return partial_spearman(xs, [r[y] for r in rows], cov, [r["family"] for r in rows] if fixed_family else None)


def test_pair(rows: list[dict], x: str, y: str, n_boot: int = 0, seed: int = 0) -> dict:
    """Partial Spearman of (x, y) plus, if ``n_boot``, its hierarchical bootstrap interval and MixedLM slope."""
    use = _complete(rows, (x, y, *COVARIATES))
    out = {"structural": x, "outcome": y, "n": len(use)}
    if len(use) < len(COVARIATES) + 6 or len({r[x] for r in use}) < 2 or len({r[y] for r in use}) < 2:
        return out | {"r": None, "p": None, "skipped": "too few models or a constant variable"}
    try:
        res = _partial(use, x, y)
    except ValueError as err:
        return out | {"r": None, "p": None, "skipped": str(err)}
    out |= res.to_dict() | {"skipped": None if math.isfinite(res.r) else "no variation left within families"}
    if n_boot and out["skipped"] is None:
        def stat(idx: np.ndarray) -> float:
            sub = [use[i] for i in idx]
            try:
                return _partial(sub, x, y).r
            except ValueError:
                return float("nan")
        levels = ([r["family"] for r in use], [r["config"] for r in use])
        out["bootstrap"] = hierarchical_bootstrap(stat, levels, n_boot=n_boot, seed=seed)
        out["units"] = group_counts(levels)
        out["mixed"] = mixed_effects([r[y] for r in use], [r[x] for r in use], [r["family"] for r in use],
                                     [[r[c] for c in COVARIATES] for r in use])
    return out


def primary(rows: list[dict], n_boot: int) -> dict:
    res = test_pair(rows, *PRIMARY, n_boot=n_boot)
    if res.get("r") is not None and math.isfinite(res["r"]):
        res["equivalence"] = tost_correlation(res["r"], res["n"], res["covariates"], EQUIVALENCE_BOUND, ALPHA)
        res["power_at_0.3"] = power_at(res["n"], 0.3, ALPHA, res["covariates"], spearman=True)
    means = config_means(rows, PRIMARY + COVARIATES)
    res["config_level"] = test_pair([m | {"config": m["config"]} for m in means], *PRIMARY)
    return res


def secondary(rows: list[dict], outcomes: tuple[str, ...] = OUTCOMES) -> list[dict]:
    """Partial Spearman of every (structure, outcome) pair but the primary, Holm-corrected together."""
    tests = [test_pair(rows, s, o) for s in STRUCTURAL for o in outcomes if (s, o) != PRIMARY]
    done = [t for t in tests if t.get("p") is not None and math.isfinite(t["p"])]
    if done:
        reject, p_holm, *_ = multipletests([t["p"] for t in done], alpha=ALPHA, method="holm")
        for t, rej, ph in zip(done, reject, p_holm):
            t["p_holm"], t["significant"] = float(ph), bool(rej)
    return tests


def dose_tests(rows: list[dict], outcome: str = "pgd_eps_star") -> list[dict]:
    """Exploratory: Spearman of each family's level against ``outcome`` over its models (one family each)."""
    out = []
    for fam in sorted({r["family"] for r in rows}):
        sub = [r for r in rows if r["family"] == fam and r.get(outcome) is not None]
        if len({r["level"] for r in sub}) < 2 or len({r[outcome] for r in sub}) < 2:
            continue
        res = stats.spearmanr([r["level"] for r in sub], [r[outcome] for r in sub])
        out.append({"family": fam, "outcome": outcome, "n": len(sub), "levels": len({r["level"] for r in sub}),
                    "rho": float(res.statistic), "p": float(res.pvalue)})
    return out


def defense_pairs(rows: list[dict], baseline: str) -> list[tuple[str, str]]:
    """(configuration, its comparison): the MLP baseline, except for the ViTs, where patch 7 is compared
    with patch 4 at the same embedding dimension (the same parameter count)."""
    configs = sorted({r["config"] for r in rows if r["config"] != baseline})
    pairs = []
    for c in configs:
        if c.startswith(VIT_REFERENCE[:4]):
            reference = VIT_REFERENCE + c.rsplit("-", 1)[1]
            if reference != c and any(r["config"] == reference for r in rows):
                pairs.append((c, reference))
        else:
            pairs.append((c, baseline))
    return pairs


def analyze(rows: list[dict], n_boot: int = 1000, baseline: str = "width-256") -> dict:
    """Everything the report states, as plain data (written to docs/study/analysis.json)."""
    n_configs = len({r["config"] for r in rows})
    k = len(COVARIATES) + len({r["family"] for r in rows}) - 1
    power = {"formula": "n = ceil((1 + rho^2/2) * ((z_{1-a/2} + z_{1-b}) / atanh(rho))^2 + 3 + k)",
             "n_pearson_rho0.3": required_n(0.3), "n_spearman_rho0.3": required_n(0.3, spearman=True),
             "n_partial_spearman_rho0.3": required_n(0.3, covariates=k, spearman=True), "covariate_columns": k,
             "n_models": len(rows), "n_configs": n_configs,
             "power_models_rho0.3": power_at(len(rows), 0.3, covariates=k, spearman=True),
             "power_configs_rho0.3": power_at(n_configs, 0.3, covariates=k, spearman=True)
             if n_configs > k + 3 else None,
             "detectable_rho_models": detectable_rho(len(rows), covariates=k, spearman=True),
             "detectable_rho_configs": detectable_rho(n_configs, covariates=k, spearman=True)
             if n_configs > k + 3 else None}
    return {"n_models": len(rows), "n_configs": n_configs, "families": sorted({r["family"] for r in rows}),
            "power": power, "primary": primary(rows, n_boot), "secondary": secondary(rows),
            "exploratory": secondary(rows, EXPLORATORY_OUTCOMES), "dose": dose_tests(rows),
            "defense": defense_table(rows, defense_pairs(rows, baseline), list(DEFENSE_OUTCOMES)),
            "claims": claims_table(rows),
            "baseline": baseline, "equivalence_bound": EQUIVALENCE_BOUND, "alpha": ALPHA}
