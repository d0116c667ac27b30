"""A small patchify Vision Transformer (Dosovitskiy et al., ICLR 2021, "An Image is Worth 16x16 Words")
built with timm's ``VisionTransformer``.

Its stem is a patchify conv (stride == kernel, no padding), the case where the Null-space search is exact.
"""

from __future__ import annotations

from torch import nn

from regcollide.models.normalize import Normalize, WithNormalize, default_stats, scaled
from regcollide.models.registry import register_model


def default_patch_size(img_size: int) -> int:
    """The largest of 16, 8, 7, 4, 2, 1 that divides the image and leaves at least 4 patches per side."""
    for p in (16, 8, 7, 4, 2, 1):
        if img_size % p == 0 and img_size // p >= 4:
            return p
    return 1


@register_model("vit-tiny")
def vit_tiny(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0,
             patch_size: int | None = None, depth: int = 4, num_heads: int = 3) -> nn.Module:
    """DeiT-Tiny's embedding (192 x width, 3 heads) at a CPU-friendly depth of 4 blocks."""
    from timm.models.vision_transformer import VisionTransformer  # timm costs seconds to import: only when used

    patch = patch_size or default_patch_size(img_size)
    if img_size % patch:
        raise ValueError(f"patch size {patch} does not divide the image size {img_size}.")
    vit = VisionTransformer(img_size=img_size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                            embed_dim=scaled(192, width, multiple=num_heads * 4), depth=depth,
                            num_heads=num_heads, mlp_ratio=4.0)
    return WithNormalize(Normalize(*default_stats(in_chans)), vit)
