"""The defense table: each intervention configuration against its baseline, per outcome, with CIs.

The effect is the difference of seed means (defense − baseline) with Welch's t interval (unequal variances,
Welch 1947; ``scipy.stats.ttest_ind(equal_var=False)``), since the seeds are the independent replicates of a
configuration. The clean-accuracy cost is the same difference for clean accuracy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def welch_difference(a, b, level: float = 0.95) -> dict:
    """mean(a) − mean(b) with Welch's interval and p-value; NaNs dropped; None when a side has < 2 values."""
    a = np.asarray([v for v in a if v is not None and math.isfinite(v)], float)
    b = np.asarray([v for v in b if v is not None and math.isfinite(v)], float)
    if len(a) < 2 or len(b) < 2:
        return {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else None, "low": None, "high": None,
                "p": None, "n": [len(a), len(b)]}
    if a.std() == 0 and b.std() == 0:
        d = float(a.mean() - b.mean())
        return {"diff": d, "low": d, "high": d, "p": None if d == 0 else 0.0, "n": [len(a), len(b)]}
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(level)
    return {"diff": float(a.mean() - b.mean()), "low": float(ci.low), "high": float(ci.high),
            "p": float(res.pvalue), "n": [len(a), len(b)]}


def defense_table(rows: list[dict], pairs: list[tuple[str, str]], outcomes: list[str]) -> list[dict]:
    """One row per (defense config, baseline config): Welch differences of every outcome."""
    by_config: dict[str, list[dict]] = {}
    for row in rows:
        by_config.setdefault(row["config"], []).append(row)
    table = []
    for defense, baseline in pairs:
        if defense not in by_config or baseline not in by_config:
            continue
        effects = {o: welch_difference([r.get(o) for r in by_config[defense]], [r.get(o) for r in by_config[baseline]])
                   for o in outcomes}
        table.append({"defense": defense, "baseline": baseline, "effects": effects})
    return table
