"""``EvalSettings``: the one schema, and the one set of defaults, of every evaluation in regcollide.

The end-of-run eval of training (the config's ``eval`` section, ``regcollide.training.config.EvalConfig``,
derives from this dataclass and adds only its on/off switches), ``regcollide attack pgd``,
``regcollide eval`` and :func:`regcollide.evaluation.evaluate_model` all read their defaults from here, so
the same model gets the same PGD numbers from each of them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from regcollide.evaluation import parts as _parts  # noqa: F401  (registers every part)
from regcollide.evaluation.registry import part_names

PARTS: tuple[str, ...] = part_names()
NORMS: tuple[str, ...] = ("linf", "l2")
# The most torch CPU threads an eval may ask for: far above any CPU's core count, far below the count at which
# the OpenMP runtime aborts allocating per-thread stacks (one line instead of a libgomp crash)
MAX_THREADS = 256
_COUNTS = ("n", "autoattack_n", "nullspace_n", "polytope_vertices", "polytope_samples", "polytope_targets",
           "polytope_steps", "batch_size", "pgd_steps", "pgd_restarts", "pgd_check_n")


@dataclass
class EvalSettings:
    """What to evaluate and how hard. Defaults suit the small CPU models of mnist5k.

    ``n`` test images feed clean accuracy, PGD and the polytope pool; AutoAttack attacks the first
    ``min(autoattack_n, n)`` of PGD's images (so the two compare on the same ones), the Null-space search
    the first ``nullspace_n``. PGD ease is Madry et al.'s PGD (ICLR 2018) with ``pgd_steps`` steps of size
    2.5·ε/steps and a ``pgd_bisection_steps``-step bisection for each sample's smallest ε*. ``data``
    overrides a run's dataset spec. ``num_threads`` is the torch CPU thread count during the eval; 0 picks
    one thread for small models (their kernels are too small to split, and extra threads only contend
    with other jobs) and leaves torch's setting for large ones.
    """

    parts: tuple[str, ...] = PARTS
    data: str | None = None
    n: int = 500
    norm: str = "linf"
    eps: float = 0.1
    pgd_steps: int = 40
    pgd_restarts: int = 1
    pgd_check_n: int = 100      # images for PGD's sanity checks (each check is one more PGD run)
    pgd_bisection_steps: int = 7   # bisection steps of the per-sample smallest ε* search
    autoattack_n: int = 200
    nullspace_n: int = 16
    polytope_vertices: int = 5
    polytope_samples: int = 500
    polytope_targets: int = 4   # target images of the polytope search (optimized as one batch)
    # Adam step budget of the polytope search, which stops earlier once converged; the default MLP's targets
    # converge after 2,750-9,000 steps, so a smaller budget leaves distance_ratio null
    polytope_steps: int = 10000
    batch_size: int = 250
    seed: int = 0
    num_threads: int = 0

    def __post_init__(self) -> None:
        self.parts = tuple(self.parts)
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown eval part(s) {unknown}; valid parts are {list(PARTS)}")
        if self.norm not in NORMS:
            raise ValueError(f"eval setting norm must be one of {list(NORMS)}, got {self.norm!r}")
        for name in _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"eval setting {name} must be an integer >= 1, got {value!r}")
        for name in ("pgd_bisection_steps", "seed", "num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"eval setting {name} must be an integer >= 0, got {value!r}")
        if self.num_threads > MAX_THREADS:
            raise ValueError(f"eval setting num_threads must be at most {MAX_THREADS}, got {self.num_threads!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not (
                math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eval setting eps must be a finite number > 0, got {self.eps!r}")
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            raise ValueError(f"eval setting data must be a dataset spec string or null, got {self.data!r}")

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
        raise ValueError(f"eval settings must be EvalSettings, a dict or None, not {type(settings).__name__}")

    def replace(self, **changes: Any) -> EvalSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parts"] = list(self.parts)
        return d


def default(name: str) -> Any:
    """The default of one EvalSettings field, for CLI options that must agree with the schema."""
    return {f.name: f for f in dataclasses.fields(EvalSettings)}[name].default
