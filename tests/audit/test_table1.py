"""Table 1's structural columns with the paper's layer set (random init: shapes decide them), and the script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from regcollide._tracing import first_weight_layer
from regcollide.audit.matrices import iter_weight_layers, layer_shape
from regcollide.audit.spectrum import audit
from regcollide.models import default_geometry

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("table1", ROOT / "eval" / "table1.py")
table1 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table1)

# name -> (n_theta, mu, structural sum nullity, nullity(W1)) with --layers paper. The paper's own values
# are in table1.PAPER and must agree where the paper is self-consistent (checked below).
EXPECTED = {
    "tv:squeezenet1_1": (26, 16, 3392, 0),
    "tv:resnet50": (54, 33, 40683, 83),
    "tv:densenet121": (121, 117, 90155, 83),
    "tv:inception_v3": (98, 95, 80936, 0),
    "timm:deit_tiny_patch16_224": (50, 13, 7488, 576),
    "tv:fcn_resnet50": (57, 36, 67241, 83),
    "tv:lraspp_mobilenet_v3_large": (66, 27, 8641, 11),
    "tv:fasterrcnn_mobilenet_v3_large_fpn": (73, 32, 27249, 11),
    "tv:maskrcnn_resnet50_fpn": (73, 50, 74658, 83),
    "tv:keypointrcnn_resnet50_fpn": (76, 53, 97210, 83),
    "tv:retinanet_resnet50_fpn": (71, 50, 72828, 83),
}
EXPECTED_LARGE = {  # big Linear layers make these slow to build on 2 cores
    "tv:alexnet": (8, 7, 16515, 299),
    "tv:vgg16": (16, 14, 53336, 0),
    "timm:vit_base_patch16_224": (50, 12, 27648, 0),
    "timm:vit_large_patch16_224": (98, 25, 73752, 0),
    "timm:deit_base_patch16_224": (50, 12, 27648, 0),
}


def structure(name: str, layer_set: str = "paper") -> tuple[int, int, int, int]:
    torch.manual_seed(0)
    model = table1.build(name, layer_set, None, False)
    shapes = [layer_shape(layer)[0] for layer in iter_weight_layers(model, layer_set)]
    size = default_geometry(name)["img_size"] or 224
    first, _ = first_weight_layer(model, (3, size, size), layer_set)
    (fo, fi), = layer_shape(first)
    return (len(shapes), sum(o < i for o, i in shapes), sum(max(0, i - o) for o, i in shapes), max(0, fi - fo))


def _check_against_paper(name: str, got: tuple[int, int, int, int]) -> None:
    paper = table1.PAPER.get(name, {})
    for key, index in (("n_weights", 0), ("mu", 1)):
        if key in paper:
            assert got[index] == paper[key], (name, key)
    if "total_nullity" in paper:  # the paper's sum includes trained excess: at least the structural floor
        assert paper["total_nullity"] >= got[2]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_layer_set_structure(name):
    got = structure(name)
    assert got == EXPECTED[name]
    _check_against_paper(name, got)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_LARGE))
def test_paper_layer_set_structure_large_models(name):
    assert structure(name) == EXPECTED_LARGE[name]


def test_the_papers_retinanet_first_nullity_is_below_its_structural_floor():
    # Documented in docs/table1.md: a 64 x 147 stem has nullity >= 83, the paper prints 72.
    assert table1.PAPER["tv:retinanet_resnet50_fpn"]["first_nullity"] < EXPECTED["tv:retinanet_resnet50_fpn"][3]


def test_paper_layer_set_drops_conv_transpose_only():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Flatten(), nn.LazyLinear(5))
    model(torch.rand(1, 3, 10, 10))
    names = {ls: [layer.name for layer in iter_weight_layers(model, ls)] for ls in ("all", "paper")}
    assert names == {"all": ["0", "1", "3"], "paper": ["0", "3"]}
    result = audit(model, input_shape=(3, 10, 10), layer_set="paper")
    assert (result.n_weights, result.layer_set) == (2, "paper")
    with pytest.raises(ValueError, match="layer set"):
        iter_weight_layers(model, "mine")


def test_script_writes_the_table_and_refuses_bad_weights_in_one_line(tmp_path):
    out = tmp_path / "t1.md"
    cmd = [sys.executable, str(ROOT / "eval" / "table1.py"), "--models", "tv:squeezenet1_1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "| SqueezeNet 1.1 | classification | random init | 26 | 16 |" in text
    assert "layer set `paper`" in text and "RetinaNet nullity(W1) = 72" in text
    bad = subprocess.run([*cmd, "--weights", f"tv:squeezenet1_1={tmp_path / 'missing.pt'}"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
