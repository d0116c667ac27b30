"""Intervention architectures for the collision study: each moves one structural quantity, the rest fixed.

Ozbulak et al., "Exact Feature Collisions in Neural Networks", tie collisions to the null space of the first
weight matrix W1 (nullity(W1) = in − rank(W1)); Li, Zhang & Malik (NeurIPS 2019) to ReLU layers that map
whole polytopes to one feature. The families below set those quantities by construction:

- ``mlp-h{h}``: 784 → h → 64 → 10 ReLU MLP; the first-layer width h alone sets nullity(W1) = max(0, 784 − h).
- ``mlp-proj-k{k}``: ``mlp-h784`` (W1 square, nullity 0 at init) whose first layer is W1 (I − P_k) with P_k
  a fixed, frozen orthogonal projector of rank k. The projection is a ``torch.nn.utils.parametrize``
  parametrization, so ``layer.weight`` (what the audit, the regularizers and the attacks read) is the
  projected matrix and nullity(W1) ≥ k holds for every trained weight, not only at init. The projectors
  are nested (P_k uses the first k columns of one fixed orthogonal matrix), so the sweep is monotone.
- ``mlp-rank-r{r}``: ``mlp-h256`` with a rank-r linear bottleneck (256 → r → 64, no ReLU in between) after
  layer 1: the product map has rank ≤ r while the first-layer width stays 256.
- ``mlp-pm-h{h}``: an injective-ReLU first layer, W = [B; −B] (Lu et al.'s concatenated ReLU construction):
  ReLU([Bx; −Bx]) keeps Bx exactly, so no information is lost at the ReLU; B has h × 784 parameters, as
  ``mlp-h{h}``'s W1 (matched parameter count in the first layer).

- ``vit-p{p}-d{d}``: a 2-block ViT with patch size p and embedding dimension d; on 28 × 28 images p = 4 and
  p = 7 have the same parameter count at every d, and nullity(W1) = max(0, p² − d) of the patch embedding.

``width`` scales the 64-unit second hidden layer of the MLPs (the ViTs' MLP ratio), as in the other registry
models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from regcollide.models.normalize import Normalize, WithNormalize, default_stats, scaled
from regcollide.models.registry import register_model

HIDDEN_WIDTHS = (32, 64, 128, 256, 392, 512, 784, 1024)
PROJECTION_RANKS = (0, 98, 196, 392, 588, 686, 735)
BOTTLENECK_RANKS = (2, 4, 8, 16, 32, 64)
PLUS_MINUS_WIDTHS = (128, 256, 392, 784)
VIT_PATCHES = (4, 7)
VIT_EMBED_DIMS = (16, 24, 32, 48, 64)
PROJECTOR_SEED = 20190  # one fixed orthogonal matrix for every k: nested, reproducible projectors


class RemoveSubspace(nn.Module):
    """Parametrization W ↦ W (I − Q Qᵀ): the rows of W lose their component in span(Q), a frozen buffer.

    For k > in/2 the same map is computed as W Q_c Q_cᵀ with the (in − k) complementary columns Q_c, which
    is cheaper (the cost scales with the smaller of k and in − k).
    """

    def __init__(self, basis: Tensor, complement: bool = False):
        super().__init__()
        self.complement = complement
        self.register_buffer("basis", basis)  # (in, k) or (in, in − k) orthonormal columns; never trained

    def forward(self, weight: Tensor) -> Tensor:  # (out, in) -> (out, in)
        kept = (weight @ self.basis) @ self.basis.T
        return kept if self.complement else weight - kept


def orthogonal_matrix(dim: int, seed: int = PROJECTOR_SEED) -> Tensor:
    """A fixed random orthogonal (dim, dim) matrix (QR of a seeded Gaussian, signs fixed: Haar)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # (dim, dim)


def projector_parametrization(dim: int, k: int) -> RemoveSubspace:
    """W ↦ W (I − P_k), P_k onto the first k columns of ``orthogonal_matrix(dim)`` (nested in k)."""
    q = orthogonal_matrix(dim).float()
    return RemoveSubspace(q[:, k:].contiguous(), complement=True) if 2 * k > dim else RemoveSubspace(q[:, :k])


