"""Eval entries (one JSON per model) -> a robustness leaderboard in Markdown, CSV and static HTML.

The layout follows RobustBench (Croce et al., "RobustBench: a standardized adversarial robustness
benchmark", NeurIPS Datasets and Benchmarks 2021): one row per model, ranked by AutoAttack robust
accuracy. It adds the collision columns of Ozbulak et al. ("Exact Feature Collisions in Neural
Networks") and Li, Zhang & Malik ("Approximate Feature Collisions in Neural Nets", NeurIPS 2019).

Example::

    entries = load_entries("results/")
    write_leaderboard(entries, "site/")   # leaderboard.md, leaderboard.csv, leaderboard.html
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regcollide.io import read_json
from regcollide.reports.leaderboard_html import render_html

# Keys that mark a JSON file as an eval entry rather than some other result file in the same folder.
_ENTRY_KEYS = ("name", "audit", "pgd", "autoattack")


def load_entries(directory: str | Path) -> list[dict]:
    """Every eval entry (``*.json`` with the eval-entry keys) in ``directory``, sorted by file name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder of eval entries (write them with "
                                "`regcollide eval RUN... --out DIR`)")
    entries = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = read_json(path)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it or re-run `regcollide eval`") from err
        if isinstance(data, dict) and all(k in data for k in _ENTRY_KEYS):
            entries.append(data)
    return entries


def _get(entry: dict, *path: str) -> Any:
    value: Any = entry
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def training_label(entry: dict) -> str:
    """Short recipe, e.g. ``singular(0.1)+decorrelation(0.01)``; ``ERM`` without regularizers."""
    regs = _get(entry, "training", "regularizers") or []
    parts = [f"{r.get('name')}({r.get('weight', 1.0):g})" for r in regs if isinstance(r, dict)]
    return "+".join(parts) if parts else "ERM"


def flags(entry: dict) -> list[str]:
    """Sanity-check flags raised by the evaluators themselves (PGD, AutoAttack, Null-space)."""
    out = []
    for part in ("pgd", "autoattack", "nullspace", "polytope"):
        # Evaluator flags are {"id", "message"} dicts (regcollide.attacks.checks); show the id.
        out += [f"{part}: {f.get('id', f) if isinstance(f, dict) else f}" for f in (_get(entry, part, "flags") or [])]
    return out


def ranking_score(entry: dict) -> tuple[float | None, str]:
    """Robust accuracy used for ranking and where it came from (AutoAttack, else PGD)."""
    aa = _get(entry, "autoattack", "robust_acc")
    if aa is not None:
        return aa, "autoattack"
    pgd = _get(entry, "pgd", "robust_acc")
    return (pgd, "pgd") if pgd is not None else (None, "none")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    value: Callable[[dict], Any]
    fmt: str = "{}"            # format for numbers in Markdown and HTML; CSV keeps full precision
    numeric: bool = True


def _pct(v: Any) -> Any:
    return None if v is None else 100.0 * v


COLUMNS: list[Column] = [
    Column("rank", "#", lambda e: e["_rank"], "{:d}"),
    Column("name", "Run", lambda e: e.get("name"), numeric=False),
    Column("model", "Model", lambda e: f"{e.get('model')} ×{e.get('width') or 1:g}", numeric=False),
    Column("training", "Training", training_label, numeric=False),
    Column("clean_acc", "Clean %", lambda e: _pct(_get(e, "clean_acc")), "{:.1f}"),
    Column("robust_acc", "Robust %", lambda e: _pct(e["_score"]), "{:.1f}"),
    Column("autoattack_acc", "AutoAttack %", lambda e: _pct(_get(e, "autoattack", "robust_acc")), "{:.1f}"),
    # PGD on exactly AutoAttack's images (a prefix of PGD's): AutoAttack % above it flags a broken evaluation.
    Column("pgd_acc_aa_subset", "PGD % (AA images)",
           lambda e: _pct(_get(e, "autoattack", "pgd_robust_acc_same_subset")), "{:.1f}"),
    Column("pgd_acc", "PGD %", lambda e: _pct(_get(e, "pgd", "robust_acc")), "{:.1f}"),
    Column("median_eps_star", "median ε*", lambda e: _get(e, "pgd", "median_eps_star"), "{:.3f}"),
    Column("nu", "ν", lambda e: _get(e, "audit", "nu"), "{:d}"),
    Column("mu", "μ", lambda e: _get(e, "audit", "mu"), "{:d}"),
    Column("n_weights", "n_θ", lambda e: _get(e, "audit", "n_weights"), "{:d}"),
    Column("total_nullity", "Σ nullity", lambda e: _get(e, "audit", "total_nullity"), "{:d}"),
    Column("first_nullity", "nullity(W1)", lambda e: _get(e, "audit", "first_nullity"), "{:d}"),
    Column("nullspace_exact", "Null-space exact", lambda e: _get(e, "nullspace", "exact"), numeric=False),
    Column("polytope_success", "Polytope success %",
           lambda e: _pct(_get(e, "polytope", "success_rate")), "{:.1f}"),
    Column("distance_ratio", "Distance ratio", lambda e: _get(e, "polytope", "distance_ratio"), "{:.3f}"),
    Column("flags", "Flags", lambda e: "; ".join(flags(e)), numeric=False),
]


