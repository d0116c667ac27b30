"""Hooks into the training loop: observe steps and epochs, or stop a run cleanly (resumable) mid-way.

A callback subclasses :class:`Callback` and overrides what it needs. ``on_step_end`` runs after the optimizer
step, the metrics line and any checkpoint of that step; returning True stops the run after saving a state,
so ``train(config, resume=run_dir)`` continues it exactly. Every process calls its callbacks; a stop
decision must be the same on every process (a step count is; a wall clock is not).
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
