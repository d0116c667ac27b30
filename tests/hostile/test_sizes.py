"""Implausible sizes: a huge integer in a config is refused in one line; a --n larger than the split is said
in one warning line by every command that takes --n, and the command then uses the whole split."""

from __future__ import annotations

import json

import pytest
from conftest import invoke, one_error_line, tree
from test_faults import _parquet, _png, _train

from regcollide.training.config import load_config
from regcollide.training.validate import MAX_INT, ConfigError

HUGE = "100000000000000000000"  # 1e20 written out: YAML reads it as an int, not as the string '1e20'


@pytest.mark.parametrize("override", [f"train.epochs={HUGE}", "train.batch_size=10000000000",
                                      "seed=99999999999999", f"eval.n={HUGE}", "train.epochs=1e20"])
def test_a_huge_integer_on_the_command_line_is_one_line(world, capsys, override):
    before = tree(world["root"])
    code, err = _train(capsys, "--set", override, "--set", f"out_dir={world['runs']}", "--dry-run")
    line = one_error_line(err, "error:")
    assert code == 2 and override.split("=")[0] in line
    assert "implausibly large" in line or "expected int" in line  # 1e20 is a YAML string, refused as one
    assert tree(world["root"]) == before


def test_a_huge_integer_in_a_config_file_is_one_line(world, capsys):
    path = world["root"] / "huge.yaml"
    path.write_text(f"train:\n  epochs: {HUGE}\n")
    code, err = _train(capsys, str(path), "--dry-run")
    assert code == 2 and "train.epochs: value 100000000000000000000 is implausibly large; must be at most " \
                          "1,000,000,000" in one_error_line(err, "error:")


def test_a_huge_integer_in_regularizer_params_is_one_line(world, capsys):
    # without the bound it reached the regularizer and ended in an OverflowError traceback at the first step
    params = f"regularizers=[{{name: singular, weight: 1, params: {{lazy_every: {HUGE}}}}}]"
    code, err = _train(capsys, "--set", params, "--set", f"out_dir={world['runs']}", "--dry-run")
    line = one_error_line(err, "error:")
    assert code == 2 and "regularizers.0.params.lazy_every: value 100000000000000000000 is implausibly large" in line
    nested = "regularizers=[{name: singular, weight: 1, params: {layers: [-100000000000000000000]}}]"
    assert "implausibly large" in one_error_line(_train(capsys, "--set", nested, "--dry-run")[1], "error:")


def test_the_integer_bound_is_the_command_lines_bound():
    assert MAX_INT == 10**9
    assert load_config(None, [f"train.epochs={MAX_INT}"]).train.epochs == MAX_INT  # the bound itself is fine
    with pytest.raises(ConfigError, match="implausibly large"):
        load_config(None, [f"train.log_every={MAX_INT + 1}"])


@pytest.mark.parametrize("command", [
    ["attack", "pgd", "--steps", "1", "--bisection-steps", "0", "--no-progress"],
    ["attack", "nullspace", "--no-progress"],
    ["attack", "polytope", "--steps", "1", "--samples", "1", "--vertices", "2", "--no-progress"],
], ids=["pgd", "nullspace", "polytope"])
def test_n_beyond_the_split_is_said_in_one_warning_line(world, command):
    spec = _parquet(world["root"] / "pq", [_png(40 * i) for i in range(6)], [0, 1, 2, 3, 4, 5])
    out = world["root"] / "out"
    output = invoke([*command[:2], "mlp", "--checkpoint", str(world["run"]), "--data", spec, "--n", "1000000000",
                     *command[2:], "--out", str(out)], 0)
    line = one_error_line(output, "warning: --n")
    assert line == "warning: --n 1000000000 is more than the 6 images of " + spec + "'s test split; using all 6"
    assert (out / "results.json").is_file()


def test_n_within_the_split_says_nothing(world):
    spec = _parquet(world["root"] / "pq", [_png(40 * i) for i in range(6)], [0, 1, 2, 3, 4, 5])
    output = invoke(["attack", "pgd", "mlp", "--checkpoint", str(world["run"]), "--data", spec, "--n", "6",
                     "--steps", "1", "--bisection-steps", "0", "--no-progress", "--out", str(world["root"] / "o")], 0)
    assert "warning: --n" not in output
    assert json.loads((world["root"] / "o" / "results.json").read_text())["n"] == 6


def test_polytope_samples_beyond_memory_are_one_line(world, monkeypatch):
    # a machine with 1 GB: 100,000 samples of 28x28 digits need ~2.5 GB at the measured ~30 bytes per value
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 10**9 // 4096}
    monkeypatch.setattr("os.sysconf", lambda name: pages[name])
    out = world["root"] / "out"
    common = ["attack", "polytope", "mlp", "--checkpoint", str(world["run"]), "--n", "1", "--steps", "1",
              "--no-progress", "--out", str(out)]
    line = invoke([*common, "--samples", "100000"], 2)
    assert "100000 samples of 1x28x28 inputs need about 3 GB, more than this machine's 1 GB; use at most 39859" in line
    assert not (out / "results.json").exists()
    invoke([*common, "--samples", "2000"], 0)  # what fits still runs
    assert (out / "results.json").is_file()
