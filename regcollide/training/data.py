"""Training data: a fixed subset, a resumable shuffled training loader and the test loader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from regcollide.data import load_dataset, make_loader
from regcollide.training.config import Config
from regcollide.training.state import EpochSampler


def subset(dataset, limit: int | None):
    """A fixed random subset of ``limit`` samples (sorted indices; a prefix could hold a single class)."""
    if not limit or limit >= len(dataset):
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
    return dataset.select(sorted(keep.tolist()))


def get_dataloaders(config: Config) -> tuple[DataLoader, DataLoader]:
    """Training loader (shuffled by (seed, epoch)) and test loader, both yielding the loader dict.

    Batches are dicts: ``image`` (B, C, H, W) in [0, 1], ``label`` (B,), ``index`` (B,).
    """
    # Images are resized and center-cropped to the model's input size (a no-op when they already fit).
    size = config.model.img_size
    train_set = load_dataset(config.data.spec, config.data.split, image_size=size)
    test_set = load_dataset(config.data.spec, config.data.test_split, image_size=size)
    train_set, test_set = subset(train_set, config.data.limit_train), subset(test_set, config.data.limit_test)
    # make_loader holds the images in memory; we keep its dataset but draw the order from EpochSampler,
    # whose permutation is a pure function of (seed, epoch), so a resumed run sees the same batches.
    in_memory = make_loader(train_set, batch_size=config.train.batch_size).dataset
    sampler = EpochSampler(len(in_memory), seed=config.seed)
    train_loader = DataLoader(in_memory, batch_size=config.train.batch_size, sampler=sampler,
                              num_workers=config.data.num_workers,
                              # Own generator: creating an iterator must not draw from the global RNG.
                              generator=torch.Generator().manual_seed(config.seed))
    test_loader = make_loader(test_set, batch_size=config.eval.batch_size, num_workers=config.data.num_workers)
    return train_loader, test_loader
