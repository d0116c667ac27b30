"""Linear mixed-effects model with a random intercept per architecture family (statsmodels MixedLM).

    y_ij = β0 + β1 x_ij + γᵀ c_ij + u_j + ε_ij,    u_j ~ N(0, τ²),  ε_ij ~ N(0, σ²)

fitted by REML (Laird & Ware 1982; statsmodels ``MixedLM``). x and y are standardized first, so β1 is in
standard deviations of y per standard deviation of x, comparable across structural quantities.
"""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning


def _z(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else v * 0.0


def mixed_effects(y, x, groups, covariates=None) -> dict:
    """β1 (standardized), its standard error, 95% Wald interval and p-value; τ² and σ²."""
    y, x = _z(np.asarray(y, float)), _z(np.asarray(x, float))
    cols = [np.ones(len(y)), x]
    if covariates is not None:
        cov = np.asarray(covariates, float).reshape(len(y), -1)
        cols += [_z(cov[:, j]) for j in range(cov.shape[1])]
    exog = np.column_stack(cols)
    if np.allclose(x, 0):
        return {"beta": None, "reason": "the structural quantity is constant"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fit = sm.MixedLM(y, exog, groups=np.asarray([str(g) for g in groups])).fit(reml=True)
    ci = fit.conf_int()[1]
    return {"beta": float(fit.params[1]), "se": float(fit.bse[1]), "ci_low": float(ci[0]),
            "ci_high": float(ci[1]), "p": float(fit.pvalues[1]), "group_var": float(np.asarray(fit.cov_re)[0, 0]),
            "resid_var": float(fit.scale), "n": int(len(y)), "groups": int(len(set(map(str, groups)))),
            "converged": bool(fit.converged) and not any(issubclass(w.category, ConvergenceWarning)
                                                          for w in caught)}
