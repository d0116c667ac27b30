"""Training-time augmentation on tensors, on any device: random crop after zero padding, horizontal flip.

The standard CIFAR recipe of He et al. (CVPR 2016, "Deep Residual Learning for Image Recognition"), also
used by Madry et al. (ICLR 2018) for PGD adversarial training: pad 4, random 32x32 crop, flip with p = 1/2.
Randomness comes only from the ``generator`` passed in, so a run is reproducible from its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Augmentation:
    """``Augmentation(crop_padding=4, hflip=True)(images, generator)`` -> augmented images, same shape.

    ``images``: (B, C, H, W) on any device; ``generator``: a ``torch.Generator`` (on any device; draws are
    moved to the images' device).
    """

    def __init__(self, crop_padding: int = 0, hflip: bool = False):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}.")
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def __repr__(self) -> str:
        return f"Augmentation(crop_padding={self.crop_padding}, hflip={self.hflip})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}.")
        if self.crop_padding:
            images = self._crop(images, generator)
        if self.hflip:
            flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5  # (B,)
            flip = flip.to(images.device).view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(-1), images)
        return images

    def _crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-sample random (H, W) window of the zero-padded batch, gathered with index arithmetic."""
        b, _, h, w = images.shape
        p = self.crop_padding
        padded = F.pad(images, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator, device=generator.device)
        top, left = offsets.to(images.device)  # (B,), (B,)
        rows = (top.view(b, 1) + torch.arange(h, device=images.device)).view(b, 1, h, 1)   # (B, 1, H, 1)
        cols = (left.view(b, 1) + torch.arange(w, device=images.device)).view(b, 1, 1, w)  # (B, 1, 1, W)
        batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
        channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        return padded[batch, channels, rows, cols]  # (B, C, H, W)
