"""Hooks into the training loop: observe steps and epochs, or stop a run cleanly (resumable) mid-way.

A callback subclasses :class:`Callback` and overrides what it needs. ``on_step_end`` runs after the optimizer
step, the metrics line and any checkpoint of that step; returning True pauses the run after saving a state,
so ``train(config, resume=run_dir)`` continues it exactly. ``on_epoch_end`` returning True finishes the run
early (final weights and evaluation, as if the last epoch was reached): early stopping. Every process calls
its callbacks; a stop decision must be the same on every process (a step count or the reduced epoch metrics
are; a wall clock is not).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from regcollide.training.state import TrainState


class Callback:
    """Base class: every hook does nothing and never stops the run."""

    def on_train_begin(self, run_dir: Path, state: TrainState) -> None:
        """Called once the run folder exists and any resumed state is restored."""

    def on_step_end(self, state: TrainState, values: dict[str, float]) -> bool:
        """After optimizer step ``state.global_step``; ``values`` are this process's loss terms."""
        return False

    def on_epoch_end(self, state: TrainState, record: dict) -> bool:
        """After epoch ``state.epoch`` (completed epochs) and its state save.

        ``record`` is the epoch's metrics line: ``epoch_loss`` (mean objective) and ``epoch_train_acc`` over
        every process, ``test_acc`` (None unless ``eval.every_epoch``), ``epoch`` and ``step``.
        """
        return False


class StopAfterSteps(Callback):
    """Stop after ``steps`` optimizer steps (counted from the start of the run, resumes included)."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"StopAfterSteps needs steps >= 1, got {steps}")
        self.steps = steps

    def on_step_end(self, state: TrainState, values: dict[str, float]) -> bool:
        return state.global_step >= self.steps


def any_stop(callbacks: Sequence[Callback], method: str, *args) -> bool:
    """Call ``method`` on every callback (none is skipped) and say whether any asked to stop."""
    votes = [bool(getattr(cb, method)(*args)) for cb in callbacks]
    return any(votes)


class Converged(Callback):
    """Early stopping on the training objective: finish at the first epoch (from ``min_epochs`` on) whose
    training accuracy reached ``target_acc``, or at which the objective plateaued: the best mean objective of
    the last ``window`` epochs is less than ``rel_tol`` (relative) below the best of all earlier epochs
    (``window=1``: this epoch against the best earlier one). ``history`` keeps every epoch's record (of this
    process's run); ``fired`` and ``reason`` ("target_acc" or "plateau") say whether and why it stopped.
    """

    def __init__(self, min_epochs: int = 3, rel_tol: float = 0.02, target_acc: float = 1.0, window: int = 1) -> None:
        if min_epochs < 1 or not 0.0 <= rel_tol < 1.0 or not 0.0 < target_acc <= 1.0 or window < 1:
            raise ValueError(f"Converged needs min_epochs >= 1, 0 <= rel_tol < 1, 0 < target_acc <= 1 and "
                             f"window >= 1, got {min_epochs}, {rel_tol}, {target_acc}, {window}")
        self.min_epochs, self.rel_tol, self.target_acc, self.window = min_epochs, rel_tol, target_acc, window
        self.history: list[dict] = []
        self.fired = False
        self.reason: str | None = None

    def on_epoch_end(self, state: TrainState, record: dict) -> bool:
        self.history.append(record)
        losses = [r["epoch_loss"] for r in self.history]
        before, recent = losses[:-self.window], losses[-self.window:]
        plateau = bool(before) and min(recent) > min(before) * (1.0 - self.rel_tol)
        self.reason = None
        if state.epoch < self.min_epochs:
            self.fired = False
            return False
        if record["epoch_train_acc"] >= self.target_acc:
            self.reason = "target_acc"
        elif plateau:
            self.reason = "plateau"
        self.fired = self.reason is not None
        return self.fired
