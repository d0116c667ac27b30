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
    reg = build_regularizer("singular", lazy_every=1, measure=measure, jitter=0.0)
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
    reg = build_regularizer("singular", lazy_every=1, measure=measure)
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
    reg = build_regularizer("singular", lazy_every=1, measure="ratio", jitter=0.0)
    assert penalty(reg, with_weight(nn.Linear(6, 3, bias=False), wide)).item() < 1e-9
    collapsed = wide.clone()
    collapsed[2] = collapsed[1]  # rank 2: one unit of excess nullity
    assert penalty(reg, with_weight(nn.Linear(6, 3, bias=False), collapsed)).item() > 1 - 1e-6


@pytest.mark.parametrize("measure", MEASURES)
def test_gradcheck_linear_and_conv(measure):
    # one regularizer per model: the tracker keeps warm state per layer name
    for shape in [(5, 3), (3, 5)]:
        reg = build_regularizer("singular", lazy_every=1, measure=measure)
        weight = random_matrix(*shape).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda w, s=shape: penalty(reg, with_weight(nn.Linear(s[1], s[0], bias=False), w)), (weight,))
    kernel = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kernel.requires_grad_(True)
    reg = build_regularizer("singular", lazy_every=1, measure=measure)
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
    reg = build_regularizer("singular", lazy_every=1, conv_operator="fft")
    model = reg.setup(model)
    images = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    outputs = model(images)
    assert abs(reg(model, DUMMY_BATCH, outputs).item()) < 1e-9
    # the reshaped-kernel view of the same conv is 3 x 27 with 3 orthonormal rows: also 0
    assert abs(build_regularizer("singular", lazy_every=1)(model, DUMMY_BATCH, outputs).item()) < 1e-9
    noisy = (kernel + 0.3 * torch.randn_like(kernel)).requires_grad_(True)
    assert reg(nn.Sequential(with_weight(conv, noisy)), DUMMY_BATCH, outputs).item() > 1e-3
    assert torch.autograd.gradcheck(lambda k: reg(nn.Sequential(with_weight(conv, k)), DUMMY_BATCH, outputs),
                                    (noisy,))


def test_fft_needs_setup_and_forward():
    reg = build_regularizer("singular", lazy_every=1, conv_operator="fft")
    with pytest.raises(ValueError, match="setup"):
        reg(nn.Sequential(nn.Conv2d(1, 2, 3)), DUMMY_BATCH, DUMMY_OUT)


