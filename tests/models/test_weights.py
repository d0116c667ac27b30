"""--weights FILE: every plain layout loads, nothing is unpickled, broken files give one line."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from regcollide.cli import main
from regcollide.io import CheckpointError
from regcollide.models import create_model, load_weights_file
from regcollide.models.weights import read_weights


def _reference() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(5)
    model = create_model("timm:resnet10t", num_classes=4)
    return model, {k: v.clone() for k, v in model.net.state_dict().items()}


LAYOUTS = {
    "bare": lambda s: s,
    "net_prefix": lambda s: {f"net.{k}": v for k, v in s.items()},
    "dataparallel": lambda s: {f"module.{k}": v for k, v in s.items()},
    "wrapped": lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 3, "arch": "x"},
    "compiled": lambda s: {"model": {f"_orig_mod.{k}": v for k, v in s.items()}},
}


# safetensors holds flat tensor dicts only, so the wrapped layouts exist as torch.save files alone.
CASES = [(layout, "pt") for layout in sorted(LAYOUTS)] + [(layout, "safetensors") for layout in
                                                           ("bare", "dataparallel", "net_prefix")]


@pytest.mark.parametrize(("layout", "fmt"), CASES)
def test_every_layout_loads_the_same_tensors(tmp_path, layout, fmt):
    _, state = _reference()
    obj = LAYOUTS[layout](state)
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    torch.manual_seed(99)
    fresh = create_model("timm:resnet10t", num_classes=4)
    load_weights_file(fresh, path)
    loaded = fresh.net.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/regcollide-should-never-exist",))


def _bad_files(tmp_path) -> dict:
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(good))
    data = good.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(4096),
             "pickle-with-code": pickle.dumps({"w": _Payload()}), "no-tensors": None}
    out = {}
    for name, payload in files.items():
        path = tmp_path / f"{name}.{'pt' if name in ('pickle-with-code', 'no-tensors') else 'safetensors'}"
        if payload is None:
            torch.save({"epoch": 3, "note": "no weights"}, path)
        else:
            path.write_bytes(payload)
        out[name] = path
    return out


def test_broken_weights_files_are_one_line_and_never_run_code(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError, match="weights file"):
            read_weights(path)
        result = CliRunner().invoke(main, ["audit", "mlp", "--weights", str(path)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, (name, lines)
    assert not os.path.exists("/tmp/regcollide-should-never-exist")


def test_nan_weights_and_wrong_architecture_are_refused(tmp_path):
    model = create_model("mlp")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["1.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match="NaN or inf values in '1.weight'"):
        load_weights_file(model, tmp_path / "nan.safetensors")
    save_file({k: v for k, v in create_model("lenet5").state_dict().items()}, str(tmp_path / "lenet.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        load_weights_file(model, tmp_path / "lenet.safetensors")


def test_checkpoint_and_weights_together_are_refused(tmp_path):
    save_file(create_model("mlp").state_dict(), str(tmp_path / "w.safetensors"))
    result = CliRunner().invoke(main, ["audit", "mlp", "--checkpoint", str(tmp_path),
                                       "--weights", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 1 and "either --checkpoint RUN or --weights" in result.output
