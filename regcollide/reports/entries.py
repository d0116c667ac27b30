"""Eval entries on disk: loading, type validation and the threat model each entry was measured under.

An eval entry is the JSON file ``regcollide eval`` writes per model (keys ``name model dataset training
clean_acc pgd autoattack audit nullspace polytope``). Reports must never rank or correlate entries measured
under different threat models (dataset, norm, ε), as RobustBench (Croce et al., NeurIPS Datasets and
Benchmarks 2021) keeps one leaderboard per (dataset, threat model); :func:`group_by_threat_model` is that
rule.

Example::

    problems = []
    entries = load_entries("results/", problems)   # malformed files -> one line each in problems
    for threat, group in group_by_threat_model(entries).items():
        print(threat.label, len(group))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regcollide.io import read_json

# Keys that mark a JSON file as an eval entry rather than some other result file in the same folder.
ENTRY_KEYS = ("name", "audit", "pgd", "autoattack")

# Dotted paths whose value, when present and not null, must be a real number (bool is not a number here).
NUMERIC_KEYS = (
    "clean_acc", "width",
    "pgd.eps", "pgd.robust_acc", "pgd.clean_acc", "pgd.median_eps_star", "pgd.mean_steps_to_success",
    "pgd.n", "pgd.steps", "pgd.restarts",
    "autoattack.eps", "autoattack.robust_acc", "autoattack.clean_acc", "autoattack.n",
    "autoattack.pgd_robust_acc_same_subset",
    "audit.nu", "audit.mu", "audit.n_weights", "audit.nu_frac", "audit.mu_frac", "audit.total_nullity",
    "audit.first_nullity", "audit.excess_nullity", "audit.structural_nullity",
    "polytope.success_rate", "polytope.distance_ratio",
    "settings.eps", "settings.n",
)
# Dotted paths that must be a string when present and not null.
TEXT_KEYS = ("dataset", "model", "norm", "pgd.norm", "autoattack.norm", "autoattack.version", "settings.norm")
# Dotted paths that must be a JSON object when present and not null.
OBJECT_KEYS = ("pgd", "autoattack", "audit", "nullspace", "polytope", "training", "settings")
# Dotted paths that must be a JSON array when present and not null.
LIST_KEYS = ("training.regularizers", "audit.layers", "pgd.flags", "autoattack.flags", "nullspace.flags",
             "polytope.flags")


class EntryError(ValueError):
    """A file that looks like an eval entry but has missing keys or values of the wrong type."""


def lookup(entry: Any, dotted: str) -> Any:
    """``entry["a"]["b"]`` for ``"a.b"``; None when any level is missing or not an object. NaN -> None."""
    value = entry
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_or_nan(value: Any) -> bool:
    # NaN means "not measured" (read as missing); inf and integers beyond float range are malformed.
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isnan(number) or math.isfinite(number)


def _type_problem(entry: dict) -> str | None:
    """The first wrong-typed key, as 'key 'pgd.eps' must be a number, got str 'abc''; None if all fine."""
    for dotted in OBJECT_KEYS + LIST_KEYS + NUMERIC_KEYS + TEXT_KEYS:
        # Parents are checked first (OBJECT_KEYS), so a non-object parent is reported before its children.
        value = lookup(entry, dotted)
        if value is None:
            continue
        kind, ok = (("an object", isinstance(value, dict)) if dotted in OBJECT_KEYS else
                    ("a list", isinstance(value, list)) if dotted in LIST_KEYS else
                    ("a finite number", _is_number(value) and _is_finite_or_nan(value)) if dotted in NUMERIC_KEYS else
                    ("a string", isinstance(value, str)))
        if not ok:
            shown = json.dumps(value)[:40]
            return f"key '{dotted}' must be {kind}, got {type(value).__name__} {shown}"
    return None


def validate_entry(entry: Any, source: str | Path) -> dict:
    """``entry`` if it is a well-formed eval entry, else :class:`EntryError` naming ``source`` and the key."""
    if not isinstance(entry, dict):
        raise EntryError(f"{source}: an eval entry must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        raise EntryError(f"{source}: missing key '{missing[0]}' (an eval entry has {', '.join(ENTRY_KEYS)}); "
                         "re-run `regcollide eval` for this model")
    if not isinstance(entry["name"], str) or not entry["name"].strip():
        raise EntryError(f"{source}: key 'name' must be a non-empty string, got {json.dumps(entry['name'])[:40]}")
    problem = _type_problem(entry)
    if problem:
        raise EntryError(f"{source}: {problem}; fix the file or re-run `regcollide eval` for this model")
    return entry


def _looks_like_entry(data: Any) -> bool:
    # Other JSON files (reports, configs) share result folders; a file is an entry candidate when it
    # carries at least two of the entry keys, so a damaged entry is reported instead of silently ignored.
    return isinstance(data, dict) and sum(k in data for k in ENTRY_KEYS) >= 2


def _read_candidate(path: Path) -> Any:
    try:
        return read_json(path)
    except json.JSONDecodeError as err:
        raise EntryError(f"{path} is not valid JSON ({err}); delete it or re-run `regcollide eval`") from err
    except (UnicodeDecodeError, OSError, RecursionError) as err:
        raise EntryError(f"{path} cannot be read as JSON text ({type(err).__name__}); delete it or re-run "
                         "`regcollide eval`") from err


def load_entries(directory: str | Path, problems: list[str] | None = None) -> list[dict]:
    """Every eval entry (``*.json`` with the eval-entry keys) in ``directory``, sorted by file name.

    With ``problems`` (a list), a malformed file adds one line naming the file and key and the other files
    are still loaded; without it, the first malformed file raises :class:`EntryError`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder of eval entries (write them with "
                                "`regcollide eval RUN... --out DIR`)")
    entries = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = _read_candidate(path)
            if _looks_like_entry(data):
                entries.append(validate_entry(data, path))
        except EntryError as err:
            if problems is None:
                raise
            problems.append(str(err))
    return entries


