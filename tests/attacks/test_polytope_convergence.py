"""The polytope distance ratio as a model property: stopping rule, convergence state, failure, batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regcollide.attacks.polytope.evaluate import FAILED, NOT_CONVERGED, evaluate_polytope
from regcollide.attacks.polytope.exact import exact_vertices
from regcollide.attacks.polytope.search import PolytopeSearch
from regcollide.models import create_model

# a quick stopping rule for tests: check every 50 steps, spread within 1% over the last 200 steps
QUICK = dict(check_every=50, window=200, plateau=0.01, residual_tol=0.01)


def test_batch_of_targets_is_one_optimization_equal_to_single_searches():
    torch.manual_seed(0)
    # float64: Adam turns float32 rounding differences of a larger matmul into lr-sized steps on pixels whose
    # gradient is ~0, so only a float64 run can be compared coordinate by coordinate
    model = create_model("mlp").double().eval()
    targets = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    search = PolytopeSearch(model, vertices=3, steps=40, seed=5, progress=False)
    batch = search.search_batch(targets)
    for j, out in enumerate(batch):
        single = PolytopeSearch(model, vertices=3, steps=40, seed=5 + j, progress=False).search(targets[j])
        assert torch.equal(single.units, out.units)  # target j draws its units with seed + j
        torch.testing.assert_close(out.vertices, single.vertices, rtol=0, atol=1e-9)
        assert out.steps == 40 and out.steps_used == 40 and not out.converged


def test_converged_ratio_does_not_depend_on_the_budget(trained_mlp, mnist_test):
    images, labels = mnist_test
    common = dict(targets=2, samples=200, data_images=images[:200], **QUICK)
    results = [evaluate_polytope(trained_mlp, images, labels, steps=budget, **common).to_dict()
               for budget in (6000, 12000)]
    first, doubled = results
    assert first["converged"] and doubled["converged"] and first["steps_used"] < 6000
    for row in first["per_target"]:
        assert row["converged"] and not row["failed"] and row["max_rel_feature_residual"] < 0.05
    # the learning rate is constant and the rule looks only at the trajectory, so doubling the budget
    # leaves a converged search where it stopped: the ratio agrees to float rounding (1e-9 relative)
    assert doubled["distance_ratio"] == pytest.approx(first["distance_ratio"], rel=1e-9)
    assert doubled["steps"] == 12000 and first["steps"] == 6000
    assert first["stopping_rule"] == QUICK and first["distance_ratio"] > 0.2  # not a collapsed polytope
    # a stricter plateau runs longer and moves the ratio by at most a few percent: the rule, not the budget,
    # decides the number
    strict = evaluate_polytope(trained_mlp, images, labels, steps=12000,
                               **(common | {"plateau": 0.0025, "window": 400})).to_dict()
    assert strict["converged"] and strict["steps_used"] >= first["steps_used"]
    assert strict["distance_ratio"] == pytest.approx(first["distance_ratio"], rel=0.1)


def test_a_search_cut_short_by_the_budget_is_flagged_not_reported(trained_mlp, mnist_test):
    images, labels = mnist_test
    result = evaluate_polytope(trained_mlp, images, labels, steps=300, targets=2, samples=200,
                               data_images=images[:200], **QUICK)
    d = result.to_dict()
    assert not d["converged"] and d["converged_targets"] == 0 and d["steps_used"] == 300
    assert d["distance_ratio"] is None and d["vertex_distance"] is None  # no valid target, no number
    assert d["distance_ratio_all"] > 0  # the budget-bound spread is still recorded, labelled as such
    assert [f["id"] for f in d["flags"]] == [NOT_CONVERGED]


def test_residual_not_below_the_random_sphere_control_is_a_failure(trained_mlp, mnist_test):
    images, labels = mnist_test
    # a push weight 10⁶ times the default and no hold: each vertex runs along its unit's weight row, which
    # moves the features far more than random directions of the same length (measured: 3.7 against 2.0)
    result = evaluate_polytope(trained_mlp, images, labels, steps=400, beta=1000.0, hold=0.0, targets=1,
                               samples=200, data_images=images[:200], **QUICK)
    d = result.to_dict()
    row = d["per_target"][0]
    assert row["failed"] and row["max_rel_feature_residual"] >= row["ball_mean_rel_feature_residual"]
    assert d["failed_targets"] == 1 and d["valid_targets"] == 0 and d["distance_ratio"] is None
    failed = [f for f in d["flags"] if f["id"] == FAILED]
    assert failed and failed[0]["severity"] == "error"


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=float("nan")), dict(beta=float("inf")),
                                 dict(window=120, check_every=50), dict(residual_tol=0.0)])
def test_bad_search_settings_are_refused(bad):
    with pytest.raises(ValueError):
        PolytopeSearch(create_model("mlp"), **bad)


def test_exact_vertices_solve_the_polytope_by_hand():
    # z(x) = (x1 + x2 − 1, x1 − x2 − 0.5) on two pixels; at x_t = (0.8, 0.6): z = (0.4, −0.3), unit 0 active.
    # Pushing unit 1 down while x1 + x2 = 1.4 stays and x ∈ [0, 1]²: x2 = 1, x1 = 0.4.
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        model[1].bias.copy_(torch.tensor([-1.0, -0.5]))
    target = torch.tensor([[[0.8, 0.6]]], dtype=torch.float64)
    vertex = exact_vertices(model.double(), "1", target, torch.tensor([1]))
    torch.testing.assert_close(vertex, torch.tensor([[[[0.4, 1.0]]]], dtype=torch.float64))
    conv = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten()).eval()
    assert exact_vertices(conv, "0", torch.rand(1, 2, 2), torch.tensor([0])) is None  # not a Linear layer
