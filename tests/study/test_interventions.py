"""Intervention architectures move exactly their target quantity, as the audit measures it."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from regcollide.audit.spectrum import audit
from regcollide.models import create_model
from regcollide.models.interventions import PlusMinusLinear, orthogonal_matrix, projector_parametrization


def _first_nullity(model) -> int:
    return audit(model, (1, 28, 28)).to_dict()["first_nullity"]


@pytest.mark.parametrize("k", [196, 588])
def test_frozen_projection_sets_nullity_and_survives_training(k):
    torch.manual_seed(0)
    model = create_model(f"mlp-proj-k{k}")
    assert _first_nullity(model) == k
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # training moves W1 but never into span(P_k)
        x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _first_nullity(model) == k
    q = orthogonal_matrix(784).float()[:, :k]  # the projector's range is in the kernel of the trained W1
    assert (model[1].weight @ q).abs().max() < 1e-4


def test_projector_complement_form_is_the_same_map():
    w = torch.randn(5, 784)
    low, high = projector_parametrization(784, 300), projector_parametrization(784, 500)
    q = orthogonal_matrix(784).float()
    assert not low.complement and high.complement
    for k, param in ((300, low), (500, high)):
        reference = w @ (torch.eye(784) - q[:, :k] @ q[:, :k].T)
        assert torch.allclose(param(w), reference, atol=1e-4)


def test_projected_model_reloads_from_its_state_dict():
    a, b = create_model("mlp-proj-k392"), create_model("mlp-proj-k392")
    b.load_state_dict(a.state_dict())
    with parametrize.cached():
        assert torch.equal(a[1].weight, b[1].weight)


@pytest.mark.parametrize("h", [64, 1024])
def test_first_width_sets_nullity(h):
    assert _first_nullity(create_model(f"mlp-h{h}")) == max(0, 784 - h)


@pytest.mark.parametrize("r", [2, 16])
def test_bottleneck_rank(r):
    layers = audit(create_model(f"mlp-rank-r{r}"), (1, 28, 28)).to_dict()["layers"]
    assert layers[1]["out_dim"] == r and layers[1]["rank"] == r and layers[1]["nullity"] == 256 - r


def test_plus_minus_relu_is_injective_on_the_first_layer_output():
    layer = PlusMinusLinear(784, 128)
    x = torch.rand(4, 784)
    a = torch.relu(layer(x))  # (4, 256)
    assert torch.allclose(a[:, :128] - a[:, 128:], torch.nn.functional.linear(x, layer.weight, layer.bias))
    model = create_model("mlp-pm-h128")
    assert _first_nullity(model) == 784 - 128 and model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
