"""Training states: written atomically, read back without pickle, unusable ones skipped in one line."""

from __future__ import annotations

import errno
import pickle
import random

import numpy as np
import pytest
import torch
from _fakes import FakeAccelerator
from torch import nn

from regcollide.io import CheckpointError
from regcollide.regularizers import build_regularizer
from regcollide.runs import RUN_MARKER
from regcollide.training import checkpoint
from regcollide.training.checkpoint import (
    Resumable,
    StateSaveError,
    latest_state,
    list_states,
    remove_partial_states,
    restore_newest,
    save_state,
)
from regcollide.training.state import RegularizerStates, TrainState


class Payload:
    """Unpickling this would create ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(autouse=True)
def marked(tmp_path):
    """States live in claimed run folders; tmp_path plays one (it carries the run marker)."""
    (tmp_path / RUN_MARKER).write_text("{}\n")
    return tmp_path


def test_states_are_never_written_or_deleted_outside_a_marked_run_folder(tmp_path):
    plain = tmp_path / "not-a-run"
    (plain / "state" / ".tmp-step_00000001").mkdir(parents=True)
    with pytest.raises(StateSaveError, match="not a run folder"):
        save_at(plain, resumable(), 1)
    with pytest.raises(StateSaveError, match="not a run folder"):
        remove_partial_states(plain)
    assert (plain / "state" / ".tmp-step_00000001").is_dir()


def resumable(seed: int = 0) -> Resumable:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()  # momentum buffers exist
    regs = [build_regularizer("decorrelation", max_rows=16)]
    return Resumable(model, optimizer, RegularizerStates(regs), TrainState())


def save_at(run_dir, obj: Resumable, step: int, keep: int = 2):
    obj.progress.global_step = step
    return save_state(FakeAccelerator(), run_dir, obj, keep=keep)


def test_round_trip_restores_weights_optimizer_rng_and_counters(tmp_path):
    obj = resumable()
    obj.progress.epoch, obj.progress.samples_seen = 1, 96
    generator = obj.regularizers.regularizers[0]._generator  # the decorrelation row sampler's
    torch.randperm(10, generator=generator)  # advance it away from its seed
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_at(tmp_path, obj, 6)
    expected = (random.random(), np.random.rand(), torch.rand(()).item())

    fresh = resumable(seed=5)
    assert restore_newest(tmp_path, fresh, 0, print).name == "step_00000006"
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
    for a, b in zip(obj.model.state_dict().values(), fresh.model.state_dict().values()):
        assert a.equal(b)
    momentum = [s["momentum_buffer"] for s in fresh.optimizer.state_dict()["state"].values()]
    assert all(m.equal(o["momentum_buffer"]) for m, o in zip(momentum, obj.optimizer.state_dict()["state"].values()))
    assert (fresh.progress.global_step, fresh.progress.epoch, fresh.progress.samples_seen) == (6, 1, 96)
    assert fresh.regularizers.regularizers[0]._generator.get_state().equal(generator.get_state())


def test_states_rotate_and_a_crash_mid_save_keeps_the_last_complete_one(tmp_path, monkeypatch):
    obj = resumable()
    for step in (3, 6, 9):
        save_at(tmp_path, obj, step)
    assert [p.name for p in list_states(tmp_path)] == ["step_00000006", "step_00000009"]
    assert latest_state(tmp_path).name == "step_00000009"
    before = {p.name: p.read_bytes() for p in latest_state(tmp_path).iterdir()}

    calls = []

    def crash(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash mid-save")
        checkpoint.atomic_write_bytes(path, data)

    monkeypatch.setattr(checkpoint, "write_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_at(tmp_path, obj, 12)
    latest = latest_state(tmp_path)
    assert latest.name == "step_00000009"
    assert {p.name: p.read_bytes() for p in latest.iterdir()} == before
    assert (tmp_path / "state" / ".tmp-step_00000012").is_dir()  # the partial save, never listed
    remove_partial_states(tmp_path)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["latest", "step_00000006", "step_00000009"]


def test_full_disk_during_a_save_keeps_the_previous_state_and_says_so(tmp_path, monkeypatch):
    obj = resumable()
    save_at(tmp_path, obj, 3)
    before = {p.name: p.read_bytes() for p in latest_state(tmp_path).iterdir()}

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_file", full)
    with pytest.raises(StateSaveError) as info:
        save_at(tmp_path, obj, 6)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "step_00000003" in message
    assert [p.name for p in list_states(tmp_path)] == ["step_00000003"]
    assert {p.name: p.read_bytes() for p in latest_state(tmp_path).iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["latest", "step_00000003"]


@pytest.mark.parametrize("damage", ["truncate_optimizer", "garbage_model", "drop_rng", "bad_meta", "pickle_file",
                                    "pickle_optimizer"])
def test_unusable_newest_state_falls_back_to_the_previous_one(tmp_path, damage):
    obj = resumable()
    save_at(tmp_path, obj, 3)
    expected = {k: v.clone() for k, v in obj.model.state_dict().items()}
    obj.model[1].weight.data += 1.0
    newest = save_at(tmp_path, obj, 6)
    witness = tmp_path / "executed"
    if damage == "truncate_optimizer":
        data = (newest / "optimizer.bin").read_bytes()
        (newest / "optimizer.bin").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_model":
        (newest / "model.safetensors").write_bytes(b"\x00garbage" * 50)
    elif damage == "drop_rng":
        (newest / "rng_0.safetensors").unlink()
    elif damage == "bad_meta":
        (newest / "meta.json").write_text("{not json")
    elif damage == "pickle_file":  # what accelerate's load_state would have unpickled
        (newest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(witness)))
    else:
        (newest / "optimizer.bin").write_bytes(pickle.dumps(Payload(witness), protocol=2))
    said: list[str] = []
    fresh = resumable(seed=7)
    assert restore_newest(tmp_path, fresh, 0, said.append).name == "step_00000003"
    assert len(said) == 1 and said[0].startswith("warning: state step_00000006 is unusable")
    assert "falling back to step_00000003" in said[0] and "\n" not in said[0]
    assert all(fresh.model.state_dict()[k].equal(v) for k, v in expected.items())
    assert fresh.progress.global_step == 3
    assert not witness.exists(), "a pickle in a state folder was executed"


def test_no_usable_state_is_one_error_and_no_state_is_a_fresh_start(tmp_path):
    obj = resumable()
    assert restore_newest(tmp_path, obj, 0, print) is None
    only = save_at(tmp_path, obj, 3)
    (only / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no usable training state"):
        restore_newest(tmp_path, resumable(), 0, lambda line: None)


def test_a_state_for_another_architecture_is_unusable(tmp_path):
    save_at(tmp_path, resumable(), 3)
    other = resumable()
    other.model[1] = nn.Linear(16, 8)
    with pytest.raises(CheckpointError, match="no usable training state"):
        restore_newest(tmp_path, other, 0, lambda line: None)


def test_regularizer_private_counters_and_own_state_both_round_trip(tmp_path):
    obj = resumable()
    singular = build_regularizer("singular")
    obj.regularizers.regularizers.append(singular)
    batch = {"image": torch.zeros(2, 16), "label": torch.zeros(2, dtype=torch.long), "index": torch.arange(2)}
    for _ in range(3):  # lazy regularization counts calls; the warm trackers fill on evaluated calls
        singular(obj.model, batch, obj.model(batch["image"]))
    save_at(tmp_path, obj, 3)

    fresh = resumable(seed=5)
    fresh.regularizers.regularizers.append(build_regularizer("singular"))
    restore_newest(tmp_path, fresh, 0, print)
    loaded = fresh.regularizers.regularizers[1]
    assert loaded._calls == singular._calls == 3
    assert loaded._lazy_value.equal(singular._lazy_value)
    assert loaded._trackers.keys() == singular._trackers.keys() and singular._trackers
    for key, tracker in singular._trackers.items():
        assert loaded._trackers[key].high.equal(tracker.high) and loaded._trackers[key].age == tracker.age
