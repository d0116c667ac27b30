"""Fixtures of the fault-injection suite: one tiny trained run and one eval entry, built once per session and
copied per test, plus checks shared by every case (one error line, no traceback, nothing else touched)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from regcollide.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "train" / "regularized.py"
# A width-0.125 MLP on 256 images, 2 epochs of 8 steps, a state after each epoch: about a second of training.
TINY = ["model.width=0.125", "data.limit_train=256", "data.limit_test=100", "train.batch_size=32",
        "train.epochs=2", "train.keep_checkpoints=2", "eval.parts=[clean]", "eval.n=50"]


def train_script():
    """The training command line (argparse, train/regularized.py) as a module; its main returns the exit code."""
    spec = importlib.util.spec_from_file_location("hostile_regularized", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks not followed) -> sha256 of its bytes: a snapshot to compare."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def one_error_line(text: str, prefix: str) -> str:
    """The single line of ``text`` starting with ``prefix``; asserts there is exactly one and no traceback."""
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, text
    return lines[0]


def invoke(argv: list[str], code: int) -> str:
    """Run the click CLI in-process; assert the exit code and one ``Error:`` line; return that line."""
    result: Result = CliRunner().invoke(cli_main, argv, catch_exceptions=True)
    assert result.exit_code == code, (argv, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return one_error_line(result.output, "Error:") if code else result.output


@pytest.fixture(scope="session")
def _trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile_run")
    assert train_script().main(["--set", f"out_dir={out}", "--set", "run_name=run",
                                *(a for o in TINY for a in ("--set", o))]) == 0
    return out / "run"


@pytest.fixture
def world(tmp_path, _trained) -> dict[str, Path]:
    """A fresh copy of the trained run in ``tmp/runs/run``, and a sibling folder ``tmp/neighbour`` holding an
    unrelated file that no case may touch."""
    runs = tmp_path / "runs"
    shutil.copytree(_trained, runs / "run", symlinks=True)
    neighbour = tmp_path / "neighbour"
    neighbour.mkdir()
    (neighbour / "precious.txt").write_text("keep me\n")
    return {"root": tmp_path, "runs": runs, "run": runs / "run", "neighbour": neighbour}


@pytest.fixture(scope="session")
def entry(tmp_path_factory, _trained) -> dict:
    """One eval entry of the trained run (clean, audit, a 5-step PGD on 20 images)."""
    out = tmp_path_factory.mktemp("hostile_entry")
    invoke(["eval", str(_trained), "--out", str(out), "--parts", "clean,audit,pgd", "--n", "20",
            "--pgd-steps", "5", "--no-progress"], 0)
    return json.loads((out / "run.json").read_text())


@pytest.fixture
def write_entries(tmp_path, entry) -> Callable[[list[dict]], Path]:
    """``write_entries([changes, ...])``: a folder of copies of the entry, each updated with its changes."""

    def write(changes: list[dict]) -> Path:
        folder = tmp_path / "entries"
        folder.mkdir(exist_ok=True)
        for i, change in enumerate(changes):
            data = json.loads(json.dumps(entry))
            data.update({"name": f"model{i}", **change})
            (folder / f"e{i}.json").write_text(json.dumps(data))
        return folder

    return write
