"""Data at real scale: named splits, per-item decoding, mixed sizes, resize + center-crop, streaming loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import regcollide.data as data
from regcollide.data import DataError, describe, load_dataset, load_tensors, make_loader
from regcollide.data.decode import fit_size


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(root, split: str, images: list[np.ndarray], labels: list[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(exist_ok=True)
    table = pa.table({"image": [{"bytes": _png(a), "path": None} for a in images], "label": labels})
    pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")


@pytest.fixture
def three_splits(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("validation", 4), ("test", 6)):
        _write_split(tmp_path, split, [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(n)],
                     [i % 2 for i in range(n)])
    return tmp_path


def test_named_validation_split_and_describe_lists_every_split(three_splits):
    assert len(load_dataset(f"parquet:{three_splits}", "validation")) == 4
    summary = describe(f"parquet:{three_splits}")
    assert {k: v["size"] for k, v in summary["splits"].items()} == {"test": 6, "train": 8, "validation": 4}
    with pytest.raises(DataError, match="It has: test, train, validation"):
        load_dataset(f"parquet:{three_splits}", "val")


def test_decoding_is_per_item_not_whole_split(three_splits, monkeypatch):
    calls = []
    original = data._Decoder.one
    monkeypatch.setattr(data._Decoder, "one", lambda self, value: calls.append(1) or original(self, value))
    ds = load_dataset(f"parquet:{three_splits}", "train")
    calls.clear()
    item = ds[3]
    assert len(calls) == 1 and item["image"].shape == (3, 6, 6) and item["image"].dtype == torch.float32


def test_mixed_sizes_need_and_get_a_target_size(tmp_path):
    rng = np.random.default_rng(1)
    sizes = [(10, 14), (8, 8), (20, 12), (9, 30)]
    arrays = [rng.integers(0, 256, (h, w), dtype=np.uint8) for h, w in sizes]
    _write_split(tmp_path, "train", arrays, [0, 1, 0, 1])
    with pytest.raises(DataError, match="different sizes"):
        load_tensors(f"parquet:{tmp_path}", "train")
    images, labels = load_tensors(f"parquet:{tmp_path}", "train", image_size=8)
    assert images.shape == (4, 1, 8, 8) and labels.tolist() == [0, 1, 0, 1]
    # The 8x8 image is already the target size: it passes unchanged.
    assert torch.allclose(images[1, 0], torch.from_numpy(arrays[1]).float() / 255.0)


def test_fit_size_is_resize_shorter_side_then_center_crop():
    image = torch.arange(4 * 8, dtype=torch.float32).view(1, 4, 8) / 32.0  # (C, H, W) = (1, 4, 8)
    out = fit_size(image, 4)  # shorter side already 4: no resize, crop the middle 4 columns
    assert torch.equal(out, image[:, :, 2:6])
    big = torch.rand(3, 300, 400)
    crop = fit_size(big, 224, crop_pct=0.875)  # ImageNet protocol: resize to 256, crop 224
    assert crop.shape == (3, 224, 224) and crop.min() >= 0 and crop.max() <= 1
    reference = torch.nn.functional.interpolate(big[None], size=(256, 341), mode="bilinear", antialias=True,
                                                align_corners=False)[0]
    assert torch.allclose(crop, reference[:, 16:240, 58:282].clamp(0, 1), atol=1e-6)


def test_large_split_streams_through_make_loader(three_splits, monkeypatch):
    ds = load_dataset(f"parquet:{three_splits}", "train")
    in_memory = [b for b in make_loader(ds, 3, shuffle=True, seed=5)]
    monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)  # force the per-item path
    loader = make_loader(ds, 3, shuffle=True, seed=5)
    assert isinstance(loader.dataset, data._DecodedItems)
    streamed = list(loader)
    for a, b in zip(in_memory, streamed, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])


def test_mnist5k_resized_on_request_matches_adapt_images():
    small, _ = load_tensors("mnist5k", "test", n=4, seed=1)
    large, _ = load_tensors("mnist5k", "test", n=4, seed=1, image_size=56)
    assert torch.allclose(large, data.adapt_images(small, 1, 56), atol=1e-6)
