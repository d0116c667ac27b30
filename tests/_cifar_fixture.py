"""A local CIFAR-10 stand-in in the hub's layout (``plain_text/<split>-00000-of-00001.parquet``, an ``img``
image column and a 10-name ``label`` ClassLabel), written by ``datasets`` itself: random 32×32 RGB images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10_parquet(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` images per split (labels 0, 1, ..., 9, 0, ...) under ``root``; returns ``root``."""
    import datasets
    from PIL import Image

    (root / "plain_text").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    for split in ("train", "test"):
        pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        rows = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels],
                                           "label": [i % 10 for i in range(n)]}, features=features)
        rows.to_parquet(str(root / "plain_text" / f"{split}-00000-of-00001.parquet"))
    return root
