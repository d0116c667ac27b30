"""``regcollide attack nullspace``: results.json with the contract keys, grid.png, clear errors."""

from __future__ import annotations

import json

import pytest
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


def test_hostile_numbers_get_one_line_and_no_folder(tmp_path):
    runner = CliRunner()
    for option, value in (("--beta", "inf"), ("--beta", "nan"), ("--beta", "-1"), ("--beta", "0"),
                          ("--beta", "1e300"), ("--collisions", "0"), ("--adversarial-eps", "nan"),
                          ("--adversarial-eps", "2")):
        out = tmp_path / f"ns{option}{value}"
        result = runner.invoke(main, ["attack", "nullspace", "mlp", "--n", "2", option, value, "--no-progress",
                                      "--out", str(out)])
        assert result.exit_code == 2, (option, value, result.output)
        assert "Traceback" not in result.output and option in result.output and not out.exists()


def test_out_under_a_file_is_refused_before_the_attack(tmp_path, monkeypatch):
    import regcollide.attacks.nullspace.search as search

    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    monkeypatch.setattr(search, "evaluate_nullspace", lambda *a, **k: pytest.fail("the attack ran"))
    result = CliRunner().invoke(main, ["attack", "nullspace", "mlp", "--n", "2", "--no-progress",
                                       "--out", str(blocker / "ns")])
    assert result.exit_code == 1 and "cannot write to output folder" in result.output
    assert "Traceback" not in result.output and blocker.read_text() == "keep me"


def test_distinct_colliding_adversarials_and_valid_images_are_printed(tmp_path):
    out = tmp_path / "adv"
    result = CliRunner().invoke(main, ["attack", "nullspace", "mlp", "--n", "2", "--valid-image", "--collisions",
                                       "2", "--adversarial-eps", "0.1", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "results.json").read_text())
    adv = entry["colliding_adversarial"]
    assert adv["min_distance"] == pytest.approx(1 / 255) and len(adv["distances_to_adversarial"]) == 4
    assert adv["count"] == sum(d >= adv["min_distance"] for d in adv["distances_to_adversarial"])
    assert entry["valid_found"] is True and entry["valid_count"] == 4 and 0 < entry["relative_distance"] < 1
    assert "distinct (>= 0.00392 apart" in result.output and "valid colliding images" in result.output
