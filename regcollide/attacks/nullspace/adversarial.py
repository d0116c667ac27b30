"""Colliding adversarial examples: many adversarial images with one prediction (Ozbulak et al., Eq. 7).

Ozbulak et al., "Exact Feature Collisions in Neural Networks" (arXiv 2022), Eq. 7: take an adversarial
example x′ = A(x) and add kernel perturbations of W1, x̂ = x′ + P. Since W1·P = 0 the model sees x′ exactly,
so every x̂ carries x′'s (wrong) prediction. We keep x̂ inside the attack's budget, ‖x̂ − x‖∞ ≤ ε, and in
[0, 1] by fitting P into that box (never by clipping, which would leave the kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from regcollide._modes import eval_mode
from regcollide.attacks.nullspace.search import MIN_DISTANCE, NullspaceSearch, exactness, measure


@dataclass
class CollidingAdversarial:
    """Result of :func:`colliding_adversarial`; tensors are index i·K + j (collision j of image i)."""

    adversarial: Tensor  # (N, C, H, W) x′
    images: Tensor  # (N·K, C, H, W) x̂
    exact: bool
    reason: str
    count: int  # colliding examples ≥ min_distance (L2) from x′ and from every other one counted
    min_distance: float  # the L2 separation that makes two examples "distinct"
    eps: float
    max_linf_to_clean: float  # max ‖x̂ − x‖∞, ≤ ε
    min_pixel: float
    max_pixel: float
    mean_l2_to_adversarial: float  # mean ‖x̂ − x′‖₂
    mean_pairwise_l2: float  # mean ‖x̂_j − x̂_k‖₂ over the pairs of one x′
    min_pairwise_l2: float
    agreement_with_adversarial: float  # share of x̂ predicted like x′
    adversarial_success: float  # share of x′ that fool the model (prediction ≠ label)
    max_rel_output_residual: float  # max |g(x̂) − g(x′)| / max |g(x′)|
    distances_to_adversarial: list[float]  # ‖x̂ − x′‖₂ per example, index i·K + j
    pairwise_l2: list[list[float]]  # per image i: ‖x̂_j − x̂_k‖₂ for j < k, in row-major order

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("adversarial", "images")}


def count_distinct(to_adversarial: Tensor, pairwise: Tensor, min_distance: float) -> int:
    """How many examples are pairwise ≥ ``min_distance`` apart and ≥ ``min_distance`` from their x′.

    to_adversarial (N, K) and pairwise (N, K, K) L2 distances. Greedy in index order per image: an example
    counts if it is far enough from x′ and from every example of the same image already counted, so two
    examples 1e-10 apart count once, and an example that barely moved does not count at all.
    """
    total = 0
    for far, dist in zip(to_adversarial >= min_distance, pairwise):
        kept: list[int] = []
        for j in far.nonzero().flatten().tolist():
            if all(dist[j, k] >= min_distance for k in kept):
                kept.append(j)
        total += len(kept)
    return total


def run_attack(attack: Callable, images: Tensor, labels: Tensor) -> Tensor:
    """x′ from any attack callable: it returns a tensor, or an object with ``.adv`` (e.g. ``PGDOutput``)."""
    out = attack(images, labels)
    return out.adv if hasattr(out, "adv") else out


@torch.no_grad()
def colliding_adversarial(model: nn.Module, images: Tensor, labels: Tensor, eps: float,
                          attack: Callable | None = None, collisions: int = 4, beta: float = 1.0,
                          mode: str = "random", seed: int = 0, batch_size: int = 16,
                          min_distance: float = MIN_DISTANCE) -> CollidingAdversarial:
    """K colliding adversarial examples per image around x′ = attack(x) (default: L∞ PGD, 40 steps, at ε).

    images (N, C, H, W) in [0, 1], labels (N,). The attack must respect the same L∞ budget ε. ``count``
    includes only examples at least ``min_distance`` (L2, pixel units) from x′ and from each other; the
    distances themselves are in the result.
    """
    if not (math.isfinite(eps) and eps > 0 and math.isfinite(min_distance) and min_distance > 0):
        raise ValueError(f"eps and min_distance must be finite and > 0 (got {eps}, {min_distance}).")
    with eval_mode(model):
        if attack is None:
            from regcollide.attacks.pgd.attack import PGD

            attack = PGD(model, eps=eps, steps=40, norm="linf", seed=seed)
        with torch.enable_grad():
            adversarial = run_attack(attack, images, labels).detach()
        clean = images.double()
        # the budget box; widened by the attack's own float32 round-off so that x′ lies inside it
        low = torch.minimum((clean - eps).clamp_min(0.0), adversarial.double())
        high = torch.maximum((clean + eps).clamp_max(1.0), adversarial.double())
        search = NullspaceSearch(model, beta=beta, mode=mode, collisions=collisions, seed=seed,
                                 batch_size=batch_size)
        delta, plan, note = search.perturbations(adversarial, low, high)
        k = collisions
        colliding = (adversarial.double().repeat_interleave(k, 0) + delta).to(images.dtype)
        measured = measure(model, plan.layer_name, adversarial, colliding, k, batch_size, keep=0)
        logits = model(adversarial)
    exact, reason = exactness(plan, note, measured["rel_output_residual"], measured["rel_first_layer_residual"],
                              measured["mismatched"])
    moved = (colliding - adversarial.repeat_interleave(k, 0)).flatten(1).double()  # (N·K, D)
    groups = colliding.flatten(1).double().reshape(len(images), k, -1)  # (N, K, D)
    pairwise = torch.cdist(groups, groups)  # (N, K, K)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    pairs = pairwise[:, upper]  # (N, K(K−1)/2)
    success = (logits.argmax(1) != labels).double().mean().item() if logits.dim() == 2 else float("nan")
    return CollidingAdversarial(
        adversarial=adversarial, images=colliding, exact=exact, reason=reason,
        count=count_distinct(moved.norm(dim=1).reshape(len(images), k), pairwise, min_distance),
        min_distance=min_distance, eps=eps,
        max_linf_to_clean=(colliding - images.repeat_interleave(k, 0)).abs().max().item(),
        min_pixel=colliding.min().item(), max_pixel=colliding.max().item(),
        mean_l2_to_adversarial=moved.norm(dim=1).mean().item(),
        mean_pairwise_l2=pairs.mean().item() if pairs.numel() else 0.0,
        min_pairwise_l2=pairs.min().item() if pairs.numel() else 0.0,
        agreement_with_adversarial=measured["agreement"].mean().item(), adversarial_success=success,
        max_rel_output_residual=measured["rel_output_residual"].max().item(),
        distances_to_adversarial=moved.norm(dim=1).tolist(), pairwise_l2=pairs.tolist())
