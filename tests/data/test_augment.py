"""Augmentation (random crop after zero padding, horizontal flip): shapes, exactness, reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regcollide.data.augment import Augmentation


def _reference_crop(images: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    padded = F.pad(images, (pad,) * 4)
    h, w = images.shape[-2:]
    return torch.stack([padded[i, :, t:t + h, s:s + w] for i, (t, s) in enumerate(zip(top, left))])


def test_crop_matches_a_per_sample_reference_loop():
    images = torch.rand(16, 3, 8, 8)
    gen = torch.Generator().manual_seed(3)
    out = Augmentation(crop_padding=2)(images, gen)
    offsets = torch.randint(0, 5, (2, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, _reference_crop(images, 2, offsets[0], offsets[1]))


def test_flip_flips_about_half_exactly_and_keeps_the_rest():
    images = torch.rand(400, 1, 4, 5)
    out = Augmentation(hflip=True)(images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250


def test_same_generator_seed_same_batch_and_disabled_is_identity():
    images = torch.rand(8, 3, 32, 32)
    aug = Augmentation(crop_padding=4, hflip=True)
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    c = aug(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == images.shape
    assert torch.equal(Augmentation()(images, torch.Generator()), images) and not Augmentation().enabled


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="crop_padding"):
        Augmentation(crop_padding=-1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        Augmentation(hflip=True)(torch.rand(3, 8, 8), torch.Generator())
