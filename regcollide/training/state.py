"""Building blocks of the training loop that carry state or math: step counters, a resumable shuffle,
checkpointable regularizer state, the learning-rate schedule, the optimizer and the divergence error.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import Sampler

from regcollide.training.config import TrainConfig


class TrainState:
    """Step counters of one process, saved with every training state."""

    def __init__(self) -> None:
        self.epoch = 0            # completed epochs
        self.step_in_epoch = 0    # optimizer steps done in the current epoch (batches to skip on resume)
        self.global_step = 0
        self.samples_seen = 0     # by this process; with shard_digest, shows each process saw its own shard
        self.shard_digest = 0
        self.epoch_loss = 0.0     # this process, this epoch: sample-weighted objective sum, correct, samples
        self.epoch_correct = 0
        self.epoch_seen = 0

    def state_dict(self) -> dict[str, int | float]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, int | float]) -> None:
        values = {key: state[key] for key in vars(self)}  # KeyError before anything changes
        loss = values.pop("epoch_loss")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise ValueError(f"step counters must be non-negative integers, got {values}")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise ValueError(f"epoch_loss must be a finite number, got {loss!r}")
        for key, value in {**values, "epoch_loss": float(loss)}.items():
            setattr(self, key, value)


class EpochSampler(Sampler[int]):
    """A shuffle whose order is a pure function of (seed, epoch): resumable and equal on every process."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=rng).tolist())

    def __len__(self) -> int:
        return self.size


class RegularizerStates:
    """Checkpointable hidden state of the regularizers (samplers' generators, step counters, caches).

    Every regularizer's private ``torch.Generator``, int and tensor attributes are saved (the lazy
    regularization counter and cached value, samplers' generators); a regularizer with its own
    ``state_dict``/``load_state_dict`` (e.g. warm singular-value trackers) saves that too.
    """

    def __init__(self, regularizers: list) -> None:
        self.regularizers = regularizers

    def state_dict(self) -> dict:
        out = {}
        for i, reg in enumerate(self.regularizers):
            hidden = {}
            for key, value in vars(reg).items():
                if isinstance(value, torch.Generator):
                    hidden[key] = ("generator", value.get_state())
                elif key.startswith("_") and isinstance(value, (int, torch.Tensor)) and not isinstance(value, bool):
                    hidden[key] = ("value", value)
            own = reg.state_dict() if hasattr(reg, "state_dict") else None
            out[str(i)] = {"hidden": hidden, "own": own}
        return out

    def load_state_dict(self, state: dict) -> None:
        for i, reg in enumerate(self.regularizers):
            saved = state[str(i)]
            if saved["own"] is not None:
                reg.load_state_dict(saved["own"])
            for key, (kind, value) in saved["hidden"].items():
                if kind == "generator":
                    getattr(reg, key).set_state(value)
                else:
                    setattr(reg, key, value)


class TrainingDiverged(RuntimeError):
    """A non-finite loss term; the message names the term and the last good checkpoint."""

    def __init__(self, bad_terms: list[str], step: int, latest: Path | None, values: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was written yet"
        super().__init__(f"loss is not finite at step {step + 1}: term(s) {', '.join(bad_terms)} blew up "
                         f"({shown}); {kept}. Lower train.lr or the regularizer weight, or set train.grad_clip.")


def build_optimizer(train: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    optim_cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return optim_cls(params, lr=train.lr, weight_decay=train.weight_decay)


def learning_rate(train: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then the schedule; a pure function of the step so resuming needs no scheduler state."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, total_steps - train.warmup_steps)
    if train.schedule == "cosine":
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if train.schedule == "linear":
        return train.lr * (1.0 - progress)
    return train.lr
