"""Hierarchical (multi-stage) bootstrap: resample families, then configurations within them, then seeds.

Seeds of one configuration share its architecture, and configurations of one family share most of it, so
the units are nested rather than independent. Resampling each level with replacement inside the level
above (Davison & Hinkley 1997, §3.8; Saravanan et al., "Application of the hierarchical bootstrap to
multi-level data in neuroscience", 2020) keeps that dependence in the interval: the percentile interval of
the statistic over resampled data sets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np


def _tree(levels: Sequence[Sequence]) -> dict:
    """Nested dict: level-0 key -> level-1 key -> ... -> list of row indices."""
    tree: dict = {}
    n = len(levels[0])
    for i in range(n):
        node = tree
        for depth, keys in enumerate(levels):
            last = depth == len(levels) - 1
            node = node.setdefault(keys[i], [] if last else {})
        node.append(i)
    return tree


def _draw(node, rng: np.random.Generator) -> list[int]:
    if isinstance(node, list):  # the rows (seeds) of one configuration
        return [node[j] for j in rng.integers(0, len(node), len(node))]
    keys = list(node)
    return [i for j in rng.integers(0, len(keys), len(keys)) for i in _draw(node[keys[j]], rng)]


def hierarchical_indices(levels: Sequence[Sequence], n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` resampled row-index arrays; ``levels`` are per-row keys, outermost first."""
    tree, rng = _tree(levels), np.random.default_rng(seed)
    return [np.asarray(_draw(tree, rng)) for _ in range(n_boot)]


def hierarchical_bootstrap(statistic: Callable[[np.ndarray], float], levels: Sequence[Sequence],
                           n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile interval of ``statistic(indices)`` over hierarchical resamples (NaN draws are dropped)."""
    draws = np.array([statistic(idx) for idx in hierarchical_indices(levels, n_boot, seed)], float)
    ok = draws[np.isfinite(draws)]
    if not len(ok):
        return {"n_boot": n_boot, "n_valid": 0, "low": None, "high": None, "se": None}
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return {"n_boot": n_boot, "n_valid": int(len(ok)), "low": float(lo), "high": float(hi),
            "se": float(ok.std(ddof=1)) if len(ok) > 1 else None,
            "p_two_sided": float(min(1.0, 2 * min((ok <= 0).mean(), (ok >= 0).mean())))}


def group_counts(levels: Sequence[Sequence]) -> dict:
    """How many units each level has (families, configurations, rows)."""
    seen: dict[int, set] = defaultdict(set)
    for i in range(len(levels[0])):
        for depth in range(len(levels)):
            seen[depth].add(tuple(levels[d][i] for d in range(depth + 1)))
    return {f"level_{d}": len(v) for d, v in seen.items()} | {"rows": len(levels[0])}
