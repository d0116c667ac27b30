"""Acceptance, offline: pretrained and user weights load from local files the tests make, and the audit
of the loaded model equals the audit of the same network built in-process with those weights.

Each network gets a deliberately rank-deficient matrix (repeated rows), so its audit differs from the
seeded random init that `regcollide audit MODEL` uses without weights: a command that ignored the file
would fail the comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from regcollide.audit.spectrum import audit
from regcollide.cli import main
from regcollide.models import create_model


def _rank_deficient(weight: torch.Tensor, copies: int) -> None:
    """Make ``copies`` rows (wide matrix) or columns (tall matrix) equal: the rank drops by ``copies - 1``."""
    with torch.no_grad():
        if weight.shape[0] <= weight.shape[1]:
            weight[:copies] = weight[0]
        else:
            weight[:, :copies] = weight[:, :1]


def _cli_audit(*args: str) -> dict:
    result = CliRunner().invoke(main, ["audit", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _same_audit(got: dict, expected: dict) -> None:
    for key in ("n_weights", "nu", "mu", "total_nullity", "excess_nullity", "first_nullity", "first_layer"):
        assert got[key] == expected[key], key
    for a, b in zip(got["layers"], expected["layers"], strict=True):
        assert (a["name"], a["rank"], a["nullity"]) == (b["name"], b["rank"], b["nullity"])
        assert a["sigma_max"] == pytest.approx(b["sigma_max"], rel=1e-5)


def _layer(result: dict, suffix: str) -> dict:
    return next(layer for layer in result["layers"] if layer["name"].endswith(suffix))


@pytest.mark.slow
def test_tv_resnet18_with_a_plain_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(123)
    net = torchvision.models.resnet18()
    _rank_deficient(net.fc.weight, 40)  # (1000, 512): equal columns -> rank 473, not 512
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)  # the layout torchvision's own checkpoints have: no prefix

    got = _cli_audit("tv:resnet18", "--weights", str(path))
    expected = audit(create_model("tv:resnet18", weights=str(path)).eval(), input_shape=(3, 224, 224),
                     name="tv:resnet18").to_dict()
    _same_audit(got, expected)
    assert _layer(got, "fc")["rank"] == 512 - 39  # a random init (the default without --weights) has rank 512


@pytest.mark.slow
def test_rb_cifar10_standard_with_a_robustbench_checkpoint(tmp_path):
    torch.manual_seed(7)
    net = create_model("rb:cifar10/Linf/Standard")
    _rank_deficient(net.fc.weight, 5)  # (10, 640) -> rank 6
    # RobustBench's own checkpoints wrap the state dict and carry DataParallel's "module." prefix.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 200}
    path = tmp_path / "Standard.pt"
    torch.save(wrapped, path)

    got = _cli_audit("rb:cifar10/Linf/Standard", "--weights", str(path))
    expected = audit(net.eval(), input_shape=(3, 32, 32), name="rb:cifar10/Linf/Standard").to_dict()
    _same_audit(got, expected)
    assert _layer(got, "fc")["rank"] == 6 and got["input_shape"] == [3, 32, 32]


def _fill_hf_cache(home, repo_id: str, state: dict) -> None:
    """The hub cache layout huggingface_hub reads offline: refs/main -> snapshots/<commit>/model.safetensors."""
    commit = "0" * 40
    root = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


@pytest.mark.slow
def test_timm_deit_tiny_pretrained_from_a_filled_local_cache(tmp_path):
    import timm

    name = "deit_tiny_patch16_224"
    torch.manual_seed(11)
    net = create_model(f"timm:{name}")
    _rank_deficient(net.net.head.weight, 100)  # (1000, 192): equal columns -> rank 93
    _fill_hf_cache(tmp_path / "hf", timm.models.get_pretrained_cfg(name).hf_hub_id, net.net.state_dict())
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "regcollide.cli", "audit", f"timm:{name}", "--pretrained",
                             "--format", "json"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    expected = audit(net.eval(), input_shape=(3, 224, 224), name=f"timm:{name}").to_dict()
    _same_audit(got, expected)
    assert _layer(got, "head")["rank"] == 93


@pytest.mark.parametrize("model", ["tv:resnet18", "timm:resnet18", "rb:cifar10/Linf/Standard",
                                   "hf-hub:timm/resnet18.a1_in1k", "mlp"])
def test_pretrained_offline_fails_fast_naming_the_local_file_alternative(model, tmp_path, monkeypatch):
    """No network here, empty caches: one line naming --weights FILE, well within 10 s of the request
    (a registry model has no weights to download, and says the same)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    runner = CliRunner()
    start = time.monotonic()
    result = runner.invoke(main, ["audit", model, "--pretrained"])
    elapsed = time.monotonic() - start
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--weights FILE" in lines[0] and "Traceback" not in result.output
    assert elapsed < 10.0 + 5.0  # the probe gives up after ~3.5 s; the rest is building the model
