"""The leaderboard's columns, in four groups: identity | threat model | clean/robust | collisions.

Threat-model columns follow RobustBench (Croce et al., NeurIPS Datasets and Benchmarks 2021): the dataset,
norm, ε, number of images and attack settings under which an accuracy was measured. Collision columns come
from Ozbulak et al. ("Exact Feature Collisions in Neural Networks": ν, μ, nullity, Null-space search) and
Li, Zhang & Malik ("Approximate Feature Collisions in Neural Nets", NeurIPS 2019: polytope search).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from regcollide.reports.entries import lookup, threat_model

# Column groups in display order, with the header shown above each group.
GROUPS = {"identity": "Model", "threat": "Threat model", "accuracy": "Clean / robust",
          "collision": "Collisions", "flags": "Checks"}


def _number_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def training_label(entry: dict) -> str:
    """Short recipe, e.g. ``singular(0.1)+decorrelation(0.01)``; ``ERM`` without regularizers."""
    regs = lookup(entry, "training.regularizers") or []
    parts = [f"{r.get('name')}({_number_text(r.get('weight', 1.0))})" for r in regs if isinstance(r, dict)]
    return "+".join(parts) if parts else "ERM"


def flags(entry: dict) -> list[str]:
    """Sanity-check flags raised by the evaluators themselves (PGD, AutoAttack, Null-space, polytope)."""
    out = []
    for part in ("pgd", "autoattack", "nullspace", "polytope"):
        # Evaluator flags are {"id", "message"} dicts (regcollide.attacks.checks); show the id.
        raised = lookup(entry, f"{part}.flags") or []
        out += [f"{part}: {f.get('id', f) if isinstance(f, dict) else f}" for f in raised]
    return out


def _model_label(entry: dict) -> str:
    width = entry.get("width")
    return f"{entry.get('model')} ×{_number_text(width if width is not None else 1)}"


def _pct(v: Any) -> Any:
    return None if v is None else 100.0 * v


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    value: Callable[[dict], Any]
    fmt: str = "{}"            # format for numbers in Markdown and HTML; CSV keeps full precision
    numeric: bool = True
    group: str = "identity"


def _group(group: str, columns: list[Column]) -> list[Column]:
    return [replace(c, group=group) for c in columns]


def _text(key: str, header: str, value: Callable[[dict], Any]) -> Column:
    return Column(key, header, value, numeric=False)


COLUMNS: list[Column] = (
    _group("identity", [
        Column("rank", "#", lambda e: e["_rank"], "{:d}"),
        _text("name", "Run", lambda e: e.get("name")),
        _text("model", "Model", _model_label),
        _text("training", "Training", training_label),
    ])
    + _group("threat", [
        _text("dataset", "Dataset", lambda e: threat_model(e).dataset),
        _text("norm", "Norm", lambda e: threat_model(e).norm),
        Column("eps", "ε", lambda e: threat_model(e).eps, "{:.4g}"),
        Column("n_pgd", "n PGD", lambda e: lookup(e, "pgd.n"), "{:d}"),
        Column("n_autoattack", "n AA", lambda e: lookup(e, "autoattack.n"), "{:d}"),
        Column("pgd_steps", "PGD steps", lambda e: lookup(e, "pgd.steps"), "{:d}"),
        Column("pgd_restarts", "PGD restarts", lambda e: lookup(e, "pgd.restarts"), "{:d}"),
        _text("autoattack_version", "AA version", lambda e: lookup(e, "autoattack.version")),
    ])
    + _group("accuracy", [
        Column("clean_acc", "Clean %", lambda e: _pct(lookup(e, "clean_acc")), "{:.1f}"),
        Column("autoattack_acc", "AutoAttack %", lambda e: _pct(lookup(e, "autoattack.robust_acc")), "{:.1f}"),
        # PGD on exactly AutoAttack's images (a prefix of PGD's): AutoAttack % above it flags a broken eval.
        Column("pgd_acc_aa_subset", "PGD % (AA images)",
               lambda e: _pct(lookup(e, "autoattack.pgd_robust_acc_same_subset")), "{:.1f}"),
        Column("pgd_acc", "PGD %", lambda e: _pct(lookup(e, "pgd.robust_acc")), "{:.1f}"),
        Column("median_eps_star", "median ε*", lambda e: lookup(e, "pgd.median_eps_star"), "{:.3f}"),
    ])
    + _group("collision", [
        Column("nu", "ν", lambda e: lookup(e, "audit.nu"), "{:d}"),
        Column("mu", "μ", lambda e: lookup(e, "audit.mu"), "{:d}"),
        Column("n_weights", "n_θ", lambda e: lookup(e, "audit.n_weights"), "{:d}"),
        Column("total_nullity", "Σ nullity", lambda e: lookup(e, "audit.total_nullity"), "{:d}"),
        Column("first_nullity", "nullity(W1)", lambda e: lookup(e, "audit.first_nullity"), "{:d}"),
        _text("nullspace_exact", "Null-space exact", lambda e: lookup(e, "nullspace.exact")),
        Column("polytope_success", "Polytope success %",
               lambda e: _pct(lookup(e, "polytope.success_rate")), "{:.1f}"),
        Column("distance_ratio", "Distance ratio", lambda e: lookup(e, "polytope.distance_ratio"), "{:.3f}"),
    ])
    + _group("flags", [_text("flags", "Flags", lambda e: "; ".join(flags(e)))])
)


def format_cell(column: Column, value: Any) -> str:
    """Display text of one cell (Markdown and HTML); '–' for missing values."""
    if value is None or value == "":
        return "–" if column.key != "flags" else ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column.numeric and isinstance(value, (int, float)):
        if not math.isfinite(value):
            return str(value)
        return column.fmt.format(int(value) if column.fmt == "{:d}" else value)
    return str(value)
