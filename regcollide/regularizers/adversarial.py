"""Adversarial-training baselines: PGD-AT (Madry et al.) and TRADES (Zhang et al.).

Both *replace* the task loss (``replaces_task_loss = True``): the term they return already contains the
classification loss, so the training script must not add the clean cross-entropy as well.

BatchNorm semantics. The inner maximisation runs with the model in eval mode (running statistics, no
statistics update; ``regcollide.attacks.pgd.attack.PGD`` switches and restores the mode, and so does
``kl_pgd`` here), as the TRADES reference code does. The outer loss forward on the adversarial batch
runs in the model's current mode, so in training BatchNorm normalises adversarial batches with their own
statistics and updates its running averages with them (the clean forward that produced ``outputs`` has
already updated them once).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regcollide._modes import eval_mode
from regcollide.attacks.pgd.attack import PGD
from regcollide.regularizers.base import Regularizer, check_positive


def kl_pgd(model: nn.Module, images: Tensor, target_probs: Tensor, eps: float, alpha: float, steps: int,
           start_noise: float = 0.001) -> Tensor:
    """L∞ PGD that maximises KL(target_probs ‖ softmax(model(x'))) in the ε-ball around ``images``.

    The inner loop of TRADES (Zhang et al. 2019) and, with the teacher's probabilities as target, of RSLAD
    (Zi et al. 2021). Starts at ``images`` plus small Gaussian noise; runs in eval mode; returns detached
    adversarial images ``(B, C, H, W)`` in [0, 1] with ‖x' − x‖∞ ≤ eps.
    """
    images = images.detach()
    target_probs = target_probs.detach()
    adv = (images + start_noise * torch.randn_like(images)).clamp(0, 1)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            divergence = F.kl_div(F.log_softmax(model(adv), dim=1), target_probs, reduction="sum")
            (grad,) = torch.autograd.grad(divergence, adv)
            adv = adv.detach() + alpha * grad.sign()
            adv = torch.min(torch.max(adv, images - eps), images + eps).clamp(0, 1)
    return adv.detach()


def default_step(eps: float, steps: int, alpha: float | None) -> float:
    """Step size: the given one, or Madry et al.'s rule of thumb 2.5 · ε / steps."""
    return alpha if alpha is not None else 2.5 * eps / steps


class PGDAdversarialTraining(Regularizer):
    """PGD adversarial training: cross-entropy on PGD adversarial examples (replaces the task loss).

    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial
    Attacks" (ICLR 2018). The attack is ``regcollide.attacks.pgd.attack.PGD`` (untargeted, maximises the
    cross-entropy, ε-ball in pixel units, images kept in [0, 1]).

    Args:
        eps: perturbation budget in pixel units (MNIST: 0.1–0.3; CIFAR-10: 8/255).
        alpha: step size; default 2.5 · eps / steps.
        steps: PGD iterations per training step.
        norm: ``linf`` or ``l2``.
        random_start: start from a uniform random point in the ball (Madry et al.).
        seed: base seed of the random starts (step t uses seed + t, so runs reproduce).
    """

    name = "pgd_at"
    replaces_task_loss = True

    def __init__(self, eps: float = 0.1, alpha: float | None = None, steps: int = 10,
                 norm: Literal["linf", "l2"] = "linf", random_start: bool = True, seed: int = 0):
        check_positive("eps", eps)
        check_positive("steps", steps)
        self.eps, self.alpha, self.steps, self.norm, self.random_start = eps, alpha, steps, norm, random_start
        self.seed, self._calls = seed, 0

    def adversarial(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        # Full-length trajectories (no early stop: training wants the loss maximiser, not the first
        # fooling iterate) and a fresh random start per step (PGD seeds a private generator).
        self._calls += 1
        attack = PGD(model, eps=self.eps, alpha=default_step(self.eps, self.steps, self.alpha),
                     steps=self.steps, norm=self.norm, random_start=self.random_start,
                     batch_size=max(1, len(images)), seed=self.seed + self._calls, early_stop=False)
        return attack(images, labels).adv.detach()

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        adv = self.adversarial(model, batch["image"], batch["label"])  # (B, C, H, W)
        return F.cross_entropy(model(adv), batch["label"])


class TRADES(Regularizer):
    """TRADES: clean cross-entropy + β · KL(clean ‖ adversarial) (replaces the task loss).

    Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between Robustness and
    Accuracy" (ICML 2019). The adversarial example maximises the KL divergence between the model's clean
    and perturbed predictions (``kl_pgd``, L∞), not the cross-entropy, so it does not use ``PGD``.
    The term is ``CE(outputs, y) + β · KL(softmax(outputs) ‖ softmax(model(x')))``, both halves
    differentiated, as in the reference implementation.

    Args:
        beta: robustness weight β (the paper uses 1–6; larger is more robust, less accurate).
        eps: L∞ budget in pixel units.
        alpha: step size; default 2.5 · eps / steps.
        steps: inner maximisation steps.
    """

    name = "trades"
    replaces_task_loss = True

    def __init__(self, beta: float = 6.0, eps: float = 0.1, alpha: float | None = None, steps: int = 10):
        check_positive("beta", beta, allow_zero=True)
        check_positive("eps", eps)
        check_positive("steps", steps)
        self.beta, self.eps, self.alpha, self.steps = beta, eps, alpha, steps

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        images, labels = batch["image"], batch["label"]
        with eval_mode(model), torch.no_grad():
            clean_probs = F.softmax(model(images), dim=1)  # (B, K) the point the attack moves away from
        adv = kl_pgd(model, images, clean_probs, self.eps, default_step(self.eps, self.steps, self.alpha),
                     self.steps)
        divergence = F.kl_div(F.log_softmax(model(adv), dim=1), F.softmax(outputs, dim=1),
                              reduction="batchmean")
        return F.cross_entropy(outputs, labels) + self.beta * divergence
