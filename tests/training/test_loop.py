"""The library loop in process: callbacks see the epoch metrics, augmentation is deterministic and resumable."""

from __future__ import annotations

import pytest
import torch
from _train_utils import library_train

from regcollide.runs import read_metrics
from regcollide.training.callbacks import Callback, Converged, StopAfterSteps

TINY = ["model.width=0.125", "data.limit_train=256", "data.limit_test=200", "train.batch_size=32",
        "train.epochs=2", "train.log_every=4", "eval.enabled=false"]
AUGMENT = ["data.augment={crop_padding: 2, hflip: true}"]


class Recorder(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.epochs: list[dict] = []

    def on_step_end(self, state, values) -> bool:
        self.steps.append(state.global_step)
        return False

    def on_epoch_end(self, state, record) -> bool:
        self.epochs.append(record)
        return False


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def test_callbacks_see_every_step_and_the_epoch_means(tmp_path):
    recorder = Recorder()
    result = library_train(TINY, tmp_path, callbacks=[recorder])
    assert recorder.steps == list(range(1, 17))  # 256 / 32 = 8 steps per epoch, 2 epochs
    windows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["event"] == "train"]
    # log_every=4 splits each epoch into two windows of 128 samples: the epoch mean is their mean.
    for epoch, record in enumerate(recorder.epochs):
        pair = windows[2 * epoch: 2 * epoch + 2]
        assert record["epoch_loss"] == pytest.approx(sum(w["loss"] for w in pair) / 2, rel=1e-6)
        assert record["epoch_train_acc"] == pytest.approx(sum(w["train_acc"] for w in pair) / 2, rel=1e-6)
    assert [r["epoch"] for r in recorder.epochs] == [1, 2]


def test_stop_after_steps_leaves_an_unfinished_resumable_run(tmp_path):
    result = library_train(TINY, tmp_path, callbacks=[StopAfterSteps(5)])
    assert not result.completed and result.global_step == 5
    assert not (result.run_dir / "model.safetensors").exists()
    with pytest.raises(ValueError, match="steps >= 1"):
        StopAfterSteps(0)


def test_augmentation_is_seeded_applied_and_resumable(tmp_path):
    plain = weights(library_train(TINY, tmp_path / "plain"))
    first = weights(library_train([*TINY, *AUGMENT], tmp_path / "a"))
    again = weights(library_train([*TINY, *AUGMENT], tmp_path / "b"))
    assert all(first[k].equal(again[k]) for k in first), "the same seed must augment the same way"
    assert not all(first[k].equal(plain[k]) for k in first), "data.augment changed nothing"

    stopped = library_train([*TINY, *AUGMENT], tmp_path / "c", callbacks=[StopAfterSteps(11)])
    resumed = weights(library_train([*TINY, *AUGMENT], tmp_path / "c", resume=stopped.run_dir))
    assert all(first[k].equal(resumed[k]) for k in first), "an augmented run resumed differently"


def test_converged_finishes_the_run_early_with_weights_and_results(tmp_path):
    converged = Converged(min_epochs=2, rel_tol=0.5)  # a 50 % gain per epoch is never reached after epoch 1
    result = library_train([*TINY[:-1], "train.epochs=6", "eval.parts=[clean]", "eval.n=100"], tmp_path,
                           callbacks=[converged])
    assert result.completed and result.global_step == 16  # stopped at the end of epoch 2 of 6
    assert [r["epoch"] for r in converged.history] == [1, 2]
    assert (result.run_dir / "model.safetensors").is_file() and 0.0 <= result.results["clean_acc"] <= 1.0
    ended = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["event"] == "end"]
    assert [r["step"] for r in ended] == [16]
    with pytest.raises(ValueError, match="rel_tol"):
        Converged(rel_tol=1.0)
