"""Study figures: dose-response per intervention (seed mean with a t interval) and the primary scatter."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from regcollide.reports.study.table import LABELS  # noqa: E402

# The structural quantity each family is meant to move (what its audit panel shows).
TARGETS = {"width": "first_nullity", "proj": "first_nullity", "rank": "second_rank", "pm": "first_nullity",
           "singular": "mean_sigma_ratio", "decorrelation": "mean_max_cosine", "distill": "first_nullity",
           "pgd_at": "first_nullity", "trades": "first_nullity"}
PANELS = ("pgd_eps_star", "fab_eps_star", "robust_0.1", "clean_acc")


def seed_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval over seeds; a single seed gives a zero-width interval."""
    v = np.asarray([x for x in values if x is not None], float)
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    if len(v) < 2:
        return float(v[0]), float(v[0]), float(v[0])
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[tuple[float, float, float]]]:
    levels = sorted({r["level"] for r in rows})
    return levels, [seed_interval([r.get(key) for r in rows if r["level"] == lv]) for lv in levels]


def dose_response(rows: list[dict], path: Path) -> Path:
    """One row of panels per family with ≥ 2 levels: audited target, then the outcomes, against the level."""
    families = [f for f in sorted({r["family"] for r in rows})
                if len({r["level"] for r in rows if r["family"] == f}) > 1]
    cols = 1 + len(PANELS)
    fig, axes = plt.subplots(max(len(families), 1), cols, figsize=(3.2 * cols, 2.6 * max(len(families), 1)),
                             squeeze=False)
    for i, fam in enumerate(families):
        sub = [r for r in rows if r["family"] == fam]
        for j, key in enumerate((TARGETS.get(fam, "first_nullity"), *PANELS)):
            levels, ci = _series(sub, key)
            mean = [c[0] for c in ci]
            err = np.array([[c[0] - c[1] for c in ci], [c[2] - c[0] for c in ci]])
            ax = axes[i][j]
            ax.errorbar(levels, mean, yerr=err, marker="o", capsize=3, color="C0" if j else "C3")
            ax.set_title(f"{fam}: {LABELS.get(key, key)}" + (" (audit)" if j == 0 else ""), fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(families) - 1:
                ax.set_xlabel("level", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def primary_scatter(rows: list[dict], x: str, y: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for k, fam in enumerate(sorted({r["family"] for r in rows})):
        pts = [(r[x], r[y]) for r in rows if r["family"] == fam and r.get(x) is not None and r.get(y) is not None]
        if pts:
            # 10 colours × 2 markers: up to 20 families stay distinguishable
            ax.scatter(*zip(*pts), s=16, label=fam, color=f"C{k % 10}", marker="os"[k // 10 % 2], alpha=0.8)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
