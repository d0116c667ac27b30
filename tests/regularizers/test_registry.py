"""The regularizer registry: every entry builds and returns a scalar; bad names and parameters are explained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regcollide.regularizers import REGISTRY, Regularizer, build_regularizer, list_regularizers

EXPECTED = {"erm", "singular", "decorrelation", "distill", "pgd_at", "trades", "orthogonality", "spectral"}


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, 3))


def tiny_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.rand(6, 1, 8, 8, generator=generator), "label": torch.tensor([0, 1, 2, 0, 1, 2]),
            "index": torch.arange(6)}


def params_for(name: str) -> dict:
    if name == "distill":
        return {"teacher": tiny_cnn(), "feature_weight": 0.5}
    if name in ("pgd_at", "trades"):
        return {"eps": 0.1, "steps": 2}
    return {}


def test_registry_lists_every_family():
    assert set(list_regularizers()) == EXPECTED == set(REGISTRY)
    assert list_regularizers() == sorted(list_regularizers())
    assert all(REGISTRY[name].name == name for name in REGISTRY)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_entry_gives_a_differentiable_scalar(name):
    if name == "pgd_at":
        pytest.importorskip("regcollide.attacks.pgd.attack", reason="the PGD attack module is another engineer's")
    reg = build_regularizer(name, **params_for(name))
    assert isinstance(reg, Regularizer)
    model = reg.setup(tiny_cnn())
    batch = tiny_batch()
    outputs = model(batch["image"])  # (6, 3)
    term = reg(model, batch, outputs)
    assert term.shape == () and torch.isfinite(term)
    if name in ("erm", "spectral"):
        assert term.item() == 0.0
    else:
        assert term.item() > 0
        term.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert reg.replaces_task_loss == (name in ("pgd_at", "trades", "distill"))
    assert type(reg).__name__ in repr(reg)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown regularizer 'orthoreg'") as info:
        build_regularizer("orthoreg")
    for name in EXPECTED:
        assert name in str(info.value)


@pytest.mark.parametrize("name, params, bad", [
    ("singular", {"kappa": 3.0}, "has no parameter 'kappa'"),
    ("singular", {"measure": "svd"}, "parameter 'measure' must be 'ratio'|'rms'|'logdet'"),
    ("decorrelation", {"kappa": "big"}, "parameter 'kappa' must be float"),
    ("decorrelation", {"max_rows": 10.5}, "parameter 'max_rows' must be int"),
    ("trades", {"steps": True}, "parameter 'steps' must be int"),
    ("distill", {}, "needs parameter\\(s\\) teacher"),
])
def test_bad_parameters_list_the_valid_ones(name, params, bad):
    with pytest.raises(ValueError, match=bad) as info:
        build_regularizer(name, **params)
    message = str(info.value)
    assert "Valid parameters" in message
    # every parameter with its type and default is listed, e.g. "  jitter: float = 1e-06"
    for line in message.splitlines()[1:]:
        assert ":" in line and "=" in line


@pytest.mark.parametrize("name, params, bad", [
    ("decorrelation", {"tau": 1.5}, "tau must be in"),
    ("singular", {"refresh_every": 0}, "refresh_every must be > 0"),
    ("singular", {"tolerance": 0.0}, "tolerance must be > 0"),
    ("singular", {"track_every": 0}, "track_every must be > 0"),
    ("trades", {"eps": -0.1}, "eps must be > 0"),
])
def test_out_of_range_values_say_what_to_change(name, params, bad):
    with pytest.raises(ValueError, match=bad):
        build_regularizer(name, **params)


def test_ints_are_accepted_for_floats():
    reg = build_regularizer("decorrelation", kappa=5, tau=0)
    assert reg.kappa == 5.0


@pytest.mark.parametrize("name", ["singular", "decorrelation", "orthogonality"])
def test_weight_penalties_run_in_float32_under_bf16_autocast(name):
    model, batch = tiny_cnn(), tiny_batch()
    reg = build_regularizer(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(batch["image"])
        term = reg(model, batch, outputs)
    assert term.dtype == torch.float32
    assert term.item() == pytest.approx(reg(model, batch, outputs.float()).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["singular", "decorrelation"])
def test_lazy_regularization_scales_the_gradient_and_skips_the_work(name):
    # Karras et al. 2020: every N-th training call evaluates with gradient × N; the others cost nothing.
    layer = nn.Linear(6, 5)
    torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(layer)
    lazy, exact = build_regularizer(name, lazy_every=3), build_regularizer(name, lazy_every=1)
    out = torch.zeros(1, 5)
    for call in range(6):
        value = lazy(model, {}, out)
        reference = exact(model, {}, out)
        assert value.item() == pytest.approx(reference.item(), rel=1e-6)  # weights unchanged: same value
        if call % 3:
            assert not value.requires_grad  # a constant: nothing to differentiate, nothing computed
            continue
        (lazy_grad,) = torch.autograd.grad(value, layer.weight)
        (exact_grad,) = torch.autograd.grad(reference, layer.weight)
        assert torch.allclose(lazy_grad, 3 * exact_grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # evaluation: every call computes
        assert lazy(model, {}, out).item() == pytest.approx(exact(model, {}, out).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["singular", "decorrelation"])
def test_mean_over_layers_and_lazy_factor_are_folded_into_the_gradient(name):
    # The term is the mean of the per-layer terms, its gradient (lazy factor 2) twice the mean of theirs.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    out = torch.zeros(1, 3)
    value = build_regularizer(name, lazy_every=2)(model, {}, out)
    grads = torch.autograd.grad(value, [model[i].weight for i in (0, 2, 4)])
    singles = [build_regularizer(name, lazy_every=1, layers=f"^{i}$")(model, {}, out) for i in (0, 2, 4)]
    assert value.item() == pytest.approx(sum(s.item() for s in singles) / 3, rel=1e-6)
    for grad, single, i in zip(grads, singles, (0, 2, 4)):
        (reference,) = torch.autograd.grad(single, model[i].weight)
        assert torch.allclose(grad, 2 * reference / 3, rtol=1e-5, atol=1e-8)
        assert grad.abs().max() > 0
