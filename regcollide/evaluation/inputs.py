"""Eval data in any of the shapes users have: a dataset spec, an (images, labels) pair, a dataset, or a
DataLoader; and the torch thread count the eval runs with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from regcollide.attacks.checks import check_batch

# Below this many parameters a model's matmuls are too small to split across threads: one thread is
# fastest, and on a shared machine extra threads oversubscribe the cores (measured 10-20x slowdowns of
# AutoAttack with 2 threads while another 2-thread job ran; benchmarks/bench_eval.py).
SMALL_MODEL_PARAMS = 5_000_000


def _split_item(item: Any) -> tuple[Any, Any]:
    """(image(s), label(s)) from a dict row/batch ({"image", "label"}) or a (image, label, ...) tuple."""
    if isinstance(item, dict):
        if "image" not in item or "label" not in item:
            raise ValueError(f"data rows must have 'image' and 'label', got keys {sorted(item)}")
        return item["image"], item["label"]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise ValueError(f"data must yield (image, label) pairs or {{'image', 'label'}} dicts, got {type(item).__name__}")


def _collect(batches: Iterable[Any], n: int | None, batched: bool) -> tuple[Tensor, Tensor]:
    images, labels, count = [], [], 0
    for item in batches:
        x, y = _split_item(item)
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        images.append(x if batched else x[None])
        labels.append(y.reshape(-1))
        count += len(labels[-1])
        if n is not None and count >= n:
            break
    if not images:
        raise ValueError("the eval data is empty: pass at least one image")
    return torch.cat(images)[:n], torch.cat(labels)[:n]


def eval_tensors(data: Any, n: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``n`` eval images (N, C, H, W) in [0, 1] and labels (N,) int64 from ``data``.

    ``data`` is a dataset spec (its test split, the seeded order of :func:`regcollide.data.load_tensors`),
    an ``(images, labels)`` pair of tensors, a DataLoader, or a map-style dataset whose items are
    ``(image, label)`` or ``{"image", "label"}``. Bad data raises ValueError naming the problem.
    """
    if isinstance(data, str):
        from regcollide.data import load_tensors  # the data package loads datasets/PIL: only for specs

        images, labels = load_tensors(data, "test", n, seed=seed)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        images, labels = data[0][:n], data[1][:n]
    elif isinstance(data, DataLoader):
        images, labels = _collect(data, n, batched=True)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        images, labels = _collect((data[i] for i in range(len(data))), n, batched=False)
    else:
        raise ValueError(f"eval data must be a dataset spec, (images, labels), a Dataset or a DataLoader, "
                         f"not {type(data).__name__}")
    if len(labels) == 0:
        raise ValueError("the eval data is empty: pass at least one image")
    labels = labels.long() if not labels.is_floating_point() else labels
    check_batch(images, labels)
    return images, labels


def pick_threads(model: nn.Module, requested: int) -> int:
    """The torch thread count for evaluating ``model``: ``requested``, or for 0 a deliberate choice."""
    if requested > 0:
        return requested
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    return 1 if device.type == "cpu" and small else torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads and restore the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
