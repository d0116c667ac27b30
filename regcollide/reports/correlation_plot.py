"""Scatter-plot grid of a correlation study: one panel per (structural metric, PGD-ease metric) pair,
titled with Spearman ρ (Holm-significant panels in red), points coloured by model family."""

from __future__ import annotations

from pathlib import Path

from regcollide.reports.correlation import EASE, STRUCTURAL, CorrelationStudy
from regcollide.reports.correlation import metric_label as _label


def scatter_grid(study: CorrelationStudy, path: str | Path, groups: list[str] | None = None) -> Path:
    """One panel per (structural, ease) pair of non-constant metrics; points coloured by ``groups``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in STRUCTURAL if s not in study.constant and any(v is not None for v in study.values[s])]
    cols = [e for e in EASE if e not in study.constant and any(v is not None for v in study.values[e])]
    rows, cols = rows or list(STRUCTURAL)[:1], cols or list(EASE)[:1]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.0 * len(cols), 2.4 * len(rows)), squeeze=False)
    groups = groups or ["model"] * study.n_models
    palette = {g: plt.cm.tab10(i % 10) for i, g in enumerate(sorted(set(groups)))}
    tests = {(t.structural, t.ease): t for t in study.tests}
    for i, s in enumerate(rows):
        for j, e in enumerate(cols):
            ax = axes[i][j]
            for g, color in palette.items():
                pts = [(x, y) for x, y, gg in zip(study.values[s], study.values[e], groups)
                       if gg == g and x is not None and y is not None]
                if pts:
                    # "$" would start matplotlib mathtext: a model name is text, never math.
                    ax.scatter(*zip(*pts), s=14, color=color, label=g.replace("$", r"\$"))
            t = tests[(s, e)]
            title = t.skipped[:28] if t.skipped else f"ρ={t.spearman:+.2f}" + (" *" if t.significant else "")
            ax.set_title(title, fontsize=8, color="crimson" if t.significant else "black")
            ax.tick_params(labelsize=6)
            # Rows share the structural metric (x), columns the ease metric (y): label both on every panel.
            ax.set_xlabel(_label(s), fontsize=7)
            ax.set_ylabel(_label(e), fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(palette) > 1 and handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8)
    # Fixed margins instead of tight_layout: the grid is regular, and tight_layout costs a full extra draw.
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.05, top=0.95, wspace=0.35, hspace=0.6)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
