"""The command-line entry point: help, the registry listing and the data summary."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from regcollide.cli import COMMANDS, main


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("models", "data", "audit", "attack", "eval", "leaderboard", "correlate"):
        assert name in result.output and name in COMMANDS


def test_every_command_imports_and_has_help():
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert "Usage:" in result.output
    for name in ("nullspace", "polytope", "pgd"):
        result = runner.invoke(main, ["attack", name, "--help"])
        assert result.exit_code == 0, f"attack {name}: {result.output}"


def test_models_lists_registry():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    for name in ("mlp", "lenet5", "cnn-small", "resnet18-cifar", "vit-tiny"):
        assert name in result.output


def test_data_summary_shows_class_balance():
    result = CliRunner().invoke(main, ["data", "mnist5k"])
    assert result.exit_code == 0
    assert "4000" in result.output and "1000" in result.output and "9:100" in result.output


def test_console_script_runs_from_the_venv():
    result = subprocess.run([sys.executable, "-m", "regcollide.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "audit" in result.stdout
