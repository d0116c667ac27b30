"""Run folders: safe names, atomic claiming with a marker, a guarded --overwrite, weights and the metrics log."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from _fakes import FakeAccelerator
from torch import nn

from regcollide import io as rio
from regcollide.io import CheckpointError, load_weights, read_state_dict, save_weights
from regcollide.runs import (
    RUN_MARKER,
    MetricsLog,
    RunFolderError,
    check_run_name,
    claim_run_dir,
    read_metrics,
    weights_digest,
)


def mlp(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 3))


class Payload:
    """Unpickling this would create ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


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
    path, witness = tmp_path / "weights.pt", tmp_path / "executed"
    torch.save({"1.weight": torch.zeros(8, 16), "payload": Payload(witness)}, path)
    with pytest.raises(CheckpointError, match="[Ww]eights only load failed"):
        load_weights(mlp(8), path)
    assert not witness.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, os.urandom(4096), b"garbage" * 100], ids=[
    "empty", "short", "random", "text"])
def test_broken_safetensors_give_one_line(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_safetensors_give_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(mlp(8), path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        load_weights(mlp(8), path)


def test_crash_while_saving_weights_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_weights(mlp(8), path)
    before = path.read_bytes()

    def crash(fd):  # the new bytes are in the temporary file, not yet renamed over the old one
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(rio.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_weights(mlp(4), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/abs", "-rf", ".hidden", "a\\b", " x", "a\nb"])
def test_unsafe_run_names_are_refused(name):
    with pytest.raises(RunFolderError, match="not a plain folder name"):
        check_run_name(name)


def test_claim_default_name_takes_the_next_free_suffix(tmp_path):
    first = claim_run_dir(tmp_path, None, "default")
    second = claim_run_dir(tmp_path, None, "default")
    assert (first.name, second.name) == ("default", "default-2")
    assert (first / RUN_MARKER).is_file() and (second / RUN_MARKER).is_file()


def test_claim_explicit_name_refuses_an_existing_folder(tmp_path):
    claim_run_dir(tmp_path, "tiny", "x")
    with pytest.raises(RunFolderError, match="already exists: pass --resume"):
        claim_run_dir(tmp_path, "tiny", "x")
    (tmp_path / "empty").mkdir()  # an empty folder is someone's too: claiming is all or nothing
    with pytest.raises(RunFolderError, match="already exists"):
        claim_run_dir(tmp_path, "empty", "x")


def test_two_claims_at_once_never_share_a_folder(tmp_path):
    outcomes: list = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            outcomes.append(claim_run_dir(tmp_path, "race", "x"))
        except RunFolderError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1


def test_overwrite_replaces_only_a_marked_run_inside_out_dir(tmp_path):
    out = tmp_path / "runs"
    run = claim_run_dir(out, "tiny", "x")
    (run / "old.txt").write_text("old")
    again = claim_run_dir(out, "tiny", "x", overwrite=True)
    assert again == run and not (run / "old.txt").exists() and (run / RUN_MARKER).is_file()

    unmarked = out / "data"
    unmarked.mkdir()
    (unmarked / "keep.txt").write_text("precious")
    with pytest.raises(RunFolderError, match="not a run folder written by regcollide"):
        claim_run_dir(out, "data", "x", overwrite=True)
    assert (unmarked / "keep.txt").read_text() == "precious"


def test_overwrite_never_follows_a_symlink_out_of_out_dir(tmp_path):
    elsewhere = claim_run_dir(tmp_path / "other", "victim", "x")  # marked, but not inside out_dir
    (elsewhere / "keep.txt").write_text("precious")
    out = tmp_path / "runs"
    out.mkdir()
    (out / "link").symlink_to(elsewhere)
    with pytest.raises(RunFolderError, match="not a run folder"):
        claim_run_dir(out, "link", "x", overwrite=True)
    assert (elsewhere / "keep.txt").read_text() == "precious"


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        claim_run_dir(tmp_path / "file", "tiny", "x")


def test_metrics_truncate_after_a_resumed_step_and_torn_lines(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", FakeAccelerator())
    for step in range(1, 6):
        log.write({"event": "train", "step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"event": "train", "step": 6, "lo')  # a crash mid-write
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    log.truncate_after(3)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
