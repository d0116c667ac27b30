"""The float32 Gram and the deflation certificate: their bounds hold against float64 SVD on adversarial
matrices, and the ranks they give equal torch.linalg.matrix_rank's (at 1x and the sensitivity factors)."""

from __future__ import annotations

import pytest
import torch

from regcollide.audit import decide
from regcollide.audit import rank as rank_engine
from regcollide.audit.certify import CHUNK, gram
from regcollide.audit.deflate import _above, _below, deflated_ranks
from regcollide.audit.rank import ranks_of

EPS32 = torch.finfo(torch.float32).eps
FACTORS = (0.1, 10.0, 100.0)


@pytest.fixture(autouse=True)
def certificates_at_any_size(monkeypatch):
    """The engine skips the certificates where an eigensolve is cheaper; test them on small matrices."""
    monkeypatch.setattr(decide, "_CERTIFY_MIN_WORK", 0)


def with_spectrum(sigma: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = sigma.numel()
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=torch.float64))
    return u @ torch.diag(sigma.double()) @ v.T  # (m, n) with singular values sigma (up to rounding)


def reference_ranks(matrix: torch.Tensor, factors: tuple[float, ...] = FACTORS) -> list[int]:
    """matrix_rank at 1x and at each factor of the default tolerance, on the float32 matrix itself."""
    # torch.linalg.matrix_rank(matrix, rtol=f * rtol) is exactly this count on the same svdvals call;
    # one SVD serves every factor.
    rtol = max(matrix.shape) * EPS32
    sigma = torch.linalg.svdvals(matrix)  # float32, descending
    assert int(torch.linalg.matrix_rank(matrix)) == int((sigma > rtol * sigma[0]).sum())
    return [int((sigma > f * rtol * sigma[0]).sum()) for f in (1.0, *factors)]


def engine_ranks(matrix: torch.Tensor, factors: tuple[float, ...] = FACTORS) -> tuple[list[int], str]:
    rank_engine._CACHE.clear()
    (info,) = ranks_of([matrix], cosines=False, factors=factors)
    return [info.rank, *info.ranks_at], info.method


def adversarial_rectangle(name: str) -> torch.Tensor:
    """Wide and tall float32 matrices whose float32 Gram is as inaccurate as we could make it."""
    n = 3 * CHUNK + 17  # several chunks, the last one short
    if name == "spread":  # huge dynamic range
        return with_spectrum(torch.logspace(0, -6, 150), n, seed=1).float()
    if name == "repeated":
        return with_spectrum(torch.cat([torch.full((100,), 3.0), torch.full((50,), 1e-3)]), n, seed=2).float()
    if name == "tall":
        return with_spectrum(torch.linspace(2, 1, 150), n, seed=3).float().T.contiguous()
    # Entries of both signs spanning 12 orders of magnitude in a row: cancellation in every dot product.
    gen = torch.Generator().manual_seed(7)
    scales = torch.logspace(-6, 6, n, dtype=torch.float64)[torch.randperm(n, generator=gen)]
    return (torch.randn(150, n, generator=gen, dtype=torch.float64) * scales).float()


@pytest.mark.parametrize("name", ["spread", "repeated", "cancelling", "tall"])
def test_float32_gram_eigenvalues_lie_within_the_stated_bound_of_float64_svd(name):
    matrix = adversarial_rectangle(name)
    grams, frob2, delta = gram(matrix[None], single=True)
    exact = torch.linalg.svdvals(matrix.double()).flip(0) ** 2  # ascending, from the same float32 values
    assert grams.dtype == torch.float32 and torch.equal(grams, grams.mT)
    got = torch.linalg.eigvalsh(grams[0].double())
    assert float((got - exact).abs().max()) <= float(delta[0])
    assert float(frob2[0]) >= float(exact.sum())
    # The bound is an upper bound on the whole error matrix too (Weyl): check its 2-norm directly.
    true_gram = matrix.double() @ matrix.double().T if matrix.shape[0] <= matrix.shape[1] else \
        matrix.double().T @ matrix.double()
    assert float(torch.linalg.matrix_norm(grams[0].double() - true_gram, ord=2)) <= float(delta[0])


