"""The study trains through the library loop: its run folder is an ordinary run, and its stopping rule is the
library's ``Converged`` callback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from regcollide.io import read_state_dict
from regcollide.runs import load_run, read_metrics
from regcollide.study.design import expand, load_design
from regcollide.study.train import convergence, job_config, train_job
from regcollide.training.callbacks import Converged
from regcollide.training.loop import train
from regcollide.training.state import TrainState

DESIGN = Path(__file__).resolve().parents[2] / "configs" / "study" / "design.yaml"


def _job(name: str, **train_overrides):
    job = next(j for j in expand(load_design(DESIGN, quick=True)) if j.name == name)
    return dataclasses.replace(job, train={**job.train, **train_overrides})


def test_study_run_folder_is_an_ordinary_run_with_the_weights_of_train(tmp_path):
    job = _job("width-32-s1", max_epochs=2, min_epochs=1)
    model, record = train_job(job, tmp_path / "study")
    run = tmp_path / "study" / job.name
    # an ordinary run folder: marker, config.yaml, weights, metrics; no states, no end-of-run eval
    assert {p.name for p in run.iterdir()} == {".regcollide-run", "config.yaml", "model.safetensors", "metrics.jsonl"}
    loaded, config = load_run(run)
    assert config["model"]["name"] == "mlp-h32" and config["seed"] == 1
    expected = {k: v for k, v in model.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())

    # the library's train() on the same config and seed gives the same weights
    same = train(job_config(job, tmp_path / "library"), callbacks=[convergence(job)])
    again = read_state_dict(same.run_dir / "model.safetensors")
    assert again.keys() == expected.keys() and all(torch.equal(again[k], v) for k, v in expected.items())

    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "epoch"]
    assert record["epochs"] == len(epochs) == 2 and record["history"][-1]["loss"] == epochs[-1]["epoch_loss"]
    assert record["converged"] is False and record["stopped_by"] is None  # the 2-epoch cap, not the rule


def _feed(rule: Converged, losses: list[float], accs: list[float] | None = None) -> list[bool]:
    state, out = TrainState(), []
    for i, loss in enumerate(losses):
        state.epoch = i + 1
        out.append(rule.on_epoch_end(state, {"epoch": i + 1, "epoch_loss": loss,
                                             "epoch_train_acc": (accs or [0.5] * len(losses))[i]}))
    return out


def test_plateau_window_compares_the_best_recent_epoch_with_the_best_earlier_one():
    # window 3, 1%: at epoch 5 the best of epochs 3-5 (0.995) is within 1% of the best before (1.0)
    rule = Converged(min_epochs=3, rel_tol=0.01, target_acc=0.99, window=3)
    assert _feed(rule, [2.0, 1.0, 1.2, 1.1, 0.995]) == [False, False, False, False, True]
    assert rule.fired and rule.reason == "plateau"
    # a single noisy epoch does not stop a run that still improves over the window
    rule = Converged(min_epochs=3, rel_tol=0.01, target_acc=0.99, window=3)
    assert _feed(rule, [2.0, 1.0, 1.05, 0.9, 0.95]) == [False] * 5 and not rule.fired
    # window 1 is the original rule: this epoch against the best earlier one
    assert _feed(Converged(min_epochs=2, rel_tol=0.5), [1.0, 0.6, 0.4]) == [False, True, True]
    # the accuracy target stops from min_epochs on
    rule = Converged(min_epochs=2, target_acc=0.99, window=3)
    assert _feed(rule, [1.0, 0.5], [0.995, 0.995]) == [False, True] and rule.reason == "target_acc"
    with pytest.raises(ValueError, match="window"):
        Converged(window=0)
