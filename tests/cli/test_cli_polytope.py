"""``regcollide attack polytope``: writes results.json (contract keys) and polytope.png; clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from regcollide.cli import main
from regcollide.io import read_json

FAST = ["--n", "1", "--steps", "20", "--samples", "100", "--no-progress"]


def test_polytope_command_writes_results_and_picture(tmp_path):
    out = tmp_path / "poly"
    result = CliRunner().invoke(main, ["attack", "polytope", "mlp", "--init", "other", "--vertices", "3",
                                       "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    entry = read_json(out / "results.json")
    for key in ("layer", "vertices", "samples", "success_rate", "mean_top_prob", "vertex_distance",
                "data_distance", "distance_ratio", "max_rel_feature_residual", "ball_success_rate"):
        assert key in entry
    assert entry["layer"] == "1" and entry["vertices"] == 3 and entry["samples"] == 100
    assert entry["init"] == "other" and entry["model"] == "mlp" and entry["data_pairs"] >= 1000
    assert 0 <= entry["success_rate"] <= 1
    png = (out / "polytope.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_polytope_command_rejects_bad_layers_with_the_candidates(tmp_path):
    runner = CliRunner()
    for layer, why in (("nope", "does not exist"), ("5", "does not feed a ReLU")):
        result = runner.invoke(main, ["attack", "polytope", "mlp", "--layer", layer, "--out", str(tmp_path),
                                      *FAST])
        assert result.exit_code != 0
        assert why in result.output and "choose one of: 1, 3" in result.output
        assert "Traceback" not in result.output
    result = runner.invoke(main, ["attack", "polytope", "mlp", "--loss", "l1", *FAST])
    assert result.exit_code != 0 and "li2019" in result.output


def test_hostile_numbers_and_bad_out_are_refused_before_the_search(tmp_path, monkeypatch):
    import regcollide.attacks.polytope.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_polytope", lambda *a, **k: pytest.fail("the search ran"))
    runner = CliRunner()
    for option, value in (("--beta", "nan"), ("--beta", "inf"), ("--lr", "0"), ("--lr", "-inf"),
                          ("--steps", "0"), ("--steps", "1e99"), ("--samples", "-3"), ("--vertices", "1")):
        result = runner.invoke(main, ["attack", "polytope", "mlp", *FAST, option, value,
                                      "--out", str(tmp_path / "p")])
        assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    result = runner.invoke(main, ["attack", "polytope", "mlp", *FAST, "--out", str(blocker / "p")])
    assert result.exit_code == 1 and "cannot write to output folder" in result.output
    assert "Traceback" not in result.output and blocker.read_text() == "keep me"
    assert not (tmp_path / "p").exists()


def test_polytope_command_reports_convergence(tmp_path):
    out = tmp_path / "poly"
    result = CliRunner().invoke(main, ["attack", "polytope", "mlp", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    entry = read_json(out / "results.json")
    assert entry["steps"] == 20 and entry["steps_used"] == 20 and entry["converged"] is False
    assert entry["distance_ratio"] is None and entry["flags"][0]["id"] == "polytope_not_converged"
    assert "converged 0/1 targets (steps used 20 of 20)" in result.output