def test_float32_gram_certifies_well_conditioned_rectangles_and_agrees_with_matrix_rank():
    gen = torch.Generator().manual_seed(4)
    mats = [torch.randn(300, 2 * CHUNK + 100, generator=gen), torch.randn(2 * CHUNK + 100, 300, generator=gen)]
    assert all(decide._float32_pays(m[None], 300, max(m.shape)) for m in mats)
    grams, _, delta = gram(torch.stack([mats[0], mats[1].T]), single=True)
    lam_min = torch.linalg.eigvalsh(grams.double())[:, 0]
    assert bool((delta < 0.5 * lam_min).all())  # not vacuous: the certificate has room to succeed
    for matrix in mats:
        ranks, method = engine_ranks(matrix)
        assert (ranks, method) == (reference_ranks(matrix), "cholesky")


def test_small_batches_skip_the_certificates(monkeypatch):
    monkeypatch.undo()
    assert not decide._certificate_pays(1, 600) and decide._float32_pays(torch.zeros(1, 300, 2000), 300, 2000)
    assert decide._certificate_pays(1, 768) and decide._certificate_pays(12, 512)
    matrix = square_with_small_values(torch.tensor([0.5]))
    ranks, method = engine_ranks(matrix, factors=(10.0,))
    assert ranks == reference_ranks(matrix, factors=(10.0,)) and method == "gram"


def test_small_batches_of_well_conditioned_rectangles_are_decided_by_a_float32_eigensolve(monkeypatch):
    monkeypatch.undo()  # no certificate: one 300-column Gram is too small to repay it
    gen = torch.Generator().manual_seed(8)
    calls = []
    original = decide._eigen

    def spy(*args, single=False):
        rest = original(*args, single=single)
        calls.append((single, rest))
        return rest

    monkeypatch.setattr(decide, "_eigen", spy)
    # k = 300 takes scipy's eigensolver, k = 150 torch's (decide._SCIPY_EIGEN_MIN_K = 192)
    for matrix in (torch.randn(300, 2 * CHUNK + 100, generator=gen), torch.randn(700, 150, generator=gen)):
        ranks, method = engine_ranks(matrix)
        assert (ranks, method) == (reference_ranks(matrix), "gram")
        rank_engine._CACHE.clear()
        (info,) = ranks_of([matrix], cosines=False)
        sigma = torch.linalg.svdvals(matrix.double())
        # From the float32 Gram: far better than the 1e-3 the reports need, short of float64's 1e-10.
        assert info.sigma_max == pytest.approx(float(sigma[0]), rel=1e-5)
        assert info.sigma_min == pytest.approx(float(sigma[-1]), rel=1e-5)
    assert calls == [(True, [])] * 4  # the float32 stage decided them, not the float64 fallback


@pytest.mark.parametrize("name", ["spread", "repeated", "cancelling", "tall"])
def test_the_float32_eigensolve_refuses_what_it_cannot_prove(monkeypatch, name):
    monkeypatch.undo()  # adversarial rectangles in batches too small for the certificates
    matrix = adversarial_rectangle(name)
    assert decide._float32_pays(matrix[None], min(matrix.shape), max(matrix.shape))
    ranks, _ = engine_ranks(matrix)
    assert ranks == reference_ranks(matrix)


@pytest.mark.parametrize("shape", [(16, 9), (64, 27), (27, 64), (30, 100), (384, 25), (96, 96)])
def test_tiny_matrices_take_the_reference_svd_and_report_its_sigmas(shape):
    gen = torch.Generator().manual_seed(9)
    matrix = torch.randn(*shape, generator=gen)
    matrix[0] = matrix[1]  # one exact collision: rank k - 1 for matrix_rank too
    m, n = shape
    assert decide._square_ish(min(shape), max(shape)) == (shape == (96, 96))  # only a float64 Gram for it
    assert m * n * min(shape) <= decide._svd_max_work(m, n)
    ranks, method = engine_ranks(matrix)
    assert (ranks, method) == (reference_ranks(matrix), "svd")
    (info,) = ranks_of([matrix], cosines=False)
    reference = torch.linalg.svdvals(matrix)  # the very values matrix_rank compares with its tolerance
    assert (info.sigma_max, info.sigma_min) == (float(reference[0]), float(reference[-1]))
    exact = torch.linalg.svdvals(matrix.double())
    assert info.sigma_max == pytest.approx(float(exact[0]), rel=1e-6)
    assert info.sigma_min == pytest.approx(float(exact[-1]), abs=1e-6 * float(exact[0]))


