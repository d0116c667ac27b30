"""``regcollide attack nullspace``: results.json with the contract keys, grid.png, clear errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from regcollide.cli import main

CONTRACT = ("model first_layer nullity exact n beta linf_mean l2_mean max_abs_output_residual "
            "max_rel_output_residual max_rel_first_layer_residual prediction_agreement").split()


def test_nullspace_command_writes_results_and_grid(tmp_path):
    out = tmp_path / "ns"
    result = CliRunner().invoke(main, ["attack", "nullspace", "mlp", "--n", "3", "--collisions", "2",
                                       "--valid-image", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "results.json").read_text())
    assert all(key in entry for key in CONTRACT)
    assert entry["exact"] is True and entry["nullity"] == 528 and entry["n"] == 3
    assert entry["max_rel_output_residual"] <= 1e-5 and entry["min_pixel"] >= 0 and entry["max_pixel"] <= 1
    assert (out / "grid.png").stat().st_size > 1000
    assert "exact collisions" in result.output


def test_nullity_zero_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["attack", "nullspace", "vit-tiny", "--n", "2", "--no-progress",
                                       "--out", str(tmp_path / "vit")])
    assert result.exit_code == 1
    assert "nullity 0" in result.output and "Traceback" not in result.output
