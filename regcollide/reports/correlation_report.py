"""Write a :class:`~regcollide.reports.correlation.CorrelationStudy` as a plain-words Markdown report, a CSV/JSON of
every test and a scatter-plot grid (structural metric × PGD-ease metric)."""

from __future__ import annotations

import csv
from pathlib import Path

from regcollide.io import write_json
from regcollide.reports.correlation import EASE, STRUCTURAL, CorrelationStudy, CorrelationTest


def _label(name: str) -> str:
    return STRUCTURAL[name][0] if name in STRUCTURAL else EASE[name][0]


def _fmt(v: float | None, spec: str = "+.2f") -> str:
    return "–" if v is None else format(v, spec)


def _ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def describe(t: CorrelationTest) -> str:
    """One sentence for a computed test, e.g. 'more ν goes with smaller median ε* (ρ = -0.71, ...)'."""
    direction = "larger" if t.spearman > 0 else "smaller"
    meaning = EASE[t.ease][2]
    return (f"higher {_label(t.structural)} goes with {direction} {_label(t.ease)} "
            f"(Spearman ρ = {t.spearman:+.2f}, 95% CI {_ci(t.spearman_ci)}, Holm-adjusted p = "
            f"{_p(t.spearman_p_holm)}, n = {t.n}); a larger {_label(t.ease)} means {meaning}")


def markdown_report(study: CorrelationStudy, scatter_name: str | None = "scatter.png") -> str:
    computed = [t for t in study.tests if t.skipped is None]
    significant = sorted((t for t in computed if t.significant), key=lambda t: t.spearman_p_holm)
    lines = [
        "# Do ν, μ and nullity predict how easily PGD succeeds?", "",
        (f"{study.n_models} models; {len(study.tests)} structural × PGD-ease pairs, {len(computed)} computable. "
        f"Primary statistic: Spearman ρ, Holm-corrected across the {len(computed)} computable pairs at "
        f"α = {study.alpha}. Kendall τ and Pearson r are each Holm-corrected the same way. 95% confidence "
        f"intervals: percentile bootstrap over models ({study.n_boot} resamples, seed {study.seed})."), "",
        "## Finding", "",
    ]
    if significant:
        lines.append(f"{len(significant)} of {len(computed)} correlations are significant after Holm "
                     "correction:")
        lines += [f"- {describe(t)}." for t in significant]
    else:
        lines.append(f"None of the {len(computed)} computable correlations is significant after Holm "
                     f"correction at α = {study.alpha}.")
    not_sig = [t for t in computed if not t.significant]
    if not_sig:
        strongest = sorted(not_sig, key=lambda t: -abs(t.spearman))[:3]
        lines += ["", f"Not significant after correction: {len(not_sig)} pairs. The strongest of them:"]
        lines += [f"- {describe(t)}." for t in strongest]
    nominal = [t for t in not_sig if t.spearman_p < study.alpha]
    if nominal:
        lines += ["", (f"{len(nominal)} of these have an uncorrected p < {study.alpha} but do not survive the "
                  "correction; treat them as hypotheses, not findings.")]
    lines += ["", ("Correlation is not causation: width, architecture and regularizer change ν, μ and "
              "nullity together with robustness, so a correlation across this zoo may reflect any of them.")]
    if study.constant:
        lines += ["", "## Constant metrics", "",
                  ("These metrics take one value across every model in the zoo, so no correlation can be "
                  "computed for them:")]
        lines += [f"- {_label(k)} = {v:g}" for k, v in study.constant.items()]
    skipped = [t for t in study.tests if t.skipped and t.structural not in study.constant
               and t.ease not in study.constant]
    if skipped:
        lines += ["", "Other pairs without a correlation:"]
        lines += [f"- {_label(t.structural)} vs {_label(t.ease)}: {t.skipped}" for t in skipped]
    if scatter_name:
        lines += ["", "## Scatter plots", "", f"![structural metrics vs PGD ease]({scatter_name})"]
    lines += ["", "## All tests", "",
              ("| structural | PGD ease | n | ρ | 95% CI | p (Holm) | τ | 95% CI | p (Holm) | r | 95% CI | "
              "p (Holm) |"), "|---|---|---:|---:|---|---:|---:|---|---:|---:|---|---:|"]
    for t in study.tests:
        if t.skipped:
            lines.append(f"| {_label(t.structural)} | {_label(t.ease)} | {t.n} | – | {t.skipped} | | | | | | "
                         "| |")
            continue
        mark = " \\*" if t.significant else ""
        lines.append(
            f"| {_label(t.structural)} | {_label(t.ease)} | {t.n} | {_fmt(t.spearman)}{mark} | "
            f"{_ci(t.spearman_ci)} | {_p(t.spearman_p)} ({_p(t.spearman_p_holm)}) | {_fmt(t.kendall)} | "
            f"{_ci(t.kendall_ci)} | {_p(t.kendall_p)} ({_p(t.kendall_p_holm)}) | {_fmt(t.pearson)} | "
            f"{_ci(t.pearson_ci)} | {_p(t.pearson_p)} ({_p(t.pearson_p_holm)}) |")
    lines += ["", "\\* significant after Holm correction (Spearman)."]
    return "\n".join(lines) + "\n"


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
                    ax.scatter(*zip(*pts), s=14, color=color, label=g)
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


def write_correlation_report(study: CorrelationStudy, out_dir: str | Path, groups: list[str] | None = None
                             ) -> dict[str, Path]:
    """report.md, scatter.png, correlations.csv and correlations.json in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"scatter": scatter_grid(study, out_dir / "scatter.png", groups),
             "report": out_dir / "report.md", "csv": out_dir / "correlations.csv",
             "json": out_dir / "correlations.json"}
    paths["report"].write_text(markdown_report(study, paths["scatter"].name))
    write_json(study.to_dict(), paths["json"])
    fields = list(CorrelationTest.__dataclass_fields__)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for t in study.tests:
            row = {k: getattr(t, k) for k in fields}
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return paths