def test_square_matrices_skip_the_float32_gram():
    assert not decide._float32_pays(torch.zeros(1, 600, 600), 600, 600)
    assert not decide._float32_pays(torch.zeros(1, 300, 1300, dtype=torch.float64), 300, 1300)


def test_an_ill_conditioned_rectangle_falls_back_to_float64_and_still_agrees():
    n = 2 * CHUNK
    sigma = torch.linspace(1.0, 0.5, 200)
    sigma[-1] = 20 * n * EPS32  # certifiable in float64 at 1x, far below the float32 Gram's error
    matrix = with_spectrum(sigma, n, seed=5).float()
    ranks, method = engine_ranks(matrix)
    assert ranks == reference_ranks(matrix) and method in ("gram", "svd")


def square_with_small_values(small: torch.Tensor, k: int = 520, seed: int = 0) -> torch.Tensor:
    """A k x k float32 matrix: sigma from 1 down to 0.05, then the given small values (times tol)."""
    tol = k * EPS32  # sigma_max = 1
    sigma = torch.cat([torch.linspace(1.0, 0.05, k - small.numel(), dtype=torch.float64), small.double() * tol])
    return with_spectrum(sigma, k, seed).float()


# At 0.1x the float64 Gram's error bound exceeds (0.1 tol)^2 for this shape: every small value is
# "borderline" there and goes to the SVD (tested below), so the deflation tests use 1x, 10x and 100x.
@pytest.mark.parametrize("small", [
    [],  # full rank: deflation with q = 0 certifies it
    [0.3],
    [0.0, 0.0, 0.2, 0.5],  # exact zeros
    [0.4] * 6,  # repeated singular values below the tolerance
    [1e-30, 1e-20, 1e-12, 1e-6],  # huge dynamic range down to nothing
    [0.5, 0.8, 1.25, 2.0],  # values on both sides of 1x
])
def test_deflation_certificate_gives_matrix_rank_exactly(small):
    matrix = square_with_small_values(torch.tensor(small))
    ranks, method = engine_ranks(matrix, factors=(10.0, 100.0))
    assert ranks == reference_ranks(matrix, factors=(10.0, 100.0))
    assert method == "deflation"


def test_small_values_at_a_tenth_of_the_tolerance_are_recomputed_by_svd():
    matrix = square_with_small_values(torch.tensor([0.0, 0.3]), seed=4)
    ranks, method = engine_ranks(matrix)
    assert ranks == reference_ranks(matrix) and method == "svd"


@pytest.mark.parametrize("factor", [1 - 1e-6, 1 + 1e-6, 1.01])
def test_a_singular_value_in_the_band_is_recomputed_as_the_reference_does(factor):
    matrix = square_with_small_values(torch.tensor([0.5, factor]), seed=1)
    ranks, method = engine_ranks(matrix, factors=(10.0,))
    assert ranks == reference_ranks(matrix, factors=(10.0,))
    assert method == "svd"


def test_more_small_values_than_the_block_fall_back_to_the_eigensolver():
    matrix = square_with_small_values(torch.full((40,), 0.5), seed=2)
    ranks, method = engine_ranks(matrix, factors=(10.0,))
    assert ranks == reference_ranks(matrix, factors=(10.0,)) and method == "gram"


def spd_with_spectrum(spectrum: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(spectrum.numel(), spectrum.numel(), generator=gen, dtype=torch.float64))
    return q @ torch.diag(spectrum) @ q.T


