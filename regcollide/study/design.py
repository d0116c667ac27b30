"""The study design: families of interventions × levels × seeds, expanded into hashed jobs.

A design file (``configs/study/design.yaml``) lists *families*. Each family sweeps one knob (a model name
template such as ``mlp-proj-k{level}``, a ``width``, or a regularizer weight) over ``levels``; every
(family, level) is one *configuration*, trained once per seed. A job's hash covers everything that
determines its entry (model, data, training, evaluation settings, seed), so a finished entry whose hash
matches is never recomputed and a crashed or re-queued job simply runs again.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STUDY_VERSION = 3  # bump when the entry format changes: old entries then no longer match their hash


class DesignError(ValueError):
    """A design file that cannot be used; the message is one line saying what to fix."""


@dataclass(frozen=True)
class Job:
    """One training run plus its measurements."""

    name: str            # "<family>-<level>-s<seed>", also the run folder and entry file name
    family: str          # random-effect group of the statistics
    config: str          # "<family>-<level>": the configuration seeds replicate
    level: float         # the swept value (k, r, h, width or regularizer weight)
    seed: int
    model: dict          # {name, width}
    regularizers: list   # [{name, weight, params}]
    data: str
    train: dict
    measure: dict
    teacher: str | None  # run name this job distills from (it must finish first)
    autoattack: bool     # AutoAttack at the study's ε on this job (the stated subset)
    nullspace: bool      # valid-image Null-space search on this job (the stated subset)

    @property
    def hash(self) -> str:
        payload = {k: getattr(self, k) for k in ("name", "model", "regularizers", "data", "train", "measure",
                                                 "seed", "teacher", "autoattack", "nullspace")}
        payload["version"] = STUDY_VERSION
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "config": self.config, "level": self.level,
                "seed": self.seed, "model": self.model, "regularizers": self.regularizers, "data": self.data,
                "train": self.train, "teacher": self.teacher, "autoattack": self.autoattack,
                "nullspace": self.nullspace, "hash": self.hash}


def _level_text(level: float) -> str:
    return f"{level:g}"


def _require(mapping: dict, key: str, where: str) -> Any:
    if key not in mapping:
        raise DesignError(f"{where}: missing '{key}' (see configs/study/design.yaml)")
    return mapping[key]


def _family_jobs(fam: dict, design: dict, seeds: list[int]) -> list[Job]:
    name = str(_require(fam, "family", "family entry"))
    levels = _require(fam, "levels", f"family {name}")
    if not isinstance(levels, list) or not levels:
        raise DesignError(f"family {name}: 'levels' must be a non-empty list")
    template = str(_require(fam, "model", f"family {name}"))
    jobs = []
    for level in levels:
        text = _level_text(float(level))
        width = float(level) if fam.get("sweep") == "width" else float(fam.get("width", 1.0))
        regs = []
        if "regularizer" in fam:
            weight = float(level) if fam.get("sweep", "weight") == "weight" else float(fam.get("weight", 1.0))
            regs = [{"name": fam["regularizer"], "weight": weight, "params": dict(fam.get("params") or {})}]
        for seed in seeds:
            teacher = fam["teacher"].format(seed=seed) if fam.get("teacher") else None
            run = f"{name}-{text}-s{seed}"
            jobs.append(Job(
                name=run, family=name, config=f"{name}-{text}", level=float(level), seed=int(seed),
                model={"name": template.format(level=int(float(level)) if "{level" in template else level),
                       "width": width},
                regularizers=copy.deepcopy(regs), data=str(design.get("data", "mnist5k")),
                train={**design.get("train", {}), **(fam.get("train") or {})}, measure=dict(design["measure"]),
                teacher=teacher, autoattack=(run in set(design.get("autoattack_runs") or [])
                                              or seed in set(design.get("autoattack_seeds") or [])),
                nullspace=seed in set(design.get("nullspace_seeds", seeds))))
    return jobs


def expand(design: dict) -> list[Job]:
    """All jobs of a design dict; names are unique and teachers name jobs of the same design."""
    seeds = [int(s) for s in _require(design, "seeds", "design")]
    _require(design, "measure", "design")
    jobs = [job for fam in _require(design, "families", "design") for job in _family_jobs(fam, design, seeds)]
    names = [j.name for j in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DesignError(f"design: job names repeat {repeated[:5]}; give each family a unique 'family' name")
    missing = sorted({j.teacher for j in jobs if j.teacher and j.teacher not in names})
    if missing:
        raise DesignError(f"design: teacher run(s) {missing[:3]} are not jobs of the design")
    return jobs


def load_design(path: str | Path, quick: bool = False) -> dict:
    """Read a design YAML; ``quick`` applies its ``quick:`` overrides (CI size) on top."""
    path = Path(path)
    if not path.is_file():
        raise DesignError(f"design file {path} does not exist; pass --design configs/study/design.yaml")
    design = yaml.safe_load(path.read_text())
    if not isinstance(design, dict):
        raise DesignError(f"{path}: expected a mapping at the top level")
    if quick:
        for key, value in (design.get("quick") or {}).items():
            design[key] = ({**design[key], **value} if isinstance(value, dict) and isinstance(design.get(key), dict)
                           else value)
    return design


def phases(jobs: list[Job]) -> list[list[Job]]:
    """Seed by seed (a study stopped by its time budget still covers every configuration evenly), and
    within a seed the jobs without a teacher before the students (a teacher's weights must exist first)."""
    out = []
    for seed in sorted({j.seed for j in jobs}):
        same = [j for j in jobs if j.seed == seed]
        out += [[j for j in same if not j.teacher], [j for j in same if j.teacher]]
    return [p for p in out if p]