@dataclass(frozen=True)
class ThreatModel:
    """Where robust accuracies are comparable: same dataset, norm and ε (None when the entry lacks it)."""

    dataset: str
    norm: str
    eps: float | None

    @property
    def label(self) -> str:
        eps = "?" if self.eps is None else f"{self.eps:g}"
        return f"{self.dataset}, {self.norm}, ε = {eps}"

    @property
    def slug(self) -> str:
        """A safe folder name, e.g. ``mnist5k-linf-eps0.1``."""
        raw = f"{self.dataset}-{self.norm}-eps{'unknown' if self.eps is None else format(self.eps, 'g')}"
        return "".join(c if c.isalnum() or c in ".-_" else "_" for c in raw)


def threat_model(entry: dict) -> ThreatModel:
    """The entry's (dataset, norm, ε): top-level keys first, then the eval settings, PGD, AutoAttack."""
    def first(*paths: str) -> Any:
        return next((v for v in (lookup(entry, p) for p in paths) if v is not None), None)

    dataset = first("dataset", "settings.data")
    norm = first("norm", "settings.norm", "pgd.norm", "autoattack.norm")
    eps = first("eps", "settings.eps", "pgd.eps", "autoattack.eps")
    return ThreatModel(dataset=str(dataset) if dataset is not None else "unknown dataset",
                       norm=str(norm).lower() if norm is not None else "unknown norm",
                       eps=float(eps) if _is_number(eps) else None)


def group_by_threat_model(entries: list[dict]) -> dict[ThreatModel, list[dict]]:
    """Entries per threat model, groups sorted (dataset, norm, ε), entries in their input order."""
    groups: dict[ThreatModel, list[dict]] = {}
    for e in entries:
        groups.setdefault(threat_model(e), []).append(e)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0].dataset, kv[0].norm,
                                                          -1.0 if kv[0].eps is None else kv[0].eps)))


class MixedThreatModelsError(ValueError):
    """Entries from more than one threat model where one comparable set is required."""


def require_one_threat_model(entries: list[dict], what: str, hint: str) -> ThreatModel:
    """The single threat model of ``entries``; else one line listing the groups and ``hint``."""
    groups = group_by_threat_model(entries)
    if len(groups) > 1:
        listed = "; ".join(f"{t.label}: {len(g)} entries" for t, g in groups.items())
        raise MixedThreatModelsError(f"{what} needs entries from one threat model, got {len(groups)} ({listed}); "
                                     f"{hint}")
    return next(iter(groups))
