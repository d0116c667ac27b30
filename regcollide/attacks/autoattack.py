"""AutoAttack robust accuracy, through the `pyautoattack` package (standard version, unchanged).

Reference: F. Croce, M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. `pyautoattack` is a PyPI repackaging of the official AutoAttack; its
standard settings and attack loop match the original. The standard version runs APGD-CE, APGD-T, FAB-T and
Square, each on the points the previous ones left robust, with the package's own iteration counts.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from regcollide._modes import eval_mode
from regcollide.attacks.checks import Flag, check_batch

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
                        seed: int = 0, batch_size: int = 250, verbose: bool = False,
                        progress: bool = False) -> AutoAttackResult:
    """Robust accuracy under AutoAttack (standard) with a per-attack breakdown.

    The ensemble is driven one attack at a time through `AutoAttack.run_standard_evaluation`, each call
    on the points still robust, which is exactly what the package's own loop does (same attack objects,
    settings, seed and order); this only makes the accuracy after each attack observable, and lets
    ``progress`` show one labelled step per sub-attack (apgd-ce, apgd-t, fab-t, square) on stderr. The
    global torch RNG, which the package reseeds, is restored afterwards. Runs on the device of ``images``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    check_batch(images, labels)
    # Deferred: pyautoattack takes seconds to import, and importing regcollide.evaluation must stay fast.
    from pyautoattack import AutoAttack

    start = time.perf_counter()
    logger = logging.getLogger("auto-attack")
    collect, old_level = _Collect(), logger.level
    handlers: list[logging.Handler] = [collect] + ([logging.StreamHandler()] if verbose else [])
    for handler in handlers:
        logger.addHandler(handler)
    if verbose:
        logger.setLevel(logging.DEBUG)
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            adversary = AutoAttack(model, norm=NORMS[norm], eps=eps, seed=seed, version="standard",
                                   device=images.device)
            clean, robust, breakdown = _run_ensemble(adversary, model, images, labels, batch_size, progress)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(old_level)
    n = max(len(images), 1)
    flags = [Flag("autoattack_warning", m) for m in dict.fromkeys(collect.messages)]
    return AutoAttackResult(norm=norm, eps=float(eps), seed=seed, version="standard", n=len(images),
                            clean_acc=clean / n, robust_acc=int(robust.sum()) / n, breakdown=breakdown,
                            package_version=package_version("pyautoattack"), flags=flags,
                            seconds=time.perf_counter() - start)


def _run_ensemble(adversary, model: nn.Module, images: Tensor, labels: Tensor, batch_size: int,
                  progress: bool) -> tuple[int, Tensor, list[dict]]:
    """(clean count, robust mask (N,), breakdown): each attack on the points the previous ones left robust."""
    n = len(images)
    with torch.no_grad():
        robust = torch.cat([model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]
                            for i in range(0, n, batch_size)]) if n else torch.zeros(0, dtype=torch.bool)  # (N,)
    clean, breakdown = int(robust.sum()), []
    attacks = list(adversary.attacks_to_run)
    bar = tqdm(attacks, desc="AutoAttack", unit="attack", disable=not progress, leave=False, file=sys.stderr)
    for attack in bar:
        idx = robust.nonzero()[:, 0]
        bar.set_description(f"AutoAttack {attack} on {len(idx)} robust images")
        started = time.perf_counter()
        if len(idx):
            adversary.attacks_to_run = [attack]
            _, y_adv = adversary.run_standard_evaluation(images[idx], labels[idx], batch_size=batch_size)
            robust[idx[y_adv != labels[idx]]] = False
        breakdown.append({"attack": attack, "robust_acc": int(robust.sum()) / max(n, 1), "attacked": len(idx),
                          "seconds": time.perf_counter() - started})
    adversary.attacks_to_run = attacks
    return clean, robust, breakdown
