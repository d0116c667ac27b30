"""End to end: a tiny training run produces a complete run folder; a diverging run stops cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regcollide.runs import RUN_MARKER, load_run
from regcollide.training.checkpoint import latest_state

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "train" / "regularized.py"
TINY = ["--set", "model.width=0.125", "--set", "data.limit_train=256", "--set", "data.limit_test=200",
        "--set", "train.batch_size=32", "--set", "train.epochs=2", "--set", "train.log_every=4",
        "--set", "train.progress=false", "--set", "train.num_threads=1"]


def train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, "--set", f"out_dir={tmp_path}", *extra],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_run_folder_is_complete_and_loadable(tmp_path):
    # spectral norm wraps layers during training; its finalize must leave plain weights in model.safetensors
    out = train(tmp_path, "--set", "run_name=tiny", "--set", "eval.parts=[clean, audit]", "--set", "eval.n=200",
                "--set", "regularizers=[{name: singular, weight: 0.1}, {name: spectral, weight: 1.0}]")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "tiny"
    assert {"config.yaml", "model.safetensors", "metrics.jsonl", "results.json", "state"} <= \
        {p.name for p in run_dir.iterdir()}

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == {"name": "mlp", "width": 0.125, "num_classes": 10, "in_chans": 1, "img_size": 28}
    assert config["run_name"] == "tiny" and config["regularizers"][0]["name"] == "singular"

    records = lines(run_dir / "metrics.jsonl")
    train_lines = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_lines] == [4, 8, 12, 16]  # 256 / 32 = 8 steps per epoch, 2 epochs
    for r in train_lines:
        assert {"loss", "train_acc", "lr", "term/cross_entropy", "term/singular", "term/spectral"} <= r.keys()
        # the logged loss is the cross entropy plus the weighted regularizer terms
        expected = r["term/cross_entropy"] + 0.1 * r["term/singular"] + 1.0 * r["term/spectral"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(0 <= r["test_acc"] <= 1 for r in epochs)

    results = json.loads((run_dir / "results.json").read_text())
    assert 0.1 < results["clean_acc"] <= 1.0  # two epochs on 256 digits beat chance (0.1)
    assert results["audit"]["n_weights"] == 3
    model, loaded_config = load_run(run_dir)  # plain mlp, no spectral-norm parametrization left
    assert loaded_config["model"]["width"] == 0.125
    assert latest_state(run_dir).name == "step_00000016"
    assert "clean accuracy" in out.stdout  # the summary table

    again = train(tmp_path, "--set", "run_name=tiny")
    assert again.returncode == 2 and "already exists: pass --resume" in again.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    out = train(tmp_path, "--set", "run_name=nan", "--set", "train.optimizer=sgd", "--set", "train.lr=1e15",
                "--set", "train.checkpoint_every=1", "--set", "regularizers=[{name: singular, weight: 0.1}]")
    assert out.returncode == 3, out.stderr[-3000:]
    message = out.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error: loss is not finite at step")
    assert "cross_entropy" in message[0] and "blew up" in message[0]
    latest = latest_state(tmp_path / "nan")
    assert latest is not None and f"{latest} is kept" in message[0]
    assert (latest / "model.safetensors").is_file() and (latest / "optimizer.bin").is_file()
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_library_run_tracks_to_tensorboard(train_run):
    """train.log_with goes to accelerate; the event file holds every logged loss and the resolved config."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train_run("train.log_with=[tensorboard]", "eval.enabled=false")
    assert result.completed and result.global_step == 16
    events = sorted(result.run_dir.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run folder"
    logged = {r["step"]: r["loss"] for r in lines(result.run_dir / "metrics.jsonl") if r["event"] == "train"}
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        if "loss" in acc.Tags()["scalars"]:
            scalars = {e.step: e.value for e in acc.Scalars("loss")}
    assert scalars.keys() == logged.keys() == {4, 8, 12, 16}
    assert all(scalars[k] == pytest.approx(logged[k], rel=1e-6) for k in logged)
    hparams = b"".join(p.read_bytes() for p in events)
    assert b"train.log_with" in hparams and b"model.width" in hparams  # the flattened config


def test_library_run_folder_is_claimed_and_marked(train_run):
    result = train_run()
    assert (result.run_dir / RUN_MARKER).is_file() and result.run_dir.name == "run"
    assert 0.1 < result.results["clean_acc"] <= 1.0
    assert result.model is not None and not result.model.training


def test_overwrite_through_the_cli_keeps_an_unmarked_folder(tmp_path):
    victim = tmp_path / "data"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    out = train(tmp_path, "--set", "run_name=data", "--overwrite")
    assert out.returncode == 2 and "not a run folder written by regcollide" in out.stderr
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
