"""Layer matrices (paper/grouped conventions) and forward-order discovery of W1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcollide._tracing import first_weight_layer, forward_order
from regcollide.audit.matrices import iter_weight_layers, layer_matrix, layer_shape


def test_linear_matrix_is_the_live_weight_and_differentiable():
    layer = nn.Linear(8, 4)
    matrix = layer_matrix(layer)
    assert matrix.shape == (4, 8)
    matrix.sum().backward()
    assert layer.weight.grad is not None and torch.equal(layer.weight.grad, torch.ones(4, 8))


def test_conv_paper_matrix_maps_each_patch_to_the_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel_size=2, stride=2, bias=False)
    x = torch.rand(1, 3, 4, 4)  # (B, C, H, W)
    patches = F.unfold(x, kernel_size=2, stride=2)  # (1, C*k*k, L), channel-major like weight.reshape
    expected = conv(x).flatten(2)  # (1, out, L)
    torch.testing.assert_close(layer_matrix(conv) @ patches[0], expected[0])


def test_conv_transpose_matrix_maps_one_input_position_to_its_window():
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(3, 4, kernel_size=2, stride=2, bias=False)
    x = torch.rand(1, 3, 1, 1)  # one input position
    window = deconv(x)  # (1, 4, 2, 2)
    matrix = layer_matrix(deconv)
    assert matrix.shape == (4 * 2 * 2, 3)
    torch.testing.assert_close(matrix @ x.reshape(3), window.reshape(-1))


def test_grouped_convention_gives_one_block_per_group():
    conv = nn.Conv2d(4, 6, kernel_size=3, groups=2)
    assert layer_shape(conv) == [(6, 2 * 9)]
    assert layer_shape(conv, "grouped") == [(3, 18), (3, 18)]
    depthwise = nn.Conv1d(5, 5, kernel_size=3, groups=5)
    assert layer_shape(depthwise, "grouped") == [(1, 3)] * 5
    deconv = nn.ConvTranspose2d(4, 6, kernel_size=2, groups=2)  # weight (4, 3, 2, 2)
    assert layer_shape(deconv) == [(12, 4)]
    assert layer_shape(deconv, "grouped") == [(12, 2), (12, 2)]
    blocks = layer_matrix(conv, "grouped")
    torch.testing.assert_close(torch.cat(blocks), layer_matrix(conv))


def test_unknown_convention_is_a_clear_error():
    with pytest.raises(ValueError, match="paper, grouped"):
        layer_matrix(nn.Linear(2, 2), "rows")


def test_multihead_attention_gives_in_and_out_projections():
    layers = iter_weight_layers(nn.Sequential(nn.MultiheadAttention(16, 2)))
    assert [(w.name, w.kind) for w in layers] == [("0.in_proj", "mha_in_proj"), ("0.out_proj", "mha_out_proj")]
    assert [layer_shape(w) for w in layers] == [[(48, 16)], [(16, 16)]]
    separate = iter_weight_layers(nn.MultiheadAttention(16, 2, kdim=8, vdim=4))
    assert [w.kind for w in separate] == ["mha_q_proj", "mha_k_proj", "mha_v_proj", "mha_out_proj"]
    assert [layer_shape(w)[0] for w in separate] == [(16, 16), (16, 8), (16, 4), (16, 16)]


class HeadFirst(nn.Module):
    """Registers the head before the stem, so registration order and forward order disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.stem = nn.Conv2d(1, 16, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm2d(16)

    def forward(self, x):  # x: (B, 1, H, W)
        tokens = self.norm(self.stem(x)).flatten(2).transpose(1, 2)  # (B, L, 16)
        mixed, _ = self.attn(tokens, tokens, tokens)
        return self.head(mixed.mean(1))


def test_forward_order_differs_from_registration_order():
    model = HeadFirst().train()
    names = [w.name for w in iter_weight_layers(model)]
    assert names == ["head", "attn.in_proj", "attn.out_proj", "stem"]
    assert forward_order(model, torch.rand(1, 1, 8, 8)) == ["stem", "attn.in_proj", "attn.out_proj", "head"]
    assert model.training, "forward_order must restore the train/eval mode"
    layer, source = first_weight_layer(model, (1, 8, 8))
    assert (layer.name, source) == ("stem", "forward")
    layer, source = first_weight_layer(model)
    assert (layer.name, source) == ("head", "registration")


def test_tracing_restores_each_modules_own_mode_and_runs_in_eval_mode():
    model = HeadFirst().train()
    model.stem.eval()  # a part kept frozen while the rest trains: it must stay frozen afterwards
    seen = []
    model.stem.register_forward_pre_hook(lambda m, a: seen.append(model.training or m.training))
    layer, _ = first_weight_layer(model, (1, 8, 8))
    assert layer.name == "stem" and seen == [False]
    assert model.training and model.head.training and model.attn.training and not model.stem.training
    model.eval()
    forward_order(model, torch.rand(1, 1, 8, 8))
    assert not any(module.training for module in model.modules())


def test_forward_order_on_torchvision_detection_and_segmentation():
    from torchvision.models import detection, segmentation

    from regcollide._tracing import example_inputs

    det = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    assert first_weight_layer(det, (3, 64, 64)) == (iter_weight_layers(det)[0], "forward")
    order = forward_order(det, example_inputs(det, (3, 64, 64)))
    assert order[0] == "backbone.body.0.0" and len(order) == len(iter_weight_layers(det))
    seg = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    order = forward_order(seg, example_inputs(seg, (3, 64, 64)))  # returns a dict {"out": ...}
    assert order[0] == "backbone.0.0" and set(order) == {w.name for w in iter_weight_layers(seg)}


def test_first_weight_layer_rejects_a_shape_that_runs_no_weight():
    model = nn.Sequential(nn.Unflatten(1, (2, 2)), nn.Flatten(), nn.Linear(4, 2))
    assert first_weight_layer(model, (4,))[0].name == "2"
    with pytest.raises(ValueError, match="check the input shape"):
        first_weight_layer(model, (3,))
