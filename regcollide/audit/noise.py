"""How much of nu is float tolerance: nullity expected from random weights, and nu over a range of tolerances.

Ozbulak et al. ("Exact Feature Collisions in Neural Networks", 2022, Table 1) count a matrix in nu when
its numerical nullity is >= 1. With the default tolerance ``tol = max(out, in) * eps(float32) * sigma_max``
a *random* square matrix already has singular values below tol: for an n x n Gaussian matrix the
singular values of A / (s sqrt(n)) follow the quarter-circle law with density 2/pi at 0, and
sigma_max ~ 2 s sqrt(n), so about (2/pi) * n * (2 n eps) = (4/pi) n^2 eps of them fall below tol
(2.5 for a 4096 x 4096 layer). So at random init ν counts float noise in every large square layer.

``expected_random_count`` gives, for any shape, the expected number of singular values below
``rtol * sigma_max`` for a matrix with i.i.d. zero-mean entries, from the Marchenko-Pastur law of the
k x k Gram (k = min, N = max, c = k / N): with y = sigma / (s sqrt(N)) the density of y is
``sqrt((b - y^2)(y^2 - a)) / (pi c y)`` on [sqrt(a), sqrt(b)], a, b = (1 -+ sqrt(c))^2, and
sigma_max / (s sqrt(N)) -> 1 + sqrt(c). The count is k times its integral up to rtol * (1 + sqrt(c)).
Checked against Monte Carlo (tests/audit/test_noise.py): within 12% where the expected count is >= 2;
where it is below 1 (the hard edge of square matrices, Edelman 1988) the law underestimates the finite-n
count by up to ~1.5x, so treat small expectations as a lower bound. Shapes with out far from in have
no singular value near 0 and expect 0.

A layer whose excess nullity is well above this expectation, and stays when the tolerance drops 10x, is
rank deficient because of its values (training); excess nullity that vanishes at 0.1x tol or matches
the random expectation is float noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.integrate import quad

__all__ = ["SENSITIVITY_FACTORS", "expected_random_count", "tolerance_sensitivity"]

SENSITIVITY_FACTORS = (0.1, 1.0, 10.0, 100.0)  # multiples of the tolerance reported by the audit


def expected_random_count(out_dim: int, in_dim: int, rtol: float) -> float:
    """Expected number of singular values <= rtol * sigma_max of a random out x in matrix (i.i.d. entries).

    Marchenko-Pastur estimate (see the module docstring); exact in the large-matrix limit, a lower bound
    (by up to ~1.5x) when the result is below 1.
    """
    if min(out_dim, in_dim) < 1 or rtol <= 0:
        return 0.0
    k, big = min(out_dim, in_dim), max(out_dim, in_dim)
    c = k / big
    lo, hi = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    top = min(rtol * (1 + math.sqrt(c)), math.sqrt(hi))
    if top <= math.sqrt(lo):
        return 0.0

    def density(y: float) -> float:  # density of y = sigma / (s sqrt(N)); finite at y -> 0 when c = 1
        if y <= 0:
            return 2 / math.pi if c == 1 else 0.0
        return math.sqrt(max((hi - y * y) * (y * y - lo), 0.0)) / (math.pi * c * y)

    return k * quad(density, math.sqrt(lo), top, limit=200)[0]


def tolerance_sensitivity(layers: Sequence, factors: Sequence[float] = SENSITIVITY_FACTORS) -> list[dict]:
    """nu, excess nullity and the random-init expectation at each multiple f of the audit's tolerance.

    ``layers`` are ``LayerAudit`` entries carrying ``nullity_at`` (one nullity per factor) and
    ``block_shapes``/``rtol``. ``expected_random_excess`` is None when an absolute tolerance was used
    (the expectation is defined for a relative one).
    """
    rows = []
    for index, factor in enumerate(factors):
        nullities = [layer.nullity_at[index] for layer in layers]
        relative = all(layer.atol == 0 for layer in layers)
        expected = sum(expected_random_count(o, i, factor * layer.rtol) for layer in layers
                       for o, i in layer.block_shapes) if relative else None
        rows.append({
            "factor": factor,
            "nu": sum(n >= 1 for n in nullities),
            "excess_nullity": sum(n - layer.structural_nullity for n, layer in zip(nullities, layers, strict=True)),
            "expected_random_excess": None if expected is None else round(expected, 3),
        })
    return rows
