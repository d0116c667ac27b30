"""Helpers for the regularizer tests: tensors with a given weight, and short trainings by the library loop."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence

import torch
from torch import nn

from regcollide.evaluation.inputs import torch_threads

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


def library_train(overrides: Sequence[str], out_dir: str | os.PathLike, **kwargs):
    """``regcollide.training.train`` on the default config plus ``overrides``, quiet, one thread.

    Returns its RunResult. Imported here, not at the top: collecting a test that never trains must not
    import accelerate and the evaluation stack.
    """
    from regcollide.training.config import load_config
    from regcollide.training.loop import train as library_loop

    config = load_config(None, ["train.progress=false", "train.num_threads=1", f"out_dir={out_dir}",
                                *overrides])
    with torch_threads(1):
        return library_loop(config, **kwargs)


def train(model: nn.Module, regularizers: list[tuple[float, object]], steps: int, batch_size: int = 64,
          lr: float = 1e-3, seed: int = 0, n_train: int | None = None) -> nn.Module:
    """The library loop (``regcollide.training.train``) for ``steps`` Adam steps on mnist5k/train.

    CE (unless replaced) + Σ weight · regularizer term, constant learning rate; the shuffle is a function of
    ``seed`` alone, so two runs with the same seed see the same batches in the same order. Returns the
    finalized model in eval mode.
    """
    n = n_train or len(mnist_tensors("train")[1])
    epochs = math.ceil(steps / math.ceil(n / batch_size))
    overrides = [f"seed={seed}", f"train.epochs={epochs}", f"train.batch_size={batch_size}", "train.optimizer=adam",
                 f"train.lr={lr}", "train.schedule=constant", "train.momentum=0", "train.log_every=1000000",
                 "train.keep_checkpoints=1", "eval.enabled=false", "eval.every_epoch=false", "regularizers=[]",
                 *([f"data.limit_train={n_train}"] if n_train else [])]
    from regcollide.training.callbacks import StopAfterSteps

    with tempfile.TemporaryDirectory() as out:
        result = library_train(overrides, out, model=model, regularizers=regularizers,
                               callbacks=[StopAfterSteps(steps)])
    return result.model


def single_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine it only adds contention."""
    return torch_threads(1)


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.eval()(images).argmax(dim=1)