def spectrum_matrix(rows: int, cols: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """float32 ``(rows, cols)`` matrix with singular values logspace(0, -2) and the smallest set to ``ratio``."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    left, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    sigma = torch.logspace(0, -2, k, dtype=torch.float64)
    sigma[-1] = ratio
    return ((left * sigma) @ right.T).float()


def smallest_direction(weight: torch.Tensor) -> torch.Tensor:
    """u_min v_minᵀ of the float64 SVD (the true gradient direction of σ_min)."""
    u, _, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return torch.outer(u[:, -1], vh[-1])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(float((a.double() * b.double()).sum() / (a.double().norm() * b.double().norm())))


@pytest.mark.parametrize("ratio", [1e-3, 1e-4, 1e-5, 1e-6])
@pytest.mark.parametrize("shape", [(48, 150), (150, 48)])
def test_value_and_gradient_accurate_at_small_ratios(ratio, shape):
    # A float32 Gram matrix reads σ_min/σ_max ≈ 1e-4..7e-4 here whatever the truth; the tracker works on W.
    weight = spectrum_matrix(*shape, ratio).requires_grad_(True)
    reg = build_regularizer("singular", lazy_every=1, measure="ratio", jitter=0.0)
    value = penalty(reg, with_weight(nn.Linear(shape[1], shape[0], bias=False), weight))
    sigma = torch.linalg.svdvals(weight.detach().double())  # the float32 weights' exact spectrum
    low, high = reg.extremes[("0", 0)]
    assert low.item() == pytest.approx(sigma[-1].item(), rel=1e-5)
    assert high.item() == pytest.approx(sigma[0].item(), rel=1e-6)
    assert 1 - value.item() == pytest.approx((sigma[-1] / sigma[0]).item(), rel=1e-5, abs=2e-7)  # float32
    (grad,) = torch.autograd.grad(value, weight)
    assert cosine(grad, smallest_direction(weight.detach())) >= 0.9999


@pytest.mark.parametrize("ratio", [1e-3, 1e-6])
@pytest.mark.parametrize("shape", [(10, 300), (300, 10), (4, 50)])
def test_few_columns_are_exact_at_small_ratios(ratio, shape):
    # k <= 10 is not tracked: eigenvectors of the k x k float64 Gram, sigma read afresh as ||A v||.
    # sigma_2 is only twice sigma_min here, the case where the Gram's rounding tilts v_min the most.
    weight = spectrum_matrix(*shape, ratio, seed=4)
    u, sigma, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    sigma[-2] = 2 * ratio
    weight = ((u * sigma) @ vh).float().requires_grad_(True)
    reg = build_regularizer("singular", lazy_every=1, measure="ratio", jitter=0.0)
    value = penalty(reg, with_weight(nn.Linear(shape[1], shape[0], bias=False), weight))
    exact = torch.linalg.svdvals(weight.detach().double())
    low, high = reg.extremes[("0", 0)]
    assert low.item() == pytest.approx(exact[-1].item(), rel=1e-6)
    assert high.item() == pytest.approx(exact[0].item(), rel=1e-12)
    (grad,) = torch.autograd.grad(value, weight)
    assert cosine(grad, smallest_direction(weight.detach())) >= 0.9999


@pytest.mark.parametrize("ratio", [1e-3, 1e-6])
def test_tracking_stays_accurate_while_the_weights_move(ratio):
    # Training-like drift: 30 small steps. Tracked steps agree with the SVD; the cheap steps in between
    # use the cached vectors' Rayleigh quotients, an upper bound of σ_min and a lower bound of σ_max.
    weight = spectrum_matrix(40, 90, ratio, seed=2)
    layer = with_weight(nn.Linear(90, 40, bias=False), weight)
    reg = build_regularizer("singular", lazy_every=1, measure="ratio", jitter=0.0, track_every=3)
    gen, tracked = torch.Generator().manual_seed(5), 0
    for _ in range(30):
        layer.weight.data += (ratio * 0.02) * torch.randn(weight.shape, generator=gen)
        penalty(reg, layer)
        sigma = torch.linalg.svdvals(layer.weight.detach().double())
        low, high = (x.item() for x in reg.extremes[("0", 0)])
        if reg._trackers[("0", 0)].tracked:
            tracked += 1
            assert low == pytest.approx(sigma[-1].item(), rel=1e-3)
            assert high == pytest.approx(sigma[0].item(), rel=1e-6)
        assert low >= sigma[-1].item() * (1 - 1e-6) and high <= sigma[0].item() * (1 + 1e-6)
        assert low <= 1.05 * sigma[-1].item()
    assert 10 <= tracked < 30  # every third step, plus settling steps
    assert reg._trackers[("0", 0)].refreshes == 1  # small moves never needed a new decomposition


def test_tracker_refreshes_when_the_smallest_direction_jumps():
    # A jump far larger than σ_min rotates its singular vector: the residual test must catch it.
    weight = spectrum_matrix(30, 60, 1e-5, seed=3)
    layer = with_weight(nn.Linear(60, 30, bias=False), weight)
    reg = build_regularizer("singular", lazy_every=1, measure="ratio", jitter=0.0)
    penalty(reg, layer)
    layer.weight.data += 1e-3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    value = penalty(reg, layer)
    sigma = torch.linalg.svdvals(layer.weight.detach().double())
    assert reg.extremes[("0", 0)][0].item() == pytest.approx(sigma[-1].item(), rel=1e-4)
    assert 1 - value.item() == pytest.approx((sigma[-1] / sigma[0]).item(), rel=1e-4, abs=2e-7)


def test_grouped_convention_uses_blocks():
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False).double()
    kernel = torch.zeros(4, 2, 1, 1, dtype=torch.float64)
    kernel[:2, :, 0, 0] = orthonormal(2, 2)
    kernel[2:, :, 0, 0] = 5 * orthonormal(2, 2, seed=1)  # each block orthogonal, different scales
    layer = with_weight(conv, kernel)
    paper = penalty(build_regularizer("singular", lazy_every=1, convention="paper", jitter=0.0), layer).item()
    sigma = torch.linalg.svdvals(kernel.reshape(4, -1))  # (4 x 2): its column Gram is 26 I
    assert paper == pytest.approx((1 - sigma.min() / sigma.max()).item(), abs=1e-10)
    # block diagonal operator: the union of block singular values {1, 1, 5, 5} -> ratio 1/5
    grouped = penalty(build_regularizer("singular", lazy_every=1, convention="grouped", jitter=0.0), layer).item()
    assert grouped == pytest.approx(1 - 1 / 5, abs=1e-10)
