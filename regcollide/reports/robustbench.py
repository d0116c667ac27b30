"""Eval entries in RobustBench's ``model_info`` JSON shape (Croce et al., "RobustBench: a standardized
adversarial robustness benchmark", NeurIPS Datasets and Benchmarks 2021).

RobustBench keeps one JSON file per model under ``model_info/<dataset>/<threat model>/<name>.json`` with
the fields of its ``ModelInfo`` dataclass: ``link name authors additional_data number_forward_passes
dataset venue architecture eps clean_acc reported autoattack_acc footnote`` (the ``corruptions_*`` fields
belong to the corruption leaderboards, which regcollide does not measure, and are left out). Accuracies
are percentage strings with two decimals ("91.08"), ε is a string ("8/255" or "0.5"), and
``additional_data`` is a boolean. Fields an eval entry cannot know (link, authors, venue) are empty
strings, which RobustBench shows as "Unpublished"; fill them in by hand before submitting.

Example::

    written, refused = write_model_info(load_entries("results/"), "site/model_info")
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

from regcollide.io import atomic_write_bytes
from regcollide.reports.entries import lookup, threat_model

# regcollide norm -> RobustBench ThreatModel value (only the norms RobustBench ranks).
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}


def eps_text(eps: float) -> str:
    """ε as RobustBench writes it: ``8/255`` when ε is a whole number of 1/255 steps, else ``0.5``."""
    steps = eps * 255
    if eps > 0 and abs(steps - round(steps)) < 1e-6 and round(steps) < 255:
        frac = Fraction(round(steps), 255)
        return f"{frac.numerator}/{frac.denominator}"
    return f"{eps:g}"


def _percent(value: float) -> str:
    return f"{100.0 * value:.2f}"


def _footnote(entry: dict) -> str:
    aa, pgd = entry.get("autoattack") or {}, entry.get("pgd") or {}
    parts = [f"regcollide eval: AutoAttack ({aa.get('version', 'standard')}"
             + (f", pyautoattack {aa['package_version']}" if aa.get("package_version") else "")
             + f") on {aa.get('n', '?')} test images"]
    if pgd:
        parts.append(f"PGD-{pgd.get('steps', '?')} with {pgd.get('restarts', '?')} restart(s) on "
                     f"{pgd.get('n', '?')}")
    if aa.get("n") and pgd.get("n") and aa["n"] < pgd["n"]:
        parts.append("AutoAttack's images are the first of PGD's, not the full test set")
    return "; ".join(parts) + "."


def model_info(entry: dict) -> dict:
    """One entry as a RobustBench ``model_info`` dict; ValueError (one line) if it cannot be one."""
    threat = threat_model(entry)
    name = entry.get("name")
    if threat.norm not in THREAT_MODELS:
        raise ValueError(f"{name}: norm '{threat.norm}' has no RobustBench leaderboard (only Linf and L2)")
    # Clean and robust accuracy on the same images, as RobustBench reports them: AutoAttack's own clean
    # accuracy (its images are a prefix of PGD's), the entry's clean accuracy only when it is missing.
    aa = lookup(entry, "autoattack.robust_acc")
    clean = lookup(entry, "autoattack.clean_acc")
    clean = lookup(entry, "clean_acc") if clean is None else clean
    if aa is None or not math.isfinite(aa):
        raise ValueError(f"{name}: no AutoAttack robust accuracy, which RobustBench ranks by; run "
                         "`regcollide eval` with the autoattack part")
    if clean is None or threat.eps is None:
        raise ValueError(f"{name}: missing {'clean_acc' if clean is None else 'eps'}, which RobustBench needs")
    width = entry.get("width")
    return {
        "link": "",
        "name": str(name),
        "authors": "",
        # The eval entry records no extra training data; change this by hand if the run used some.
        "additional_data": False,
        # Deterministic feed-forward models: one forward pass per prediction.
        "number_forward_passes": 1,
        "dataset": threat.dataset,
        "venue": "",
        "architecture": str(entry.get("model")) + (f" (width {width:g})" if isinstance(width, (int, float)) else ""),
        "eps": eps_text(threat.eps),
        "clean_acc": _percent(clean),
        # RobustBench's "reported" is the paper's own number; ours is the one measured here.
        "reported": _percent(aa),
        "autoattack_acc": _percent(aa),
        "footnote": _footnote(entry),
    }


def _file_name(name: str, taken: set[str]) -> str:
    # One safe path component per model, unique within its folder.
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "model"
    candidate, i = stem, 2
    while candidate.lower() in taken:
        candidate, i = f"{stem}_{i}", i + 1
    taken.add(candidate.lower())
    return candidate + ".json"


def write_model_info(entries: list[dict], out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """``out_dir/<dataset>/<Linf|L2>/<name>.json`` per exportable entry; (written paths, one line per refusal)."""
    infos, refused = [], []
    for entry in entries:
        try:
            infos.append((model_info(entry), THREAT_MODELS[threat_model(entry).norm]))
        except ValueError as err:
            refused.append(str(err))
    out_dir, taken, written = Path(out_dir), {}, []
    for info, threat in infos:
        folder = out_dir / _file_name(info["dataset"], set()).removesuffix(".json") / threat
        path = folder / _file_name(info["name"], taken.setdefault(folder, set()))
        # Field order as in RobustBench's own files (not sorted), so diffs against theirs stay readable.
        atomic_write_bytes(path, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode())
        written.append(path)
    return written, refused
