"""Helpers for the regularizer tests: tensors with a given weight, and a tiny plain training loop.

The real training script (train/regularized.py) belongs elsewhere; effect tests use this ~30-line loop so
they test the regularizers and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

DUMMY_BATCH = {"image": torch.zeros(1, 1), "label": torch.zeros(1, dtype=torch.long),
               "index": torch.zeros(1, dtype=torch.long)}
DUMMY_OUT = torch.zeros(1, 2, dtype=torch.float64)


def with_weight(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    """``module`` whose ``weight`` is the given (possibly grad-requiring) tensor, so gradcheck sees through."""
    del module.weight
    module.weight = weight
    return module


def penalty(reg, module: nn.Module) -> torch.Tensor:
    return reg(nn.Sequential(module), DUMMY_BATCH, DUMMY_OUT)


def random_matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthonormal(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A matrix with orthonormal rows (wide) or orthonormal columns (tall)."""
    q, _ = torch.linalg.qr(random_matrix(max(rows, cols), min(rows, cols), seed))
    return q if rows >= cols else q.T



_DATA_CACHE: dict = {}


def mnist_tensors(split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist5k images ``(N, 1, 28, 28)`` and labels, loaded once per (split, n) for the whole session."""
    from regcollide.data import load_tensors

    key = (split, n)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_tensors("mnist5k", split, n=n, seed=0)
    return _DATA_CACHE[key]


def train(model: nn.Module, regularizers: list[tuple[float, object]], steps: int, batch_size: int = 64,
          lr: float = 1e-3, seed: int = 0, n_train: int | None = None) -> nn.Module:
    """Adam on mnist5k/train for ``steps`` steps: CE (unless replaced) + Σ weight · regularizer term.

    Batches are seeded index draws, so two runs with the same seed see the same batches in the same order.
    """
    images, labels = mnist_tensors("train", n_train)
    with single_thread():
        return _train(model, regularizers, steps, batch_size, lr, seed, images, labels)


@contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a shared machine it only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(model, regularizers, steps, batch_size, lr, seed, images, labels) -> nn.Module:
    torch.manual_seed(seed)
    for _, reg in regularizers:
        model = reg.setup(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    replaced = any(reg.replaces_task_loss for _, reg in regularizers)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(labels), (batch_size,), generator=generator)  # (B,)
        batch = {"image": images[index], "label": labels[index], "index": index}
        outputs = model(batch["image"])  # (B, K)
        loss = outputs.new_zeros(()) if replaced else F.cross_entropy(outputs, batch["label"])
        for weight, reg in regularizers:
            loss = loss + weight * reg(model, batch, outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for _, reg in regularizers:
        model = reg.finalize(model)
    return model.eval()


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.eval()(images).argmax(dim=1)
