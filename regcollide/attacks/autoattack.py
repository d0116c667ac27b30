"""AutoAttack robust accuracy, through the `pyautoattack` package (standard version, unchanged).

Reference: F. Croce, M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. The standard version runs APGD-CE, APGD-T, FAB-T and Square, each on
the points the previous ones left robust, with the package's own iteration counts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from regcollide._modes import eval_mode
from regcollide.attacks.checks import Flag

NORMS = {"linf": "Linf", "l2": "L2"}


@dataclass
class AutoAttackResult:
    norm: str
    eps: float
    seed: int
    version: str
    n: int
    clean_acc: float
    robust_acc: float
    breakdown: list[dict]  # [{attack, robust_acc, attacked, seconds}] in ensemble order, cumulative
    package_version: str
    flags: list[Flag] = field(default_factory=list)  # AutoAttack's own warnings (its checks.py)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class _Collect(logging.Handler):
    """Keeps AutoAttack's warnings (randomness, softmax outputs, ...) so they become result flags."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def evaluate_autoattack(model: nn.Module, images: Tensor, labels: Tensor, norm: str = "linf", eps: float = 0.1,
                        seed: int = 0, batch_size: int = 250, verbose: bool = False) -> AutoAttackResult:
    """Robust accuracy under AutoAttack (standard) with a per-attack breakdown.

    The ensemble is driven one attack at a time through `AutoAttack.run_standard_evaluation`, each call
    on the points still robust, which is exactly what the package's own loop does (same attack objects,
    settings, seed and order); this only makes the accuracy after each attack observable. The global
    torch RNG, which the package reseeds, is restored afterwards. Runs on the device of ``images``.
    """
    from importlib.metadata import version as package_version

    from pyautoattack import AutoAttack

    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    start, n = time.perf_counter(), len(images)
    logger = logging.getLogger("auto-attack")
    collect, old_level = _Collect(), logger.level
    logger.addHandler(collect)
    if verbose:
        logger.setLevel(logging.DEBUG)
        stream = logging.StreamHandler()
        logger.addHandler(stream)
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            adversary = AutoAttack(model, norm=NORMS[norm], eps=eps, seed=seed, version="standard",
                                   device=images.device)
            with torch.no_grad():
                robust = torch.cat([model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]
                                    for i in range(0, n, batch_size)])  # (N,)
            clean_acc = int(robust.sum()) / n
            breakdown = []
            for attack in list(adversary.attacks_to_run):
                started, idx = time.perf_counter(), robust.nonzero()[:, 0]
                if len(idx):
                    adversary.attacks_to_run = [attack]
                    _, y_adv = adversary.run_standard_evaluation(images[idx], labels[idx], batch_size=batch_size)
                    robust[idx[y_adv != labels[idx]]] = False
                breakdown.append({"attack": attack, "robust_acc": int(robust.sum()) / n, "attacked": len(idx),
                                  "seconds": time.perf_counter() - started})
    finally:
        logger.removeHandler(collect)
        if verbose:
            logger.removeHandler(stream)
        logger.setLevel(old_level)
    flags = [Flag("autoattack_warning", m) for m in dict.fromkeys(collect.messages)]
    return AutoAttackResult(norm=norm, eps=float(eps), seed=seed, version="standard", n=n, clean_acc=clean_acc,
                            robust_acc=int(robust.sum()) / n, breakdown=breakdown,
                            package_version=package_version("pyautoattack"), flags=flags,
                            seconds=time.perf_counter() - start)
