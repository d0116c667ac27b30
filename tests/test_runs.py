"""Run-folder checkpoints: atomic weights and states, the `latest` pointer, safe and checked loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from regcollide import runs
from regcollide.io import CheckpointError, load_weights, save_weights
from regcollide.runs import (
    MetricsLog,
    latest_training_state,
    list_training_states,
    remove_partial_states,
    save_training_state,
    weights_digest,
)


def mlp(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 3))


class FakeAccelerator:
    """The part of accelerate.Accelerator the checkpoint helpers use, for one process."""

    is_main_process = True

    def __init__(self, fail_after_files: int | None = None):
        self.fail_after_files = fail_after_files

    def wait_for_everyone(self):
        pass

    def log(self, values, step=None):
        pass

    def save_state(self, output_dir: str, safe_serialization: bool = True):
        for i in range(3):
            if self.fail_after_files is not None and i == self.fail_after_files:
                raise KeyboardInterrupt("simulated crash mid-save")
            (Path(output_dir) / f"part_{i}.bin").write_bytes(b"x" * 10)


def test_wrong_architecture_names_the_mismatched_layers(tmp_path):
    save_weights(mlp(8), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_weights(mlp(5), tmp_path / "model.safetensors")
    message = str(info.value)
    assert "1.weight (8, 16) vs model (5, 16)" in message and "3.weight" in message
    with pytest.raises(CheckpointError, match="missing in checkpoint: 5.bias, 5.weight"):
        load_weights(nn.Sequential(*mlp(8), nn.ReLU(), nn.Linear(3, 3)), tmp_path / "model.safetensors")


def test_weights_round_trip_bitwise(tmp_path):
    model = mlp(8)
    save_weights(model, tmp_path / "model.safetensors")
    other = load_weights(mlp(8).apply(lambda m: m.reset_parameters() if isinstance(m, nn.Linear) else None),
                         tmp_path / "model.safetensors")
    assert weights_digest(other) == weights_digest(model)


def test_torch_files_load_with_weights_only(tmp_path):
    """A pickled object that is not plain tensors is refused, never executed."""
    path = tmp_path / "weights.pt"
    torch.save({"1.weight": torch.zeros(8, 16), "payload": FakeAccelerator()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_weights(mlp(8), path)


def test_crash_while_saving_weights_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_weights(mlp(8), path)
    before = path.read_bytes()

    def crash(fd):  # the new bytes are in the temporary file, not yet renamed over the old one
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(runs.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_weights(mlp(4), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left


def test_states_rotate_and_a_crash_mid_save_keeps_the_last_complete_one(tmp_path):
    for step in (3, 6, 9):
        save_training_state(FakeAccelerator(), tmp_path, step, keep=2)
    assert [p.name for p in list_training_states(tmp_path)] == ["step_00000006", "step_00000009"]
    assert latest_training_state(tmp_path).name == "step_00000009"

    with pytest.raises(KeyboardInterrupt):
        save_training_state(FakeAccelerator(fail_after_files=1), tmp_path, 12, keep=2)
    latest = latest_training_state(tmp_path)
    assert latest.name == "step_00000009"
    assert sorted(p.name for p in latest.iterdir()) == ["part_0.bin", "part_1.bin", "part_2.bin"]
    assert (tmp_path / "state" / ".tmp-step_00000012").is_dir()  # the partial save, never listed
    remove_partial_states(tmp_path)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["latest", "step_00000006", "step_00000009"]


def test_latest_falls_back_to_the_newest_complete_state(tmp_path):
    assert latest_training_state(tmp_path) is None
    save_training_state(FakeAccelerator(), tmp_path, 4)
    save_training_state(FakeAccelerator(), tmp_path, 8)
    (tmp_path / "state" / "latest").unlink()
    assert latest_training_state(tmp_path).name == "step_00000008"


def test_metrics_truncate_after_a_resumed_step(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", FakeAccelerator())
    for step in range(1, 6):
        log.write({"event": "train", "step": step, "loss": 1.0 / step})
    log.truncate_after(3)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_prepare_run_dir_naming(tmp_path):
    acc = FakeAccelerator()
    first, resuming = runs.prepare_run_dir(str(tmp_path), None, "default", None, False, acc)
    assert (first.name, resuming) == ("default", False)
    first.mkdir()
    second, _ = runs.prepare_run_dir(str(tmp_path), None, "default", None, False, acc)
    assert second.name == "default-2"
    (first / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ValueError, match="already exists: pass --resume"):
        runs.prepare_run_dir(str(tmp_path), "default", "x", None, False, acc)
    same, resuming = runs.prepare_run_dir(str(tmp_path), "default", "x", "", False, acc)
    assert (same, resuming) == (first, True)
