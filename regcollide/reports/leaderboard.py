"""Eval entries (one JSON per model) -> a robustness leaderboard in Markdown, CSV and static HTML.

The layout follows RobustBench (Croce et al., "RobustBench: a standardized adversarial robustness
benchmark", NeurIPS Datasets and Benchmarks 2021): one row per model, ranked by AutoAttack robust
accuracy, and one table per threat model (dataset, norm, ε), since accuracies under different threat
models cannot be ranked together. It adds the collision columns of Ozbulak et al. ("Exact Feature
Collisions in Neural Networks") and Li, Zhang & Malik ("Approximate Feature Collisions in Neural Nets",
NeurIPS 2019).

Example::

    entries = load_entries("results/")
    write_leaderboard(entries, "site/")   # leaderboard.md, leaderboard.csv, leaderboard.html
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from regcollide.io import atomic_write_bytes
from regcollide.reports.cells import csv_cell, markdown_cell, markdown_line
from regcollide.reports.entries import (
    ThreatModel,
    group_by_threat_model,
    load_entries,
    lookup,
    require_one_threat_model,
)
from regcollide.reports.leaderboard_columns import COLUMNS, Column, flags, format_cell, training_label
from regcollide.reports.leaderboard_html import render_html

__all__ = ["COLUMNS", "Column", "flags", "footnote", "format_cell", "load_entries", "rank_entries",
           "ranking_score", "sections", "table_rows", "to_markdown", "training_label", "write_csv",
           "write_leaderboard"]

RANKING_NOTE = "Ranked by AutoAttack robust accuracy (standard version) within each threat model."


def ranking_score(entry: dict) -> tuple[float | None, str]:
    """Robust accuracy used for ranking and where it came from (AutoAttack, else PGD)."""
    aa = lookup(entry, "autoattack.robust_acc")
    if aa is not None:
        return aa, "autoattack"
    pgd = lookup(entry, "pgd.robust_acc")
    return (pgd, "pgd") if pgd is not None else (None, "none")


def rank_entries(entries: list[dict]) -> list[dict]:
    """Copies of the entries, best first, each with ``_rank``, ``_score`` and ``_score_source``.

    Ranks one comparable set: call it per threat model (see :func:`sections`).
    """
    ranked = []
    for e in entries:
        score, source = ranking_score(e)
        ranked.append({**e, "_score": score, "_score_source": source})
    # Missing scores last; ties broken by clean accuracy, then by name for a stable order.
    ranked.sort(key=lambda e: (e["_score"] is None, -(e["_score"] or 0.0),
                               -(lookup(e, "clean_acc") or 0.0), str(e.get("name"))))
    for i, e in enumerate(ranked, 1):
        e["_rank"] = i
    return ranked


def _row(entry: dict, threat: ThreatModel) -> dict[str, Any]:
    row = {c.key: c.value(entry) for c in COLUMNS}
    row["_score_source"] = entry["_score_source"]
    row["_threat"] = threat
    return row


def sections(entries: list[dict]) -> list[tuple[ThreatModel, list[dict[str, Any]]]]:
    """One (threat model, ranked rows) pair per threat model; rows hold raw values (None when missing)."""
    return [(threat, [_row(e, threat) for e in rank_entries(group)])
            for threat, group in group_by_threat_model(entries).items()]


def table_rows(entries: list[dict]) -> list[dict[str, Any]]:
    """All rows, threat model by threat model, each ranked within its own threat model."""
    return [row for _, rows in sections(entries) for row in rows]


def _regroup(rows: list[dict]) -> list[tuple[ThreatModel, list[dict]]]:
    groups: dict[ThreatModel, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["_threat"], []).append(r)
    return list(groups.items())


def _sizes(rows: list[dict], key: str) -> str | None:
    sizes = sorted({r[key] for r in rows if isinstance(r.get(key), (int, float))})
    return "/".join(f"{n:g}" for n in sizes) if sizes else None


def footnote(rows: list[dict]) -> str:
    """Sample sizes (AutoAttack attacks a prefix of PGD's images) and the PGD-fallback rows of one table."""
    pgd, aa = _sizes(rows, "n_pgd"), _sizes(rows, "n_autoattack")
    notes = [f"PGD on {pgd + ' ' if pgd else ''}test images (a seeded random class mixture); AutoAttack on "
             f"{'the first ' + aa if aa else 'a prefix'} of those same images, and PGD % (AA images) is PGD's "
             "robust accuracy on that prefix, the number AutoAttack % must not exceed."]
    fallback = [str(r["name"]) for r in rows if r["_score_source"] == "pgd"]
    if fallback:
        notes.append("† No AutoAttack result for " + ", ".join(fallback) + ": ranked by PGD robust accuracy, "
                     "an upper bound on the true robust accuracy (AutoAttack is usually lower).")
    return " ".join(notes)


def _markdown_table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(c.header for c in COLUMNS) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in COLUMNS) + "|"]
    aa_index = [c.key for c in COLUMNS].index("autoattack_acc")
    for r in rows:
        cells = [markdown_cell(format_cell(c, r[c.key])) for c in COLUMNS]
        if r["_score_source"] == "pgd":
            cells[aa_index] += " †"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(rows: list[dict], title: str = "Leaderboard") -> str:
    """One section per threat model, each with its own ranked table and footnote."""
    lines = [f"# {markdown_line(title)}", "", RANKING_NOTE]
    for threat, group in _regroup(rows):
        lines += ["", f"## {markdown_line(threat.label)}", ""] + _markdown_table(group)
        lines += ["", markdown_line(footnote(group))]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """All rows in one CSV; the threat-model columns say which table a row belongs to."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([c.key for c in COLUMNS] + ["ranked_by"])
    for r in rows:
        writer.writerow([csv_cell(r[c.key]) for c in COLUMNS] + [r["_score_source"]])
    return buffer.getvalue()


def write_csv(rows: list[dict], path: str | Path) -> None:
    atomic_write_bytes(path, csv_text(rows).encode())


def write_leaderboard(entries: list[dict], out_dir: str | Path, title: str = "regcollide leaderboard",
                      single_table: bool = False) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.html`` into ``out_dir``.

    Entries from different threat models get one table each; with ``single_table`` they are refused
    (:class:`~regcollide.reports.entries.MixedThreatModelsError`) instead. Everything is rendered before
    anything is written, and each file is replaced atomically.
    """
    if not entries:
        raise ValueError("no eval entries to rank; run `regcollide eval RUN... --out DIR` first")
    if single_table:
        require_one_threat_model(entries, "a single leaderboard table",
                                 "drop --single-table to get one table per threat model")
    groups = sections(entries)
    rows = [row for _, group in groups for row in group]
    texts = {"markdown": to_markdown(rows, title), "csv": csv_text(rows),
             "html": render_html([(t.label, g, footnote(g)) for t, g in groups], COLUMNS, format_cell, title,
                                 RANKING_NOTE)}
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv",
             "html": out_dir / "leaderboard.html"}
    for kind, path in paths.items():
        atomic_write_bytes(path, texts[kind].encode())
    return paths
