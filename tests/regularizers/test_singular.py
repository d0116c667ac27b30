"""Numerics of the minimum-singular-value penalty: reference values, gradients, invariances, FFT operator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _train_utils import DUMMY_BATCH, DUMMY_OUT, orthonormal, penalty, random_matrix, with_weight
from torch import nn

from regcollide.regularizers import build_regularizer
from regcollide.regularizers.singular import conv_operator_stack

MEASURES = ["ratio", "rms", "logdet"]
@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)])
def test_reference_values_from_svd(measure, shape):
    weight = random_matrix(*shape)
    reg = build_regularizer("singular", measure=measure, jitter=0.0)
    value = penalty(reg, with_weight(nn.Linear(shape[1], shape[0], bias=False), weight))
    sigma = torch.linalg.svdvals(weight)  # k = min(out, in) values: the row space of a wide matrix
    expected = {
        "ratio": 1 - sigma.min() / sigma.max(),
        "rms": 1 - sigma.min() / sigma.square().mean().sqrt(),
        "logdet": sigma.square().mean().log() - sigma.square().log().mean(),
    }[measure]
    assert value.item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (4, 4)])
def test_zero_for_orthonormal_and_scale_invariant(measure, shape):
    reg = build_regularizer("singular", measure=measure)
    ortho = penalty(reg, with_weight(nn.Linear(shape[1], shape[0], bias=False), orthonormal(*shape)))
    assert abs(ortho.item()) < 1e-9
    weight = random_matrix(*shape, seed=3)
    base = penalty(reg, with_weight(nn.Linear(shape[1], shape[0], bias=False), weight))
    assert base.item() > 1e-3
    for scale in (1e-3, 7.0):
        scaled = penalty(reg, with_weight(nn.Linear(shape[1], shape[0], bias=False), scale * weight))
        assert scaled.item() == pytest.approx(base.item(), rel=1e-9)


def test_wide_layer_acts_on_row_space():
    # Orthonormal rows: structural nullity 3, but nothing left to improve -> 0; a repeated row -> ~1.
    wide = orthonormal(3, 6)
    reg = build_regularizer("singular", measure="ratio", jitter=0.0)
    assert penalty(reg, with_weight(nn.Linear(6, 3, bias=False), wide)).item() < 1e-9
    collapsed = wide.clone()
    collapsed[2] = collapsed[1]  # rank 2: one unit of excess nullity
    assert penalty(reg, with_weight(nn.Linear(6, 3, bias=False), collapsed)).item() > 1 - 1e-6


@pytest.mark.parametrize("measure", MEASURES)
def test_gradcheck_linear_and_conv(measure):
    reg = build_regularizer("singular", measure=measure)
    for shape in [(5, 3), (3, 5)]:
        weight = random_matrix(*shape).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda w, s=shape: penalty(reg, with_weight(nn.Linear(s[1], s[0], bias=False), w)), (weight,))
    kernel = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kernel.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda k: penalty(reg, with_weight(nn.Conv2d(2, 3, 2, bias=False), k)), (kernel,))


def circular_conv_matrix(conv: nn.Conv2d, size: int) -> torch.Tensor:
    """Dense matrix of the conv applied with circular padding to a (in, size, size) input."""
    pad = conv.kernel_size[0] // 2
    inputs = conv.in_channels * size * size
    basis = torch.eye(inputs, dtype=torch.float64).reshape(inputs, conv.in_channels, size, size)
    padded = F.pad(basis, (pad, pad, pad, pad), mode="circular")
    with torch.no_grad():
        columns = F.conv2d(padded, conv.weight, groups=conv.groups).flatten(1)  # (inputs, outputs)
    return columns.T  # (out * size², in * size²): column j is the image of basis vector j


@pytest.mark.parametrize("groups", [1, 2])
def test_fft_operator_matches_dense_circular_convolution(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=groups, bias=False).double()
    size = 5
    dense = torch.linalg.svdvals(circular_conv_matrix(conv, size))  # (min(6, 4) * 25,)
    stack = conv_operator_stack(conv, (size, size))  # (G*25, 6/G, 4/G) complex
    union = torch.linalg.svdvals(stack).flatten()
    assert torch.allclose(union.sort().values, dense.sort().values, atol=1e-10)


def test_fft_operator_penalty_zero_for_orthogonal_operator_and_gradcheck():
    # A centred delta kernel times an orthogonal channel mix is an orthogonal operator; a wider kernel is not.
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False).double()
    kernel = torch.zeros(3, 3, 3, 3, dtype=torch.float64)
    kernel[:, :, 1, 1] = orthonormal(3, 3)
    model = nn.Sequential(with_weight(conv, kernel))
    reg = build_regularizer("singular", conv_operator="fft")
    model = reg.setup(model)
    images = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    outputs = model(images)
    assert abs(reg(model, DUMMY_BATCH, outputs).item()) < 1e-9
    # the reshaped-kernel view of the same conv is 3 x 27 with 3 orthonormal rows: also 0
    assert abs(build_regularizer("singular")(model, DUMMY_BATCH, outputs).item()) < 1e-9
    noisy = (kernel + 0.3 * torch.randn_like(kernel)).requires_grad_(True)
    assert reg(nn.Sequential(with_weight(conv, noisy)), DUMMY_BATCH, outputs).item() > 1e-3
    assert torch.autograd.gradcheck(lambda k: reg(nn.Sequential(with_weight(conv, k)), DUMMY_BATCH, outputs),
                                    (noisy,))


def test_fft_needs_setup_and_forward():
    reg = build_regularizer("singular", conv_operator="fft")
    with pytest.raises(ValueError, match="setup"):
        reg(nn.Sequential(nn.Conv2d(1, 2, 3)), DUMMY_BATCH, DUMMY_OUT)


def test_refresh_uses_rayleigh_quotients_between_decompositions():
    weight = random_matrix(8, 12).requires_grad_(True)
    exact = build_regularizer("singular", measure="ratio", jitter=0.0)
    lazy = build_regularizer("singular", measure="ratio", jitter=0.0, refresh_every=3, refresh_min_dim=1)
    layer = with_weight(nn.Linear(12, 8, bias=False), weight)
    value = penalty(lazy, layer)  # step 0: refresh -> exact value and gradient
    assert value.item() == pytest.approx(penalty(exact, layer).item(), abs=1e-10)
    (lazy_grad,) = torch.autograd.grad(value, weight)
    (exact_grad,) = torch.autograd.grad(penalty(exact, layer), weight)
    assert torch.allclose(lazy_grad, exact_grad, atol=1e-8)
    moved = (weight.detach() + 0.05 * random_matrix(8, 12, seed=9)).requires_grad_(True)
    layer = with_weight(nn.Linear(12, 8, bias=False), moved)
    stale = penalty(lazy, layer).item()  # step 1: cached vectors -> σ_min over-, σ_max under-estimated
    true = penalty(exact, layer).item()
    assert stale <= true + 1e-12 and stale != pytest.approx(true, abs=1e-12)
    penalty(lazy, layer)  # step 2
    assert penalty(lazy, layer).item() == pytest.approx(true, abs=1e-10)  # step 3 refreshes


def test_grouped_convention_uses_blocks():
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False).double()
    kernel = torch.zeros(4, 2, 1, 1, dtype=torch.float64)
    kernel[:2, :, 0, 0] = orthonormal(2, 2)
    kernel[2:, :, 0, 0] = 5 * orthonormal(2, 2, seed=1)  # each block orthogonal, different scales
    layer = with_weight(conv, kernel)
    paper = penalty(build_regularizer("singular", convention="paper", jitter=0.0), layer).item()
    sigma = torch.linalg.svdvals(kernel.reshape(4, -1))  # (4 x 2): its column Gram is 26 I
    assert paper == pytest.approx((1 - sigma.min() / sigma.max()).item(), abs=1e-10)
    # block diagonal operator: the union of block singular values {1, 1, 5, 5} -> ratio 1/5
    grouped = penalty(build_regularizer("singular", convention="grouped", jitter=0.0), layer).item()
    assert grouped == pytest.approx(1 - 1 / 5, abs=1e-10)
