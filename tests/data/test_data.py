"""The data layer: the embedded mnist5k split, the hub loader on local hub-format parquet, imagefolder."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from regcollide.data import DataError, adapt_images, dataset_info, load_dataset, load_tensors, make_loader


def test_mnist5k_split_sizes_balance_and_range():
    for split, size, per_class in (("train", 4000, 400), ("test", 1000, 100)):
        ds = load_dataset("mnist5k", split)
        assert len(ds) == size
        images, labels = ds[:]["image"], ds[:]["label"]
        assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
        assert images.shape == (size, 1, 28, 28) and images.dtype == torch.float32
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert images.max() == 1.0  # real digits reach full intensity: the 255 scale was applied once


def test_mnist5k_splits_are_disjoint_and_reproducible():
    train, test = load_tensors("mnist5k", "train"), load_tensors("mnist5k", "test")
    again = load_tensors("mnist5k", "test")
    assert torch.equal(test[0], again[0]) and torch.equal(test[1], again[1])
    train_rows = {row.numpy().tobytes() for row in train[0].flatten(1)}
    overlap = sum(row.numpy().tobytes() in train_rows for row in test[0].flatten(1))
    assert overlap <= 2  # MNIST holds a handful of exact duplicate digits; the split itself is disjoint


def test_load_tensors_subset_is_seeded():
    a, _ = load_tensors("mnist5k", "test", n=50, seed=3)
    b, _ = load_tensors("mnist5k", "test", n=50, seed=3)
    c, _ = load_tensors("mnist5k", "test", n=50, seed=4)
    assert a.shape == (50, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)


def test_make_loader_is_deterministic_and_yields_indices():
    ds = load_dataset("mnist5k", "test")
    first = [b["index"] for b in make_loader(ds, 100, shuffle=True, seed=7)]
    second = [b["index"] for b in make_loader(ds, 100, shuffle=True, seed=7)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert sorted(torch.cat(first).tolist()) == list(range(1000))
    batch = next(iter(make_loader(ds, 8)))
    assert torch.equal(batch["image"], ds[:8]["image"]) and torch.equal(batch["label"], ds[:8]["label"])


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def hub_layout(tmp_path):
    """A local folder in the hub's parquet layout: data/<split>-00000-of-00001.parquet, image struct + label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    expected = {}
    for split, n in (("train", 12), ("test", 6)):
        pixels = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
        labels = np.arange(n) % 3
        images = [{"bytes": _png_bytes(p), "path": None} for p in pixels]
        table = pa.table({"image": images, "label": labels.astype(np.int64)})
        pq.write_table(table, tmp_path / "data" / f"{split}-00000-of-00001.parquet")
        expected[split] = (pixels, labels)
    return tmp_path, expected


@pytest.mark.parametrize("prefix", ["hf:", "parquet:"])
def test_hub_format_parquet_loads_through_real_code(hub_layout, prefix):
    root, expected = hub_layout
    for split in ("train", "test"):
        rows = load_dataset(f"{prefix}{root}", split)[:]
        pixels, labels = expected[split]
        assert rows["image"].shape == (len(labels), 1, 8, 8)
        assert torch.allclose(rows["image"][:, 0], torch.from_numpy(pixels).float() / 255.0)
        assert rows["label"].tolist() == labels.tolist()
    info = dataset_info(f"{prefix}{root}")
    assert (info.num_classes, info.in_chans, info.img_size) == (3, 1, 8)


def test_imagefolder_with_class_folders(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    rows = load_dataset(f"imagefolder:{tmp_path}", "test")[:]
    assert rows["image"].shape == (6, 3, 6, 6)
    assert sorted(rows["label"].tolist()) == [0, 0, 0, 1, 1, 1]


def test_hub_written_parquet_with_feature_metadata(tmp_path):
    """Files written by ``datasets`` itself (as the hub stores them: Image + ClassLabel metadata)."""
    import datasets

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(10, 5, 5, 3), dtype=np.uint8)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    written = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels], "label": [0, 1] * 5},
                                         features=features)
    (tmp_path / "data").mkdir()
    written.to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    rows = load_dataset(f"hf:{tmp_path}", "test")[:]
    assert rows["image"].shape == (10, 3, 5, 5)
    assert torch.allclose(rows["image"], torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
    assert rows["label"].tolist() == [0, 1] * 5


@pytest.mark.parametrize("spec", ["mnist", "parquet:/no/such/place", "imagefolder:/no/such/dir", "hf:"])
def test_bad_specs_say_what_to_do(spec):
    with pytest.raises(DataError, match="mnist5k|does not exist|not a directory"):
        load_dataset(spec, "train")


def test_hub_offline_fails_fast_and_names_alternatives():
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "regcollide.cli", "data", "hf:ylecun/mnist"],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    for name in ("mnist5k", "parquet:", "imagefolder:"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30  # the 10 s target is for an idle machine; import time dominates under load


def test_adapt_images_replicates_and_resizes():
    images = torch.rand(2, 1, 28, 28)
    out = adapt_images(images, 3, 56)
    assert out.shape == (2, 3, 56, 56) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 2])


def test_prefixes_are_class_mixtures():
    """Evaluators take the first k images of a subset: those must not be a run of one class."""
    _, labels = load_tensors("mnist5k", "test")
    assert len(set(labels[:50].tolist())) >= 8
    _, subset = load_tensors("mnist5k", "test", n=200, seed=0)
    assert len(set(subset[:32].tolist())) >= 7
