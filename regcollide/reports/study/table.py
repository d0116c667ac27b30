"""Flatten study entries into one row per trained model: identifiers, structure (audit) and outcomes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from regcollide.io import read_json

STRUCTURAL = ("first_nullity", "nu_frac", "mu_frac", "total_nullity", "mean_sigma_ratio")
OUTCOMES = ("pgd_eps_star", "fab_eps_star", "robust_0.1", "robust_0.3", "polytope_ratio", "nullspace_valid")
EXPLORATORY_OUTCOMES = ("polytope_ratio_unconverged",)  # added after the pre-registration (see the report)
COVARIATES = ("clean_acc", "log_params")
LABELS = {
    "first_nullity": "nullity(W1)", "nu_frac": "ν / n_W", "mu_frac": "μ / n_W", "total_nullity": "total nullity",
    "mean_sigma_ratio": "mean σ_min/σ_max", "min_rank": "min layer rank", "second_rank": "rank of layer 2",
    "mean_max_cosine": "mean max cosine",
    "pgd_eps_star": "median ε* (PGD)", "fab_eps_star": "median ε* (FAB)", "robust_0.1": "robust acc ε=0.1",
    "robust_0.3": "robust acc ε=0.3", "polytope_ratio": "polytope distance ratio",
    "polytope_ratio_unconverged": "polytope distance ratio (not converged)",
    "nullspace_valid": "Null-space valid-image success", "clean_acc": "clean accuracy",
    "aa_robust_0.3": "AutoAttack robust acc ε=0.3", "log_params": "log parameters",
}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def row(entry: dict) -> dict:
    """One flat row from a study entry (None where a measurement does not apply)."""
    job, out = entry["job"], entry["outcomes"]
    s, pgd = out["structure"], out["pgd"]
    layers = s["layers"]
    null, poly = out["nullspace"]["value"], out["polytope"]["value"]
    first_eps = min(pgd, key=float)
    r = {"name": job["name"], "family": job["family"], "config": job["config"], "level": job["level"],
         "seed": job["seed"], "model": job["model"]["name"],
         "first_nullity": s["first_nullity"], "nu_frac": s["nu_frac"], "mu_frac": s["mu_frac"],
         "total_nullity": s["total_nullity"], "mean_sigma_ratio": _num(s.get("mean_sigma_ratio")),
         "min_rank": min(layer["rank"] for layer in layers),
         "second_rank": layers[1]["rank"] if len(layers) > 1 else None,  # mlp-rank-r*: the bottleneck
         "mean_max_cosine": _mean([_num(layer.get("max_cosine")) for layer in layers]),
         "n_params": s["n_params"], "log_params": math.log(s["n_params"]),
         "input_dim": math.prod(s["input_shape"]), "input_chans": s["input_shape"][0],  # (C, H, W) of an image
         "clean_acc": pgd[first_eps]["clean_acc"], "pgd_eps_star": _num(pgd[first_eps]["median_eps_star"]),
         "fab_eps_star": _num(out["fab"]["median_eps_star"]),
         "polytope_ratio": _num(poly["distance_ratio"]) if poly else None,
         # the ratio over all targets whether or not the search met its stopping rule (exploratory outcome)
         "polytope_ratio_unconverged": _num(poly.get("distance_ratio_all")) if poly else None,
         "nullspace_valid": null["valid_count"] / null["n"] if null and null.get("n") else None,
         "polytope_converged": poly.get("converged") if poly else None,
         "polytope_steps": poly.get("steps_used") if poly else None,  # the largest over the targets
         "epochs": entry["train"]["epochs"], "converged": entry["train"]["converged"],
         "stopped_by": entry["train"].get("stopped_by"), "final_train_acc": entry["train"]["final_train_acc"],
         "pgd_flags": sorted({f["id"] for res in pgd.values() for f in res.get("flags", [])})}
    for eps, res in pgd.items():
        r[f"robust_{eps}"] = res["robust_acc"]
    if out.get("autoattack"):
        r["aa_robust_0.3"] = out["autoattack"]["robust_acc"]
    return r


def load_rows(entries_dir: str | Path) -> list[dict]:
    """Rows of every ``*.json`` entry in ``entries_dir``, sorted by name."""
    paths = sorted(Path(entries_dir).glob("*.json"))
    if not paths:
        raise ValueError(f"no study entries (*.json) in {entries_dir}; run eval/study/run.py first")
    return [row(read_json(p)) for p in paths]


def config_means(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Seed means per configuration (None-aware), keeping family and level."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["config"], []).append(r)
    out = []
    for config, members in sorted(groups.items()):
        base = {"config": config, "family": members[0]["family"], "level": members[0]["level"],
                "n_seeds": len(members)}
        base.update({k: _mean([m.get(k) for m in members]) for k in keys})
        out.append(base)
    return out
