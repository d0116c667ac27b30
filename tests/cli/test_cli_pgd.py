"""`regcollide attack pgd`: writes the contract JSON and the curve, validates its options."""

from __future__ import annotations

import json

from click.testing import CliRunner

from regcollide.cli import main

CONTRACT = ("norm eps steps restarts clean_acc robust_acc median_eps_star mean_steps_to_success curve "
            "flags").split()


def test_attack_pgd_writes_results_and_curve(tmp_path):
    out = tmp_path / "pgd"
    args = ["attack", "pgd", "mlp", "--n", "40", "--steps", "5", "--bisection-steps", "2", "--eps", "0.3",
            "--autoattack", "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert set(CONTRACT) <= set(data)
    assert data["eps"] == 0.3 and data["steps"] == 5 and data["model"] == "mlp" and data["n"] == 40
    assert data["autoattack"]["robust_acc"] <= data["robust_acc"] <= data["clean_acc"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attack_pgd_rejects_bad_options(tmp_path):
    runner = CliRunner()
    bad_eps = runner.invoke(main, ["attack", "pgd", "mlp", "--eps", "-1", "--out", str(tmp_path)])
    assert bad_eps.exit_code == 2 and "--eps" in bad_eps.output
    bad_norm = runner.invoke(main, ["attack", "pgd", "mlp", "--norm", "l3", "--out", str(tmp_path)])
    assert bad_norm.exit_code == 2 and "l3" in bad_norm.output
    bad_max = runner.invoke(main, ["attack", "pgd", "mlp", "--n", "4", "--eps", "0.1", "--eps-max", "0.05",
                                   "--no-progress", "--out", str(tmp_path)])
    assert bad_max.exit_code == 2 and "--eps-max 0.05 must be larger than --eps 0.1" in bad_max.output
    unknown = runner.invoke(main, ["attack", "pgd", "no-such-model", "--out", str(tmp_path)])
    assert unknown.exit_code != 0 and "Traceback" not in unknown.output
