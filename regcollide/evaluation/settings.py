"""Evaluation settings, the hashes that key the eval cache, and the package versions an entry records.

A finished part of an eval entry is reused only when both the weights (the bytes of ``model.safetensors``)
and the settings that part depends on are unchanged, so each part carries its own hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARTS: tuple[str, ...] = ("clean", "pgd", "autoattack", "audit", "nullspace", "polytope")
# Parts measured per test sample (sharded across processes) vs. once per model (main process only).
PER_SAMPLE_PARTS: tuple[str, ...] = ("clean", "pgd", "autoattack")
PER_MODEL_PARTS: tuple[str, ...] = ("audit", "nullspace", "polytope")


@dataclass
class EvalSettings:
    """What to evaluate and how hard. Defaults suit a small CPU study on mnist5k.

    ``n`` test images feed clean accuracy and PGD; AutoAttack, Null-space and polytope use their own
    (smaller) counts because they cost more per image. AutoAttack attacks the first
    ``min(autoattack_n, n)`` of PGD's images, so its robust accuracy compares with PGD's on the same ones.
    ``data`` overrides the run's dataset spec.
    """

    parts: tuple[str, ...] = PARTS
    data: str | None = None
    n: int = 500
    norm: str = "linf"
    eps: float = 0.1
    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_check_n: int = 100      # images for PGD's sanity checks (each check is one more PGD run)
    pgd_bisection_steps: int = 7   # bisection steps of the per-sample smallest ε* search
    autoattack_n: int = 200
    nullspace_n: int = 16
    polytope_vertices: int = 5
    polytope_samples: int = 500
    polytope_targets: int = 4   # target images of the polytope search (one polytope each)
    polytope_steps: int = 2000  # optimizer steps per vertex
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        self.parts = tuple(self.parts)
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown eval part(s) {unknown}; valid parts are {list(PARTS)}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        for name in ("n", "autoattack_n", "nullspace_n", "polytope_vertices", "polytope_samples",
                     "batch_size", "pgd_steps", "pgd_restarts", "pgd_check_n", "polytope_targets", "polytope_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval setting {name} must be >= 1, got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"eval setting eps must be > 0, got {self.eps}")

    @classmethod
    def from_any(cls, settings: EvalSettings | dict | None) -> EvalSettings:
        """Accept a ready object, a plain dict (unknown keys are an error), or None for the defaults."""
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, dict):
            valid = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(settings) - valid)
            if unknown:
                raise ValueError(f"unknown eval setting(s) {unknown}; valid settings are {sorted(valid)}")
            return cls(**settings)
        raise TypeError(f"settings must be EvalSettings, dict or None, not {type(settings).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parts"] = list(self.parts)
        return d


# The settings each part depends on; anything else may change without invalidating the part.
_PART_KEYS: dict[str, tuple[str, ...]] = {
    "clean": ("n", "seed"),
    "pgd": ("n", "seed", "norm", "eps", "pgd_steps", "pgd_restarts", "pgd_check_n", "pgd_bisection_steps"),
    "autoattack": ("autoattack_n", "seed", "norm", "eps"),
    "audit": (),
    "nullspace": ("nullspace_n", "seed"),
    "polytope": ("n", "polytope_vertices", "polytope_samples", "polytope_targets", "polytope_steps", "seed"),
}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(path: str | Path) -> str:
    """SHA-256 of the weight file bytes (streamed; weight files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def settings_hash(settings: EvalSettings) -> str:
    d = settings.to_dict()
    d.pop("parts")  # selecting fewer parts does not change how any part is computed
    d.pop("batch_size")  # batching changes speed, not results
    return _digest(d)


def autoattack_subset(settings: EvalSettings) -> int:
    """How many images AutoAttack attacks: the first k of PGD's ``n`` (never images PGD did not see)."""
    return min(settings.autoattack_n, settings.n)


def part_hash(part: str, settings: EvalSettings, weights: str, data_spec: str) -> str:
    """Cache key of one part: weights + dataset + exactly the settings that part reads."""
    relevant = {k: getattr(settings, k) for k in _PART_KEYS[part]}
    if part == "autoattack":
        # AutoAttack attacks the first min(autoattack_n, n) of PGD's images; n matters only below that.
        relevant["autoattack_n"] = autoattack_subset(settings)
    return _digest({"part": part, "weights": weights, "data": data_spec, "settings": relevant})


_VERSIONED = ("regcollide", "torch", "torchvision", "timm", "accelerate", "datasets", "pyautoattack",
              "scipy", "numpy", "safetensors")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass
class PartOutcome:
    """One part's value (a dict or a number), or None with the reason it could not apply."""

    value: Any = None
    reason: str | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
