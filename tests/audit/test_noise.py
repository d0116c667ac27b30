"""nu's tolerance sensitivity: the random-init expectation against Monte Carlo, and the audit's report of it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from regcollide.audit.noise import SENSITIVITY_FACTORS, expected_random_count
from regcollide.audit.spectrum import audit


def monte_carlo_count(k: int, n: int, rtol: float, trials: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of #{sigma_i <= rtol * sigma_max} over Gaussian k x n matrices."""
    gen = torch.Generator().manual_seed(seed)
    sigma = torch.linalg.svdvals(torch.randn(trials, k, n, generator=gen, dtype=torch.float64))  # (T, k)
    counts = (sigma <= rtol * sigma[:, :1]).sum(dim=1).double()
    return float(counts.mean()), float(counts.std() / math.sqrt(trials))


@pytest.mark.parametrize(("k", "n", "rtol"), [(64, 64, 0.05), (64, 64, 0.2), (60, 64, 0.05), (32, 64, 0.4)])
def test_marchenko_pastur_count_matches_monte_carlo_within_12_percent_where_it_is_at_least_two(k, n, rtol):
    expected = expected_random_count(k, n, rtol)
    assert expected >= 2
    mean, sem = monte_carlo_count(k, n, rtol, trials=300, seed=k + n)
    assert abs(expected - mean) <= 0.12 * mean + 3 * sem, (expected, mean, sem)


def test_small_square_expectations_are_lower_bounds_within_a_factor_of_1_6():
    # The hard edge (Edelman 1988): finite square matrices have more tiny singular values than the law.
    expected = expected_random_count(64, 64, 0.002)
    mean, sem = monte_carlo_count(64, 64, 0.002, trials=400, seed=1)
    assert expected <= mean + 3 * sem and mean <= 1.6 * expected + 3 * sem, (expected, mean)


def test_square_formula_is_four_over_pi_n_squared_eps_and_far_from_square_shapes_expect_nothing():
    eps = torch.finfo(torch.float32).eps
    n = 4096
    assert expected_random_count(n, n, n * eps) == pytest.approx(4 / math.pi * n * n * eps, rel=1e-3)
    assert expected_random_count(4096, 25088, 25088 * eps) == 0.0
    assert expected_random_count(0, 5, 0.1) == 0.0 and expected_random_count(5, 5, 0.0) == 0.0


def test_audit_reports_sensitivity_rows_that_are_monotone_and_consistent_with_the_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 400))
    result = audit(model, input_shape=(300,))
    rows = result.to_dict()["tolerance_sensitivity"]
    assert [row["factor"] for row in rows] == list(SENSITIVITY_FACTORS)
    one = rows[SENSITIVITY_FACTORS.index(1.0)]
    assert (one["nu"], one["excess_nullity"]) == (result.nu, result.excess_nullity)
    excess = [row["excess_nullity"] for row in rows]
    assert excess == sorted(excess)  # a larger tolerance never raises a rank
    # Reference: numpy-free count with torch.linalg.matrix_rank at each multiple of the default tolerance.
    for row in rows:
        reference = 0
        for layer in model:
            if isinstance(layer, nn.Linear):
                w = layer.weight.detach()
                tol = row["factor"] * max(w.shape) * torch.finfo(torch.float32).eps
                reference += w.shape[1] - int(torch.linalg.matrix_rank(w, rtol=tol)) - max(0, w.shape[1] - w.shape[0])
        assert row["excess_nullity"] == reference, row
    assert one["expected_random_excess"] == pytest.approx(
        sum(expected_random_count(o, i, max(o, i) * torch.finfo(torch.float32).eps)
            for o, i in ((300, 300), (100, 300), (400, 100))), abs=1e-3)


def test_sensitivity_off_and_absolute_tolerance():
    model = nn.Sequential(nn.Linear(8, 4))
    assert audit(model, sensitivity=False).to_dict()["tolerance_sensitivity"] == []
    rows = audit(model, atol=1e-3).to_dict()["tolerance_sensitivity"]
    assert all(row["expected_random_excess"] is None for row in rows)
