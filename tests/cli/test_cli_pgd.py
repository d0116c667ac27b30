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


def test_eps_one_is_explained_without_mentioning_an_unset_eps_max(tmp_path):
    result = CliRunner().invoke(main, ["attack", "pgd", "mlp", "--eps", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--eps-max" not in result.output and "every image" in result.output
    assert not (tmp_path / "o").exists()


def test_out_under_a_file_is_refused_before_the_attack(tmp_path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["attack", "pgd", "mlp", "--n", "4", "--out", str(tmp_path / "file" / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        line for line in result.output.splitlines() if "cannot write to output folder" in line]


def test_explicit_data_is_honoured_with_a_checkpoint(tmp_path):
    """--checkpoint RUN --data SPEC attacks SPEC's images, not the run's dataset."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from regcollide.io import save_weights
    from regcollide.models import create_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: mlp, width: 0.25, num_classes: 10, in_chans: 1, img_size: 28}\n"
                                     "data: {spec: mnist5k}\nseed: 0\nregularizers: []\n")
    torch.manual_seed(0)
    save_weights(create_model("mlp", width=0.25), run / "model.safetensors")
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(6):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
        pngs.append({"bytes": buffer.getvalue(), "path": None})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"image": pngs, "label": [0, 1, 2, 3, 4, 5]}),
                   tmp_path / "pq" / "data" / "test-00000-of-00001.parquet")
    spec = f"parquet:{tmp_path / 'pq'}"
    result = CliRunner().invoke(main, ["attack", "pgd", "mlp", "--checkpoint", str(run), "--data", spec, "--n", "6",
                                       "--steps", "2", "--bisection-steps", "0", "--no-checks", "--no-progress",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["data"] == spec and data["n"] == 6   # mnist5k would have given the run's 500 default images
