"""Sampling and measurements for the polytope search (Li, Zhang & Malik, NeurIPS 2019, Tables 2 and 4).

Pure tensor helpers: Dirichlet(1) convex combinations of vertices, the random-sphere control, pairwise
distances and batched predictions with the layer's features. ``regcollide.attacks.polytope.evaluate`` combines
them into ``evaluate_polytope``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from regcollide.attacks.polytope.hooks import capture_preactivation

SAMPLER = "dirichlet(1)"


def dirichlet_weights(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``(n, k)`` weights, uniform on the probability simplex (Dirichlet with all concentrations 1).

    Normalized i.i.d. Exp(1) draws are Dirichlet(1); drawing them from ``generator`` keeps runs
    reproducible (``torch.distributions`` takes no generator).
    """
    uniform = torch.rand(n, k, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    exponential = -torch.log(uniform)
    return exponential / exponential.sum(1, keepdim=True)


def convex_samples(vertices: Tensor, weights: Tensor) -> Tensor:
    """Convex combinations ``(n, C, H, W)`` of ``vertices`` (K, C, H, W) with ``weights`` (n, K).

    Computed in float64; the final clamp only removes float rounding (a convex combination of points in
    [0, 1] lies in [0, 1]).
    """
    flat = vertices.flatten(1).to(torch.float64)  # (K, D)
    points = weights.to(flat.device) @ flat  # (n, D)
    return points.clamp(0.0, 1.0).to(vertices.dtype).reshape(-1, *vertices.shape[1:])


def sphere_points(center: Tensor, radius: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` points uniform on the sphere of ``radius`` around ``center`` (C, H, W); not clipped."""
    directions = torch.randn(n, center.numel(), generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    points = center.flatten().to(torch.float64).cpu() + radius * directions  # (n, D)
    return points.to(center.dtype).to(center.device).reshape(n, *center.shape)


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean L2 distance over all unordered pairs of the rows of ``x`` (n, ...)."""
    return float(torch.pdist(x.flatten(1).to(torch.float64)).mean())


def data_distance(images: Tensor, pairs: int, generator: torch.Generator) -> tuple[float, int]:
    """Mean L2 distance between ``pairs`` random pairs of distinct ``images`` (N, C, H, W).

    With fewer than ``pairs`` distinct pairs available, all of them are used. Returns (distance, pairs).
    """
    n = len(images)
    if n < 2:
        raise ValueError("data_distance needs at least 2 dataset images; pass data_images=")
    if n * (n - 1) // 2 <= pairs:
        return mean_pairwise_distance(images), n * (n - 1) // 2
    first = torch.randint(0, n, (pairs,), generator=generator)
    # a shift in [1, n-1] makes the second index always different from the first
    second = (first + torch.randint(1, n, (pairs,), generator=generator)) % n
    flat = images.flatten(1).to(torch.float64)
    return float((flat[first] - flat[second.to(first.device)]).norm(dim=1).mean()), pairs


@torch.no_grad()
def predict_with_features(
    model: nn.Module, layer: str, x: Tensor, batch_size: int = 500
) -> tuple[Tensor, Tensor]:
    """Softmax probabilities ``(N, classes)`` and pre-activations ``(N, D)`` of ``layer``, in batches."""
    probs, feats = [], []
    with capture_preactivation(model, layer) as store:
        for start in range(0, len(x), batch_size):
            store.pop("z", None)
            probs.append(model(x[start:start + batch_size]).softmax(1))
            feats.append(store["z"])
    return torch.cat(probs), torch.cat(feats)


def relative_residuals(z: Tensor, t: Tensor) -> Tensor:
    """``||relu(z) - relu(t)|| / ||relu(t)||`` per row of ``z`` (N, D), for the target's ``t`` (D,)."""
    relu_t = t.clamp_min(0)
    return (z.clamp_min(0) - relu_t).norm(dim=1) / relu_t.norm().clamp_min(1e-12)
