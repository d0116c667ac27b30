"""`regcollide audit`: formats, contract keys, geometry defaults and clear errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import pytest
from click.testing import CliRunner

from regcollide.cli import main

CONTRACT_KEYS = {"model", "convention", "rtol", "atol", "n_weights", "nu", "mu", "nu_frac", "mu_frac",
                 "total_nullity", "structural_nullity", "excess_nullity", "first_nullity", "layers"}
LAYER_KEYS = {"name", "kind", "out_dim", "in_dim", "rank", "nullity", "structural_nullity", "sigma_min",
              "sigma_max", "max_cosine"}


def run(*args: str):
    result = CliRunner().invoke(main, ["audit", *args])
    return result


@pytest.mark.slow
def test_resnet50_json_writes_every_contract_key(tmp_path):
    out = tmp_path / "audit.json"
    result = run("tv:resnet50", "--format", "json", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert CONTRACT_KEYS <= set(data)
    assert all(LAYER_KEYS <= set(layer) for layer in data["layers"])
    # 53 convolutions + fc; conv1 is 64 x (3*7*7): nullity 147 - 64 = 83; ImageNet geometry by default.
    assert (data["n_weights"], data["first_nullity"], data["input_shape"]) == (54, 83, [3, 224, 224])
    assert data["first_layer"].endswith("conv1") and data["first_layer_source"] == "forward"
    assert data["structural_nullity"] == sum(layer["structural_nullity"] for layer in data["layers"])


def test_table_is_aligned_with_a_totals_line():
    result = run("mlp", "--per-layer")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[0]
    assert header.split()[:3] == ["name", "kind", "out_dim"]
    rows = lines[2 : lines.index(lines[1], 2)]  # between the two rule lines
    assert len(rows) == 3  # the mlp registry model: 784 -> 256 -> 256 -> 10
    # Right/left padding keeps columns aligned: each numeric column ends where its header label ends, and
    # the last one (the left-aligned method name, "gram" or "svd") starts where its label starts.
    ends = [m.end() for m in re.finditer(r"\S+", header)][2:-1]  # the numeric columns
    last = header.rindex(" ") + 1
    for line in rows:
        assert all(line[end - 1] != " " and line[end] == " " for end in ends), line
        assert line[last - 1] == " " and line[last] != " ", line
    totals = next(line for line in lines if line.startswith("TOTAL"))
    assert totals.split()[3:6] == ["774", "774", "0"]  # nullity 528 + 0 + 246, all structural at init
    assert "nullity(W1)" in result.output and "forward order" in result.output


def test_csv_per_layer_has_one_row_per_matrix_and_grouped_changes_depthwise_counts():
    paper = run("tv:mobilenet_v3_small", "--format", "csv", "--per-layer")
    grouped = run("tv:mobilenet_v3_small", "--format", "csv", "--per-layer", "--convention", "grouped")
    assert paper.exit_code == 0 and grouped.exit_code == 0, paper.output + grouped.output
    paper_rows = list(csv.DictReader(io.StringIO(paper.output)))
    grouped_rows = list(csv.DictReader(io.StringIO(grouped.output)))
    assert len(paper_rows) == len(grouped_rows) == 54
    depthwise = [i for i, row in enumerate(grouped_rows) if int(row["blocks"]) > 1]
    assert depthwise and all(int(grouped_rows[i]["nullity"]) > int(paper_rows[i]["nullity"]) for i in depthwise)


def test_summary_csv_and_tolerance_options():
    result = run("mlp", "--format", "csv", "--rtol", "0.5")
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(io.StringIO(result.output))
    assert int(row["n_weights"]) == 3 and int(row["excess_nullity"]) > 0  # rtol 0.5 cuts most of the spectrum
    data = json.loads(run("mlp", "--format", "json", "--atol", "1e-3").output)
    assert data["atol"] == 1e-3 and all(layer["atol"] == 1e-3 for layer in data["layers"])


def test_input_size_override_and_clear_errors():
    data = json.loads(run("mlp", "--format", "json", "--input-size", "1", "28", "28").output)
    assert data["input_shape"] == [1, 28, 28]
    bad_shape = run("mlp", "--input-size", "3", "5", "5")
    assert bad_shape.exit_code != 0 and "input shape" in bad_shape.output
    bad_model = run("tv:not_a_model")
    assert bad_model.exit_code != 0 and "unknown torchvision model" in bad_model.output
    bad_convention = run("mlp", "--convention", "rows")
    assert bad_convention.exit_code == 2 and "paper" in bad_convention.output


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf"])
def test_non_finite_or_negative_tolerances_are_refused_before_any_work(value):
    for option in ("--rtol", "--atol"):
        result = run("mlp", option, value)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert option in result.output


def test_out_under_a_file_or_in_a_read_only_folder_is_refused_before_the_audit(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    under = run("mlp", "--out", str(blocker / "audit.txt"))
    assert under.exit_code == 2 and "--out" in under.output and "a file" in under.output
    assert blocker.read_text() == "keep me"
    folder = run("mlp", "--out", str(tmp_path))
    assert folder.exit_code == 2 and "is a directory" in folder.output
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run("mlp", "--out", str(locked / "audit.txt"))
        if os.access(locked, os.W_OK):  # running as root: permissions do not bind, the write succeeds
            assert result.exit_code == 0 and (locked / "audit.txt").exists()
        else:
            assert result.exit_code == 2 and "not writable" in result.output
    finally:
        locked.chmod(0o700)


def test_nan_weights_give_one_line(tmp_path):
    from safetensors.torch import save_file

    from regcollide.models import create_model

    model = create_model("mlp")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k in state if k.endswith("weight"))
    state[key][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    result = run("mlp", "--weights", str(path))
    assert result.exit_code == 1 and "NaN or inf" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_paper_layer_set_and_the_tolerance_sensitivity_report():
    data = json.loads(run("mlp", "--format", "json", "--layers", "paper", "--no-cosines").output)
    assert data["layer_set"] == "paper" and all(layer["max_cosine"] is None for layer in data["layers"])
    rows = data["tolerance_sensitivity"]
    assert [row["factor"] for row in rows] == [0.1, 1.0, 10.0, 100.0]
    assert rows[1]["nu"] == data["nu"] and rows[1]["excess_nullity"] == data["excess_nullity"]
    assert all("expected_random_excess" in layer for layer in data["layers"])
    table = run("mlp").output
    assert "tolerance sensitivity" in table and "expected at random init" in table
