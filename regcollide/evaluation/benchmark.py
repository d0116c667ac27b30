"""One call to benchmark any ``nn.Module``, in the spirit of RobustBench's ``benchmark``: clean accuracy,
AutoAttack (standard version; Croce & Hein, ICML 2020) and PGD (Madry et al., ICLR 2018) on the same
``n`` images, under one threat model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from regcollide.evaluation.evaluate import evaluate_model
from regcollide.evaluation.settings import EvalSettings

THREAT_MODELS = {"Linf": "linf", "L2": "l2"}


@dataclass
class BenchmarkResult:
    """Accuracies are fractions of the ``n`` images; ``entry`` is the full eval entry (JSON-ready)."""

    threat_model: str
    eps: float
    n: int
    clean_acc: float
    autoattack_acc: float
    pgd_acc: float
    seconds: float
    entry: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"threat_model": self.threat_model, "eps": self.eps, "n": self.n, "clean_acc": self.clean_acc,
                "autoattack_acc": self.autoattack_acc, "pgd_acc": self.pgd_acc, "seconds": self.seconds,
                "entry": self.entry}


def benchmark(model: nn.Module, data: Any, threat_model: str = "Linf", eps: float = 8 / 255, n: int = 1000, *,
              seed: int = 0, accelerator=None, progress: bool = False, **settings: Any) -> BenchmarkResult:
    """Clean, AutoAttack and PGD accuracy of ``model`` on the first ``n`` images of ``data``.

    ``data`` is anything :func:`evaluate_model` takes (a dataset spec, ``(images, labels)``, a Dataset or
    a DataLoader); images are in [0, 1] and the model normalizes internally, so ``eps`` is in pixel
    units. ``threat_model`` is RobustBench's name (``"Linf"`` or ``"L2"``). Extra keyword arguments are
    :class:`EvalSettings` fields (e.g. ``pgd_steps=100``).

    Example::

        result = benchmark(model, (images, labels), threat_model="Linf", eps=8 / 255, n=500)
        result.clean_acc, result.autoattack_acc
    """
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"threat_model must be one of {sorted(THREAT_MODELS)}, got {threat_model!r}")
    chosen = EvalSettings(**{"parts": ("clean", "pgd", "autoattack"), "n": n, "autoattack_n": n,
                             "norm": THREAT_MODELS[threat_model], "eps": eps, "seed": seed, **settings})
    entry = evaluate_model(model, data, chosen, accelerator=accelerator, progress=progress, label="benchmark")
    return BenchmarkResult(threat_model=threat_model, eps=float(eps), n=entry["pgd"]["n"],
                           clean_acc=entry["clean_acc"], autoattack_acc=entry["autoattack"]["robust_acc"],
                           pgd_acc=entry["pgd"]["robust_acc"], seconds=round(sum(entry["timings"].values()), 3),
                           entry=entry)
