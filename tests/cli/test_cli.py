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


def test_models_lists_registry_and_explains_every_naming_form():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    for name in ("mlp", "lenet5", "cnn-small", "resnet18-cifar", "vit-tiny"):
        assert name in result.output
    for form in ("timm:<name>", "hf-hub:<org>/<repo>", "tv:<name>", "rb:<dataset>/<threat>/<name>",
                 "module:callable", "--weights FILE", "--pretrained"):
        assert form in result.output, form


def test_data_summary_shows_class_balance():
    result = CliRunner().invoke(main, ["data", "mnist5k"])
    assert result.exit_code == 0
    assert "4000" in result.output and "1000" in result.output and "9:100" in result.output


def test_console_script_runs_from_the_venv():
    result = subprocess.run([sys.executable, "-m", "regcollide.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "audit" in result.stdout


def test_data_lists_a_validation_split(tmp_path):
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    (tmp_path / "data").mkdir()
    for split, n in (("train", 4), ("validation", 2)):
        images = []
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(np.full((5, 5), i, dtype=np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        pq.write_table(pa.table({"image": images, "label": [i % 2 for i in range(n)]}),
                       tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    result = CliRunner().invoke(main, ["data", f"parquet:{tmp_path}"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines() if line.startswith("  ")}
    assert rows == {"train": "4", "validation": "2"}
    assert "  validation      2 images  1x5x5  classes {0:1, 1:1}" in result.output


def test_every_model_command_takes_weights_pretrained_and_device():
    runner = CliRunner()
    for args in (["audit"], ["attack", "pgd"], ["attack", "nullspace"], ["attack", "polytope"]):
        result = runner.invoke(main, [*args, "--help"])
        for option in ("--weights", "--pretrained", "--device"):
            assert option in result.output, (args, option)