class PlusMinusLinear(nn.Linear):
    """y = [Bx + b; −(Bx + b)]: a (2·out) linear map whose ReLU is injective (ReLU(z) − ReLU(−z) = z)."""

    def forward(self, x: Tensor) -> Tensor:  # (B, in) -> (B, 2·out)
        z = super().forward(x)
        return torch.cat([z, -z], dim=1)


def _head(features: int, num_classes: int, width: float) -> list[nn.Module]:
    hidden = scaled(64, width)
    return [nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]


def first_width_mlp(h: int, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                    width: float = 1.0) -> nn.Sequential:
    """784 → h → 64·width → classes ReLU MLP on raw [0, 1] pixels (the study's base architecture)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, h), nn.ReLU(),
                         *_head(h, num_classes, width))


def projected_mlp(k: int, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                  width: float = 1.0) -> nn.Sequential:
    """``first_width_mlp(in)`` whose first layer is W1 (I − P_k), P_k frozen: nullity(W1) ≥ k."""
    dim = in_chans * img_size * img_size
    if not 0 <= k < dim:
        raise ValueError(f"projection rank k must be in [0, {dim}), got {k}")
    model = first_width_mlp(dim, num_classes, in_chans, img_size, width)
    if k:
        parametrize.register_parametrization(model[1], "weight", projector_parametrization(dim, k))
    return model


def bottleneck_mlp(r: int, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                   width: float = 1.0) -> nn.Sequential:
    """``mlp-h256`` with a rank-r linear bottleneck (256 → r → 64·width, no nonlinearity) after layer 1."""
    hidden = scaled(64, width)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, 256), nn.ReLU(),
                         nn.Linear(256, r, bias=False), nn.Linear(r, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def plus_minus_mlp(h: int, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                   width: float = 1.0) -> nn.Sequential:
    """First layer ReLU([Bx; −Bx]) with B of shape (h, 784), then the usual head on 2h features."""
    return nn.Sequential(nn.Flatten(), PlusMinusLinear(in_chans * img_size * img_size, h), nn.ReLU(),
                         *_head(2 * h, num_classes, width))


def _register(name: str, build, level: int) -> None:
    def factory(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0) -> nn.Module:
        return build(level, num_classes, in_chans, img_size, width)

    factory.__doc__ = build.__doc__
    register_model(name)(factory)


for _h in HIDDEN_WIDTHS:
    _register(f"mlp-h{_h}", first_width_mlp, _h)
for _k in PROJECTION_RANKS:
    _register(f"mlp-proj-k{_k}", projected_mlp, _k)
for _r in BOTTLENECK_RANKS:
    _register(f"mlp-rank-r{_r}", bottleneck_mlp, _r)
for _h in PLUS_MINUS_WIDTHS:
    _register(f"mlp-pm-h{_h}", plus_minus_mlp, _h)


def patch_vit(patch: int, embed_dim: int, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
              width: float = 1.0) -> nn.Module:
    """A 2-block ViT (Dosovitskiy et al., ICLR 2021) whose patch embedding W1 is (embed_dim, in_chans·patch²).

    nullity(W1) = max(0, in_chans·patch² − embed_dim) at full rank: on 28 × 28 MNIST patch 4 (16 pixels per
    patch) is injective for every embed_dim ≥ 16 and patch 7 (49 pixels) is not below 49. At one embed_dim
    the two have exactly the same parameter count (patch² + number of patches = 16 + 49 = 49 + 16 weights per
    embedding unit), so the pair changes nullity(W1) with the parameter count held fixed. ``width`` scales
    the MLP ratio of the blocks (2 at width 1).
    """
    from timm.models.vision_transformer import VisionTransformer  # timm costs seconds to import: only when used

    if img_size % patch:
        raise ValueError(f"patch size {patch} does not divide the image size {img_size}")
    vit = VisionTransformer(img_size=img_size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                            embed_dim=embed_dim, depth=2, num_heads=2, mlp_ratio=2.0 * width)
    return WithNormalize(Normalize(*default_stats(in_chans)), vit)


def _register_vit(patch: int, embed_dim: int) -> None:
    def factory(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0) -> nn.Module:
        return patch_vit(patch, embed_dim, num_classes, in_chans, img_size, width)

    factory.__doc__ = patch_vit.__doc__
    register_model(f"vit-p{patch}-d{embed_dim}")(factory)


for _p in VIT_PATCHES:
    for _d in VIT_EMBED_DIMS:
        _register_vit(_p, _d)
