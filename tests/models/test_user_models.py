"""`module:callable` models and --device."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from regcollide.cli import main
from regcollide.models import create_model, default_geometry
from regcollide.models.device import resolve_device
from regcollide.models.user import is_user_factory

FACTORY = '''
import torch
from torch import nn


def make_net(num_classes, in_chans, img_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def not_a_model(num_classes=10):
    return "hello"
'''


@pytest.fixture
def factory_file(tmp_path, monkeypatch):
    path = tmp_path / "my_nets.py"
    path.write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    return path


def test_name_forms_are_recognised():
    assert is_user_factory("my_nets:make_net") and is_user_factory("pkg.sub:build")
    assert is_user_factory("./nets/my_nets.py:make_net")
    for name in ("timm:resnet18", "tv:resnet18", "rb:cifar10/Linf/Standard", "hf-hub:org/repo", "mlp"):
        assert not is_user_factory(name)


def test_module_and_file_forms_build_with_the_data_geometry(factory_file):
    for name in ("my_nets:make_net", f"{factory_file}:make_net"):
        model = create_model(name, num_classes=3, in_chans=1, img_size=28)
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    assert default_geometry("my_nets:make_net") == {"num_classes": 10, "in_chans": 1, "img_size": 28}


def test_user_model_audits_from_the_cli_and_bad_factories_say_so(factory_file):
    result = CliRunner().invoke(main, ["audit", "my_nets:make_net", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(layer["out_dim"], layer["in_dim"]) for layer in report["layers"]] == [(32, 784), (10, 32)]
    for name, message in (("my_nets:not_a_model", "not a torch.nn.Module"),
                          ("no_such_module:make", "cannot import module"),
                          ("my_nets:missing", "not a callable model factory")):
        result = CliRunner().invoke(main, ["audit", name])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        result = CliRunner().invoke(main, ["audit", "mlp", "--device", "cuda"])
        assert result.exit_code == 1 and "--device cpu" in result.output


def test_device_option_moves_model_and_data():
    from regcollide.commands.options import load_model_and_data

    net, images, labels, info = load_model_and_data("mlp", None, "mnist5k", n=4)
    assert info["device"] == str(next(net.parameters()).device) == str(images.device) == str(labels.device)
