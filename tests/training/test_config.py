"""Config loading and validation: typed overrides, and bad configs rejected before any work."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regcollide.training.config import Config, ConfigError, dump_config, from_dict, instantiate, load_config, resolve

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "train" / "regularized.py"
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_defaults_and_typed_overrides():
    cfg = load_config(None, ["train.epochs=3", "train.lr=1", "regularizers=[{name: singular, weight: 0.1}]",
                             "regularizers.0.weight=0.2", "data.limit_train=100"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # an int is accepted for a float
    assert cfg.regularizers[0].name == "singular" and cfg.regularizers[0].weight == 0.2
    assert cfg.data.limit_train == 100


def test_round_trip_through_yaml():
    cfg = load_config(None, ["seed=7", "regularizers=[{name: decorrelation, weight: 0.5, params: {kappa: 3}}]"])
    again = from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("override, key, fragment", [
    ("train.epoch=3", "train.epoch", "did you mean 'epochs'"),
    ("trian.epochs=3", "trian", "did you mean 'train'"),
    ("train.lr=-0.1", "train.lr", "out of range"),
    ("train.lr=0", "train.lr", "must be > 0"),
    ("train.epochs=2.5", "train.epochs", "expected int"),
    ("train.epochs=abc", "train.epochs", "expected int"),
    ("train.progress=1", "train.progress", "true or false"),
    ("train.optimizer=sdg", "train.optimizer", "did you mean 'sgd'"),
    ("regularizers.0.weight=1", "regularizers", "no list"),
    ("regularizers=[{name: singular, wieght: 1}]", "regularizers.0.wieght", "did you mean 'weight'"),
])
def test_bad_values_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("override, key, fragment", [
    ("model.name=mpl", "model.name", "did you mean 'mlp'"),
    ("regularizers=[{name: singulr}]", "regularizers.0.name", "did you mean 'singular'"),
    ("data.spec=nosuch", "data.spec", "unknown dataset spec"),
])
def test_unknown_registry_names(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        resolve(load_config(None, [override]))
    assert str(info.value).startswith(key + ":") and fragment in str(info.value)


def test_resolve_fills_geometry_from_the_dataset():
    cfg = resolve(load_config(None))
    assert (cfg.model.num_classes, cfg.model.in_chans, cfg.model.img_size) == (10, 1, 28)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_are_valid_and_commented(path):
    cfg = load_config(path)
    # distill needs its teacher run first; a hub dataset needs a network (its end-to-end test swaps in a
    # local parquet copy), so those two are checked by load_config alone.
    if not any(r.name == "distill" for r in cfg.regularizers) and not cfg.data.spec.startswith("hf:"):
        instantiate(cfg)  # the model and every regularizer with its params build
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#")[0].strip()
        if code and not code.endswith(":") and not code.startswith("- "):  # a value on this line
            assert "#" in line, f"{path.name}:{number} has a value without a comment: {line!r}"


def load_script():
    spec = importlib.util.spec_from_file_location("regularized_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_rejects_bad_configs_without_creating_a_run(tmp_path, capsys):
    """Every bad config exits non-zero with one line on stderr, and no run folder appears.

    main() returns the exit code the command line gets; every check runs before accelerate starts.
    """
    main = load_script().main
    cases = ["train.epoch=3", "train.lr=-1", "train.epochs=x", "model.name=nosuch",
             "regularizers=[{name: nosuch}]", "regularizers=[{name: singular, params: {nosuch: 1}}]",
             "regularizers=[{name: distill, params: {teacher: no/such/run}}]",
             # non-finite numbers, unsafe run names and unknown trackers: refused before any folder exists
             "train.lr=nan", "train.lr=.inf", "train.momentum=-.inf", "eval.eps=nan",
             "regularizers=[{name: singular, weight: .nan}]", "regularizers=[{name: pgd_at, params: {eps: .inf}}]",
             "run_name=..", "run_name=/tmp", "run_name=a/b", "run_name=-x", "run_name=.hidden",
             "train.log_with=[nosuch]", "out_dir=/dev/null"]
    for case in cases:
        code = main(["--set", f"out_dir={tmp_path}", "--set", "run_name=bad", "--set", case, "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2, (case, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    assert not any(tmp_path.iterdir()), "a rejected config must not create a run folder"


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert load_script().main(["--resume", str(tmp_path / "missing")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(capsys):
    assert load_script().main(["--dry-run", "--set", "train.epochs=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 2 and printed["model"]["num_classes"] == 10


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "error: train.lr: value -1.0 out of range; must be > 0.0"),
    ("train.lr=nan", "error: train.lr: must be a finite number, got 'nan'"),
])
def test_cli_exit_code_for_a_bad_config(tmp_path, override, message):
    out = subprocess.run([sys.executable, str(SCRIPT), "--set", override, "--set", f"out_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip() == message
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 40], ids=["empty", "garbage"])
def test_distillation_teacher_with_corrupt_weights_is_one_line(tmp_path, capsys, content):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.yaml").write_text(dump_config(load_config(None, ["model.width=0.125"])))
    (teacher / "model.safetensors").write_bytes(content)
    out = tmp_path / "runs"
    code = load_script().main(["--set", f"out_dir={out}", "--set",
                               f"regularizers=[{{name: distill, params: {{teacher: {teacher}}}}}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot read weights file" in err[0], err
    assert not out.exists()
