"""Resume: bitwise identical to an uninterrupted run, validated before anything changes, robust to damage.

The kill test SIGKILLs the training right after optimizer step K through a callback installed by
``_train_with_kill.py``. The tiny config checkpoints every 3 steps, so step K=8 falls mid-epoch 2 (5 steps
per epoch) after the step-6 checkpoint: the resumed run must restore weights, optimizer momentum, RNG states
and the decorrelation sampler's generator, and skip the first batch of epoch 2 in the same (seed, epoch)
order. The in-process tests stop runs cleanly with ``StopAfterSteps`` instead.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _train_utils import torch_threads
from _train_with_kill import load_script
from safetensors.torch import load_file

from regcollide.training import checkpoint
from regcollide.training.callbacks import StopAfterSteps

REPO = Path(__file__).resolve().parents[2]
KILL = Path(__file__).resolve().parent / "_train_with_kill.py"
TINY = ["--set", "model.width=0.125", "--set", "data.limit_train=160", "--set", "data.limit_test=100",
        "--set", "train.batch_size=32", "--set", "train.epochs=3", "--set", "train.checkpoint_every=3",
        "--set", "train.log_every=2", "--set", "train.progress=false", "--set", "train.num_threads=1",
        "--set", "eval.enabled=false",
        # max_rows below the 32 rows of the hidden layers: the decorrelation term samples a row subset
        # every step, so its generator must be checkpointed too; PGD-free terms keep the test fast.
        "--set", "regularizers=[{name: singular, weight: 0.1}, "
                 "{name: decorrelation, weight: 0.1, params: {max_rows: 16}}]"]


def run(out_dir: Path, name: str, *extra: str, kill_at: int = 0, resume: bool = False):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--resume", str(out_dir / name)] if resume else [*TINY, "--set", f"out_dir={out_dir}",
                                                            "--set", f"run_name={name}"]
    return subprocess.run([sys.executable, str(KILL), str(kill_at), *args, *extra], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)


def main(*argv: str, callbacks=()) -> int:
    with torch_threads(1):
        return load_script().main(list(argv), callbacks=callbacks)


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), f"{key} differs after resume (max |diff| {(a[key] - b[key]).abs().max()})"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    assert main(*TINY, "--set", f"out_dir={out}", "--set", "run_name=straight") == 0
    return out / "straight"


@pytest.fixture(scope="module")
def stopped_template(tmp_path_factory) -> Path:
    """A run stopped cleanly after 7 steps: states at steps 6 and 7 (keep 2), no model.safetensors."""
    out = tmp_path_factory.mktemp("stopped")
    code = main(*TINY, "--set", f"out_dir={out}", "--set", "run_name=stopped", callbacks=[StopAfterSteps(7)])
    assert code == 0
    assert not (out / "stopped" / "model.safetensors").exists()
    return out / "stopped"


@pytest.fixture
def stopped(tmp_path, stopped_template) -> Path:
    """A private copy of the stopped run (each test may resume or damage it)."""
    return Path(shutil.copytree(stopped_template, tmp_path / "stopped", symlinks=True))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, straight):
    killed = run(tmp_path, "killed", kill_at=8)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    killed_dir = tmp_path / "killed"
    assert not (killed_dir / "model.safetensors").exists()
    assert (killed_dir / "state" / "latest").read_text().strip() == "step_00000006"

    resumed = run(tmp_path, "killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    same_weights(straight, killed_dir)
    # The logged history matches too: steps logged after the checkpoint were dropped and replayed.
    plain, replayed = records(straight, "train"), records(killed_dir, "train")
    assert [r["step"] for r in replayed] == [r["step"] for r in plain]
    assert [r["term/decorrelation"] for r in replayed[-3:]] == [r["term/decorrelation"] for r in plain[-3:]]
    assert records(killed_dir, "end")[0]["weights_sha256"] == records(straight, "end")[0]["weights_sha256"]


def test_stop_then_resume_in_process_is_bitwise_identical(stopped, straight):
    run_dir = stopped
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"event": "train", "st')  # a torn last line from a crash mid-write is tolerated
    assert main("--resume", str(run_dir)) == 0
    same_weights(straight, run_dir)
    assert [r["step"] for r in records(run_dir, "train")] == [r["step"] for r in records(straight, "train")]


@pytest.mark.parametrize("override, key", [("model.width=0.5", "model.width"), ("train.batch_size=64",
                                           "train.batch_size"), ("seed=3", "seed"), ("data.limit_train=100",
                                           "data.limit_train"), ("model.name=lenet5", "model.name")])
def test_resume_refuses_changes_to_the_model_or_data_order(stopped, capsys, override, key):
    run_dir = stopped
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main("--resume", str(run_dir), "--set", override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {key}: cannot change on --resume"), err
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert main("--resume", str(run_dir)) == 0  # a plain resume still works afterwards
    assert (run_dir / "model.safetensors").is_file()


def test_resume_applies_other_overrides_exactly(stopped):
    run_dir = stopped
    assert main("--resume", str(run_dir), "--set", "train.epochs=4", "--set", "train.log_every=1") == 0
    assert records(run_dir, "end")[0]["step"] == 20  # 4 epochs of 5 steps
    saved = (run_dir / "config.yaml").read_text()
    assert "epochs: 4" in saved and "log_every: 1" in saved


def test_corrupt_newest_state_falls_back_in_one_line_and_still_matches(stopped, straight, capsys):
    run_dir = stopped
    newest = run_dir / "state" / "step_00000007"
    data = (newest / "optimizer.bin").read_bytes()
    (newest / "optimizer.bin").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main("--resume", str(run_dir)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "step_00000007 is unusable" in warnings[0]
    assert "falling back to step_00000006" in warnings[0]
    same_weights(straight, run_dir)  # replayed from step 6: the same weights


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_state(tmp_path, capsys, monkeypatch):
    saves: list[Path] = []
    write = checkpoint.write_file

    def filling_disk(path: Path, data: bytes) -> None:
        saves.append(path.parent)
        if len(set(saves)) >= 2:  # the second state (step 5, the end of epoch 1) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(checkpoint, "write_file", filling_disk)
    capsys.readouterr()
    assert main(*TINY, "--set", f"out_dir={tmp_path}", "--set", "run_name=full") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not save the training state at step 5"), err
    assert "No space left on device" in err[0] and "step_00000003 is intact" in err[0]
    states = tmp_path / "full" / "state"
    assert sorted(p.name for p in states.iterdir()) == ["latest", "step_00000003"]
    monkeypatch.setattr(checkpoint, "write_file", write)
    assert main("--resume", str(tmp_path / "full")) == 0  # space freed: the run continues from step 3


def test_resume_on_another_number_of_processes_is_refused(stopped, capsys):
    for state in (stopped / "state").glob("step_*"):
        meta = json.loads((state / "meta.json").read_text())
        (state / "meta.json").write_text(json.dumps({**meta, "num_processes": 2}))
    before = (stopped / "config.yaml").read_bytes()
    capsys.readouterr()
    assert main("--resume", str(stopped)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: num_processes: the run was trained on 2 process(es), this launch has 1; "
                   "relaunch with --num_processes 2"]
    assert (stopped / "config.yaml").read_bytes() == before