def rank_entries(entries: list[dict]) -> list[dict]:
    """Copies of the entries, best first, each with ``_rank``, ``_score`` and ``_score_source``."""
    ranked = []
    for e in entries:
        score, source = ranking_score(e)
        ranked.append({**e, "_score": score, "_score_source": source})
    # Missing scores last; ties broken by clean accuracy, then by name for a stable order.
    ranked.sort(key=lambda e: (e["_score"] is None, -(e["_score"] or 0.0),
                               -(_get(e, "clean_acc") or 0.0), str(e.get("name"))))
    for i, e in enumerate(ranked, 1):
        e["_rank"] = i
    return ranked


def table_rows(entries: list[dict]) -> list[dict[str, Any]]:
    """Ranked rows of raw column values (numbers stay numbers; None for missing)."""
    rows = []
    for e in rank_entries(entries):
        row = {c.key: c.value(e) for c in COLUMNS}
        row["_score_source"] = e["_score_source"]
        row["_pgd_n"], row["_aa_n"] = _get(e, "pgd", "n"), _get(e, "autoattack", "n")
        rows.append(row)
    return rows


def format_cell(column: Column, value: Any) -> str:
    if value is None or value == "":
        return "–" if column.key != "flags" else ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column.numeric and isinstance(value, (int, float)):
        return column.fmt.format(int(value) if column.fmt == "{:d}" else value)
    return str(value)


def _sizes(rows: list[dict], key: str) -> str:
    sizes = sorted({r[key] for r in rows if r.get(key) is not None})
    return "/".join(str(n) for n in sizes) if sizes else "–"


def footnote(rows: list[dict]) -> str | None:
    """Sample sizes (AutoAttack attacks a prefix of PGD's images) and the PGD-fallback rows."""
    notes = [f"PGD on {_sizes(rows, '_pgd_n')} test images (a seeded random class mixture); AutoAttack on "
             f"the first {_sizes(rows, '_aa_n')} of those same images, and PGD % (AA images) is PGD's robust "
             "accuracy on that prefix, the number AutoAttack % must not exceed."]
    fallback = [r["name"] for r in rows if r["_score_source"] == "pgd"]
    if fallback:
        notes.append("† No AutoAttack result for " + ", ".join(fallback) + ": ranked by PGD robust accuracy, "
                     "an upper bound on the true robust accuracy (AutoAttack is usually lower).")
    return " ".join(notes)


def to_markdown(rows: list[dict], title: str = "Leaderboard") -> str:
    lines = [f"# {title}", "", "| " + " | ".join(c.header for c in COLUMNS) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in COLUMNS) + "|"]
    for r in rows:
        cells = [format_cell(c, r[c.key]).replace("|", "\\|") for c in COLUMNS]
        if r["_score_source"] == "pgd":
            cells[[c.key for c in COLUMNS].index("robust_acc")] += " †"
        lines.append("| " + " | ".join(cells) + " |")
    note = footnote(rows)
    lines += ["", "Ranked by AutoAttack robust accuracy (standard version)."] + ([note] if note else [])
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([c.key for c in COLUMNS] + ["ranked_by"])
        for r in rows:
            writer.writerow(["" if r[c.key] is None else r[c.key] for c in COLUMNS] + [r["_score_source"]])


def write_leaderboard(entries: list[dict], out_dir: str | Path, title: str = "regcollide leaderboard"
                      ) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.html`` into ``out_dir``."""
    if not entries:
        raise ValueError("no eval entries to rank; run `regcollide eval RUN... --out DIR` first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(entries)
    paths = {"markdown": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv",
             "html": out_dir / "leaderboard.html"}
    paths["markdown"].write_text(to_markdown(rows, title))
    write_csv(rows, paths["csv"])
    paths["html"].write_text(render_html(rows, COLUMNS, format_cell, footnote(rows), title))
    return paths
