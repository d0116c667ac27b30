"""Numerics of hyperplane decorrelation and soft orthogonality: references, gradients, invariances."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _train_utils import DUMMY_BATCH, DUMMY_OUT, orthonormal, penalty, random_matrix, with_weight
from torch import nn

from regcollide.regularizers import build_regularizer
from regcollide.regularizers.decorrelation import max_positive_cosine, mean_pair_charge


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    module = with_weight(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None), weight)
    if bias is not None:
        del module.bias
        module.bias = bias
    return module


def brute_force_charge(rows: torch.Tensor, kappa: float, tau: float) -> float:
    """Mean over unordered pairs of (softplus(κ(max(c,0) − τ)) − softplus(−κτ)) / κ, one pair at a time."""
    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    charges = []
    for i, j in itertools.combinations(range(rows.shape[0]), 2):
        cos = float(rows[i] @ rows[j] / (rows[i].norm() * rows[j].norm()))
        charges.append((softplus(kappa * (max(cos, 0.0) - tau)) - softplus(-kappa * tau)) / kappa)
    return sum(charges) / len(charges)


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_matches_pairwise_reference_with_and_without_bias(tau):
    weight, bias = random_matrix(6, 4), random_matrix(6, 1, seed=1).squeeze(1)
    reg = build_regularizer("decorrelation", lazy_every=1, kappa=7.0, tau=tau)
    assert penalty(reg, linear(weight)).item() == pytest.approx(brute_force_charge(weight, 7.0, tau), rel=1e-10)
    with_bias = build_regularizer("decorrelation", lazy_every=1, kappa=7.0, tau=tau, use_bias=True)
    expected = brute_force_charge(torch.cat([weight, bias[:, None]], dim=1), 7.0, tau)
    assert penalty(with_bias, linear(weight, bias)).item() == pytest.approx(expected, rel=1e-10)


def test_zero_for_orthogonal_and_opposite_pairs_scale_invariant():
    reg = build_regularizer("decorrelation", lazy_every=1)
    basis = orthonormal(4, 4)
    assert penalty(reg, linear(basis)).item() == pytest.approx(0.0, abs=1e-12)
    # W = [B; -B] (Puthawala et al. 2022): opposite pairs are free, so still exactly 0.
    assert penalty(reg, linear(torch.cat([basis, -basis]))).item() == pytest.approx(0.0, abs=1e-12)
    collinear = basis.clone()
    collinear[1] = basis[0] + 0.1 * basis[1]
    base = penalty(reg, linear(collinear)).item()
    assert base > 0.01
    assert penalty(reg, linear(1e-3 * collinear)).item() == pytest.approx(base, rel=1e-10)


def test_gradcheck():
    reg = build_regularizer("decorrelation", lazy_every=1, kappa=5.0, tau=0.1, use_bias=True)
    weight = random_matrix(5, 3).requires_grad_(True)
    bias = random_matrix(5, 1, seed=2).squeeze(1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, b: penalty(reg, linear(w, b)), (weight, bias))


def test_sampled_pairs_are_unbiased():
    weight = random_matrix(40, 6, seed=4) + 0.5  # many positive cosines
    exact = penalty(build_regularizer("decorrelation", lazy_every=1), linear(weight)).item()
    sampler = build_regularizer("decorrelation", lazy_every=1, max_rows=10, seed=1)  # 40 rows > 10: row subsets
    draws = torch.tensor([penalty(sampler, linear(weight)).item() for _ in range(400)])
    assert draws.std() > 0  # it really samples
    standard_error = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * standard_error


def test_max_positive_cosine_reference():
    rows = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
    # nearest positive neighbour cosines: row0 -> 0.6, row1 -> 0.6, row2 -> max(-0.6, -1) clamps to 0
    assert max_positive_cosine(rows).item() == pytest.approx(1.2 / 3, abs=1e-12)


def test_conv_rows_are_output_channels():
    conv = nn.Conv2d(2, 3, 2, bias=False).double()
    kernel = random_matrix(3, 8).reshape(3, 2, 2, 2)
    reg = build_regularizer("decorrelation", lazy_every=1, kappa=3.0)
    value = penalty(reg, with_weight(conv, kernel)).item()
    assert value == pytest.approx(brute_force_charge(kernel.reshape(3, -1), 3.0, 0.0), rel=1e-10)


def test_soft_orthogonality_reference_zero_and_gradcheck():
    reg = build_regularizer("orthogonality")
    for shape in [(3, 5), (5, 3)]:
        assert penalty(reg, linear(orthonormal(*shape))).item() == pytest.approx(0.0, abs=1e-12)
        weight = random_matrix(*shape)
        gram = weight @ weight.T if shape[0] <= shape[1] else weight.T @ weight
        expected = (gram - torch.eye(gram.shape[0], dtype=gram.dtype)).square().sum().item()
        assert penalty(reg, linear(weight)).item() == pytest.approx(expected, rel=1e-10)
        assert torch.autograd.gradcheck(lambda w: penalty(reg, linear(w)), (weight.requires_grad_(True),))
    # plain SO pins the scale (not scale-invariant); the normalized variant is.
    weight = random_matrix(4, 6)
    assert penalty(reg, linear(2 * weight)).item() > 2 * penalty(reg, linear(weight)).item()
    normalized = build_regularizer("orthogonality", normalize=True)
    assert penalty(normalized, linear(2 * weight)).item() == pytest.approx(
        penalty(normalized, linear(weight)).item(), rel=1e-10)
    assert penalty(normalized, linear(3 * orthonormal(4, 6))).item() == pytest.approx(0.0, abs=1e-12)


def test_no_matching_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="no weight layer matches"):
        build_regularizer("decorrelation", lazy_every=1, layers="^head$")(nn.Sequential(nn.Linear(3, 2)), DUMMY_BATCH,
                                                             DUMMY_OUT)


@pytest.mark.parametrize("chosen", [None, [0, 3, 5, 7, 9, 11]])
def test_hand_written_backward_matches_finite_differences(chosen):
    # mean_pair_charge has its own backward (autograd's graph was slower than a small MLP's step)
    weight = (random_matrix(12, 5, seed=6) + 0.3).requires_grad_(True)
    rows = None if chosen is None else torch.tensor(chosen)
    assert torch.autograd.gradcheck(lambda w: mean_pair_charge(w, 10.0, 0.2, rows), (weight,))
    value = mean_pair_charge(weight, 3.0, 0.0, rows)  # agrees with the all-pairs formula on the subset
    subset = weight if rows is None else weight[rows]
    unit = subset / subset.norm(dim=1, keepdim=True)
    cosines = (unit @ unit.T)[torch.triu_indices(len(subset), len(subset), 1).unbind()]
    expected = (torch.nn.functional.softplus(3.0 * cosines.clamp_min(0)) - math.log(2)) / 3.0
    assert value.item() == pytest.approx(expected.mean().item(), rel=1e-12)