def test_deflation_counts_each_band_and_refuses_what_it_cannot_prove():
    tiny = torch.tensor([1e-12, 2e-12], dtype=torch.float64)
    gram = spd_with_spectrum(torch.cat([tiny, torch.linspace(1e-6, 1.0, 62, dtype=torch.float64)]), seed=3)
    frob2, upper = float(torch.trace(gram)) * 1.001, 1.0001
    ranks, sigma_min = deflated_ranks(gram, [(1e-9, 2e-9), (1e-7, 5e-7)], frob2, upper)
    assert ranks == [62, 62] and sigma_min == pytest.approx(1e-6, rel=0.1)
    assert deflated_ranks(gram, [(1.5e-12, 1e-9)], frob2, upper) == "borderline"  # a Ritz value in the band
    # The lifted Cholesky proves "at most q eigenvalues <= hi" only with a rounding margin: an eigenvalue
    # 1e-13 above hi is not proven (False means "not certified"), one 1e-9 above is.
    spectrum = torch.cat([tiny, torch.linspace(1e-6, 1.0, 62, dtype=torch.float64)])
    values, vectors = torch.linalg.eigh(spd_with_spectrum(spectrum, seed=4))
    gram = vectors @ torch.diag(values) @ vectors.T
    trace = float(torch.trace(gram)) * 1.001
    assert _above(gram, vectors[:, :2], float(values[2]) - 1e-9, trace)
    assert not _above(gram, vectors[:, :2], float(values[2]) - 1e-13, trace)
    assert not _above(gram, vectors[:, :1], 1e-9, trace)  # two eigenvalues below, only one lifted
    assert _below(gram, vectors[:, :2], 1e-9, 1.0001) and not _below(gram, vectors[:, :3], 1e-9, 1.0001)
    # More eigenvalues under the band than inverse-iteration vectors (16 for k = 64): no answer either.
    many = torch.cat([torch.full((20,), 1e-12, dtype=torch.float64), torch.linspace(1e-3, 1.0, 44).double()])
    gram = spd_with_spectrum(many, seed=5)
    assert deflated_ranks(gram, [(1e-9, 2e-9)], float(torch.trace(gram)) * 1.001, upper) is None


def test_reported_sigmas_of_a_large_certified_matrix_match_float64_svd():
    # k = 520 >= 512: Lanczos reads a float32 copy of the Gram; the estimates stay close to the truth.
    gen = torch.Generator().manual_seed(6)
    matrix = torch.randn(520, 1100, generator=gen)
    rank_engine._CACHE.clear()
    (info,) = ranks_of([matrix], cosines=False)
    sigma = torch.linalg.svdvals(matrix.double())
    assert info.method == "cholesky" and info.rank == int(torch.linalg.matrix_rank(matrix)) == 520
    assert info.sigma_max == pytest.approx(float(sigma[0]), rel=1e-3)  # Lanczos after <= 40 steps
    assert info.sigma_max <= float(sigma[0]) * (1 + 1e-6)  # a Ritz value: from below, up to float32 storage
    assert info.sigma_min == pytest.approx(float(sigma[-1]), rel=1e-3)


def test_rectangular_float64_weights_take_the_gram_and_agree():
    # The float32 Gram is for float32 weights only, but a float64 rectangle still has a cheap float64
    # Gram: only square-ish shapes (whose Gram ends in an eigensolve as dear as the SVD) take the SVD.
    matrix = torch.randn(40, 1000, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    rank_engine._CACHE.clear()
    (info,) = ranks_of([matrix], cosines=False)
    assert (info.rank, info.method) == (int(torch.linalg.matrix_rank(matrix)), "gram")


@pytest.mark.parametrize("shape", [(150, 700), (700, 150)])
def test_finite_weights_too_large_for_float32_products_still_get_rank_and_cosines(shape):
    # Entries near 1e20 are finite float32, but their squares overflow it: the float32 Gram must hand
    # them to the float64 stage instead of calling the weights non-finite.
    gen = torch.Generator().manual_seed(14)
    matrix = torch.randn(*shape, generator=gen) * 1e20
    matrix[:, 1] = 0.5 * matrix[:, 0]  # rank k - 1 however the matrix lies
    matrix[1] = 0.5 * matrix[0]  # a collinear pair of rows: the largest cosine is 1
    ranks, _ = engine_ranks(matrix)
    assert ranks == reference_ranks(matrix) and ranks[0] == min(shape) - 1
    rank_engine._CACHE.clear()
    (info,) = ranks_of([matrix], cosines=True)
    assert info.max_cosine == pytest.approx(1.0, abs=1e-6) and info.max_abs_cosine == pytest.approx(1.0, abs=1e-6)


def test_nan_gram_eigenvalues_leave_the_matrix_undecided():
    # A NaN from a failed solve satisfies no comparison, so it must not pass for "above the band".
    rule = decide.Rule(1e-3, 0.0, (1.0, 10.0), EPS32)
    eig = torch.tensor([[float("nan"), 1.0, 2.0], [0.5, 1.0, 2.0]], dtype=torch.float64).numpy()
    ranks, borderline = decide._band_decide(eig, torch.zeros(2, dtype=torch.float64).numpy(), rule, 3)
    assert borderline.tolist() == [True, False] and ranks[1].tolist() == [3, 3]
