"""The CIFAR-10 configs train and evaluate end to end on a local parquet fixture in the hub's layout.

The fixture mirrors ``uoft-cs/cifar10``: ``plain_text/<split>-00000-of-00001.parquet`` with an ``img`` image
column and a 10-name ``label`` ClassLabel, written by ``datasets`` itself. Only the budget is overridden
(``--set``): the model, the augmentation and the attack settings are the configs' own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _cifar_fixture import write_cifar10_parquet

from regcollide.data import dataset_info, load_tensors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cifar_fixture(tmp_path_factory) -> Path:
    return write_cifar10_parquet(tmp_path_factory.mktemp("cifar10"), 64, seed=0)


def test_fixture_reads_as_cifar10(cifar_fixture):
    info = dataset_info(f"hf:{cifar_fixture}")
    assert (info.num_classes, info.in_chans, info.img_size) == (10, 3, 32)
    images, labels = load_tensors(f"parquet:{cifar_fixture}", "test")
    assert images.shape == (64, 3, 32, 32) and labels.tolist() == [i % 10 for i in range(64)]


def test_configs_use_the_standard_recipe():
    for name in ("cifar10_erm", "cifar10_pgd_at"):
        config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        assert config["model"]["name"] == "resnet18-cifar" and config["data"]["spec"] == "hf:uoft-cs/cifar10"
        assert config["data"]["augment"] == {"crop_padding": 4, "hflip": True}
        assert config["eval"]["eps"] == pytest.approx(8 / 255)
    params = yaml.safe_load((ROOT / "configs" / "cifar10_pgd_at.yaml").read_text())["regularizers"][0]["params"]
    assert params["eps"] == pytest.approx(8 / 255) and params["alpha"] == pytest.approx(2 / 255)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_erm", "cifar10_pgd_at"])
def test_config_trains_and_evaluates_end_to_end(cifar_fixture, tmp_path, name):
    overrides = [f"data.spec=hf:{cifar_fixture}", "model.width=0.125", "train.epochs=1", "train.batch_size=32",
                 "train.num_threads=1", "data.num_workers=0", "eval.n=16", "eval.parts=[clean, pgd]",
                 "eval.pgd_steps=2", f"out_dir={tmp_path / 'runs'}", "run_name=fixture"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "train" / "regularized.py"), str(ROOT / "configs" / f"{name}.yaml"),
               "--cpu", *[arg for o in overrides for arg in ("--set", o)]]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "runs" / "fixture"
    results = json.loads((run / "results.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["augment"] == {"crop_padding": 4, "hflip": True}
    assert config["model"]["name"] == "resnet18-cifar" and config["model"]["num_classes"] == 10
    # results.json holds the evaluator's entry (possibly nested under a key): find clean_acc and pgd in it.
    entry = results if "clean_acc" in results else next(v for v in results.values()
                                                        if isinstance(v, dict) and "clean_acc" in v)
    assert 0.0 <= entry["clean_acc"] <= 1.0
    assert 0.0 <= entry["pgd"]["robust_acc"] <= entry["clean_acc"] + 1e-9
    assert (run / "model.safetensors").stat().st_size > 0
