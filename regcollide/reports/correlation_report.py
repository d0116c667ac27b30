"""Write a :class:`~regcollide.reports.correlation.CorrelationStudy` as a plain-words Markdown report, a
CSV/JSON of every test and a scatter-plot grid (structural metric × PGD-ease metric).

The wording follows the statistics: below the minimum n the report says nothing can be concluded;
significance is always "after Holm"; Pearson tests that survive Holm are shown next to what is left of
them once their most influential models are removed.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from regcollide.io import atomic_write_bytes, write_json
from regcollide.reports.cells import csv_cell, markdown_cell, markdown_line
from regcollide.reports.correlation import EASE, CorrelationStudy, CorrelationTest
from regcollide.reports.correlation import metric_label as _label
from regcollide.reports.correlation_plot import scatter_grid

__all__ = ["describe", "markdown_report", "scatter_grid", "write_correlation_report"]


def _fmt(v: float | None, spec: str = "+.2f") -> str:
    return "–" if v is None else format(v, spec)


def _ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def describe(t: CorrelationTest) -> str:
    """One sentence for a computed test, e.g. 'higher ν goes with smaller median ε* (ρ = -0.71, ...)'."""
    direction = "larger" if t.spearman > 0 else "smaller"
    meaning = EASE[t.ease][2]
    return (f"higher {_label(t.structural)} goes with {direction} {_label(t.ease)} "
            f"(Spearman ρ = {t.spearman:+.2f}, 95% CI {_ci(t.spearman_ci)}, Holm-adjusted p = "
            f"{_p(t.spearman_p_holm)}, n = {t.n}); a larger {_label(t.ease)} means {meaning}")


def _method(study: CorrelationStudy, computed: list[CorrelationTest]) -> str:
    methods = sorted({t.p_method for t in computed if t.p_method})
    return (f"{study.n_models} models ({markdown_line(study.threat_model)}); {len(study.tests)} structural × "
            f"PGD-ease pairs, {len(computed)} computable. Primary statistic: Spearman ρ, Holm-corrected across "
            f"the {len(computed)} computable pairs at α = {study.alpha}. Kendall τ and Pearson r are each "
            "Holm-corrected the same way. p-values are two-sided permutation p-values: "
            + ("; ".join(methods) if methods else "none computed")
            + f" (exact up to {study.exact_max_n} models, never 0). 95% confidence intervals: percentile "
            f"bootstrap over models ({study.n_boot} resamples, seed {study.seed}). Tests on fewer than "
            f"{study.min_n} models are reported but never called significant.")


def _findings(study: CorrelationStudy, computed: list[CorrelationTest]) -> list[str]:
    if not study.conclusive:
        smallest = 2 / math.factorial(study.n_models)
        return [f"**Nothing can be concluded from {study.n_models} models** (fewer than {study.min_n}): each "
                "model is a fifth or more of the data, and the smallest possible two-sided permutation p-value "
                f"is 2/{study.n_models}! = {smallest:.2g} before any correction. No test is called significant; "
                "the numbers below are descriptive only. Evaluate more models."]
    significant = sorted((t for t in computed if t.significant), key=lambda t: t.spearman_p_holm)
    if significant:
        lines = [f"{len(significant)} of {len(computed)} correlations are significant after Holm correction:"]
        lines += [f"- {describe(t)}." for t in significant]
    else:
        lines = [f"None of the {len(computed)} computable correlations is significant after Holm correction at "
                 f"α = {study.alpha}."]
    not_sig = [t for t in computed if not t.significant]
    if not_sig:
        strongest = sorted(not_sig, key=lambda t: -abs(t.spearman))[:3]
        lines += ["", f"Not significant after correction: {len(not_sig)} pairs. The strongest of them:"]
        lines += [f"- {describe(t)}." for t in strongest]
    nominal = [t for t in not_sig if t.spearman_p < study.alpha]
    if nominal:
        lines += ["", (f"{len(nominal)} of these have an uncorrected p < {study.alpha} but do not survive the "
                  "correction; treat them as hypotheses, not findings.")]
    return lines


def _influence_line(t: CorrelationTest) -> str:
    kind = "permutation" if t.influence_p == "permutation" else "normal-theory"
    holm_p = t.pearson_p_holm if t.influence_p == "permutation" else t.pearson_p_normal_holm
    steps = []
    for k, (r, p, ok) in enumerate(zip(t.pearson_without, t.pearson_p_without, t.pearson_survives_without)):
        removed = ", ".join(markdown_cell(n) for n in t.influential[:k + 1])
        verdict = "still significant after Holm" if ok else "no longer significant after Holm"
        steps.append(f"without {removed}: r = {_fmt(r)}, {kind} p = {_p(p)}, {verdict}")
    other = (f"permutation: {_p(t.pearson_p_holm)}" if kind == "normal-theory"
             else f"normal theory: {_p(t.pearson_p_normal_holm)}")
    return (f"- {_label(t.structural)} vs {_label(t.ease)}: r = {t.pearson:+.2f}, {kind} Holm-adjusted p = "
            f"{_p(holm_p)} ({other}); " + "; ".join(steps) + ".")


def _pearson_section(study: CorrelationStudy, computed: list[CorrelationTest]) -> list[str]:
    checked = [t for t in computed if t.influence_p]
    n_perm = sum(t.pearson_significant for t in computed)
    n_normal = sum(t.pearson_p_normal_holm < study.alpha and not t.inconclusive for t in computed)
    lines = ["## Pearson r and influential models", "",
             (f"{n_normal} Pearson tests survive Holm with normal-theory p-values (which assume bivariate "
              f"normality) and {n_perm} with permutation p-values.")]
    if not checked:
        return lines
    fragile = [t for t in checked if not all(t.pearson_survives_without)]
    drivers = sorted({markdown_cell(n) for t in fragile for n in t.influential})
    lines[-1] += (f" Removing the most influential one or two models (leave-one-out change in r) makes "
                  f"{len(fragile)} of these {len(checked)} lose significance"
                  + (f"; the models that drive them: {', '.join(drivers)}" if drivers else "") + ":")
    return lines + [""] + [_influence_line(t) for t in checked]


def _constant_and_skipped(study: CorrelationStudy) -> list[str]:
    lines = []
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
    return lines


def _all_tests(study: CorrelationStudy) -> list[str]:
    lines = ["## All tests", "",
             ("| structural | PGD ease | n | ρ | 95% CI | p (Holm) | τ | 95% CI | p (Holm) | r | 95% CI | "
              "p (Holm) | r: normal-theory p (Holm) |"),
             "|---|---|---:|---:|---|---:|---:|---|---:|---:|---|---:|---:|"]
    for t in study.tests:
        if t.skipped:
            lines.append(f"| {_label(t.structural)} | {_label(t.ease)} | {t.n} | – | {t.skipped} | | | | | | "
                         "| | |")
            continue
        mark = " \\*" if t.significant else (f" (n < {study.min_n})" if t.inconclusive else "")
        lines.append(
            f"| {_label(t.structural)} | {_label(t.ease)} | {t.n} | {_fmt(t.spearman)}{mark} | "
            f"{_ci(t.spearman_ci)} | {_p(t.spearman_p)} ({_p(t.spearman_p_holm)}) | {_fmt(t.kendall)} | "
            f"{_ci(t.kendall_ci)} | {_p(t.kendall_p)} ({_p(t.kendall_p_holm)}) | {_fmt(t.pearson)} | "
            f"{_ci(t.pearson_ci)} | {_p(t.pearson_p)} ({_p(t.pearson_p_holm)}) | "
            f"{_p(t.pearson_p_normal)} ({_p(t.pearson_p_normal_holm)}) |")
    return lines + ["", "\\* significant after Holm correction (Spearman)."]


def markdown_report(study: CorrelationStudy, scatter_name: str | None = "scatter.png") -> str:
    computed = [t for t in study.tests if t.skipped is None]
    lines = ["# Do ν, μ and nullity predict how easily PGD succeeds?", "", _method(study, computed), "",
             "## Finding", ""] + _findings(study, computed)
    lines += ["", ("Correlation is not causation: width, architecture and regularizer change ν, μ and "
              "nullity together with robustness, so a correlation across this zoo may reflect any of them."),
              ""] + _pearson_section(study, computed)
    lines += _constant_and_skipped(study)
    if scatter_name:
        lines += ["", "## Scatter plots", "", f"![structural metrics vs PGD ease]({scatter_name})"]
    return "\n".join(lines + [""] + _all_tests(study)) + "\n"


def _csv_value(value: object) -> object:
    if isinstance(value, (list, tuple)):
        value = "; ".join("" if v is None else str(v) for v in value)
    return csv_cell(value)


def correlations_csv(study: CorrelationStudy) -> str:
    """Every test as one CSV row (lists joined with '; ', text neutralized against formula injection)."""
    fields = list(CorrelationTest.__dataclass_fields__)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(fields)
    for t in study.tests:
        writer.writerow([_csv_value(getattr(t, k)) for k in fields])
    return buffer.getvalue()


def write_correlation_report(study: CorrelationStudy, out_dir: str | Path, groups: list[str] | None = None
                             ) -> dict[str, Path]:
    """report.md, scatter.png, correlations.csv and correlations.json in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"scatter": scatter_grid(study, out_dir / "scatter.png", groups),
             "report": out_dir / "report.md", "csv": out_dir / "correlations.csv",
             "json": out_dir / "correlations.json"}
    atomic_write_bytes(paths["report"], markdown_report(study, paths["scatter"].name).encode())
    write_json(study.to_dict(), paths["json"])
    atomic_write_bytes(paths["csv"], correlations_csv(study).encode())
    return paths
