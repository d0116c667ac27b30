"""The certified fast path: Rump's Cholesky test, Lanczos estimates, and ranks equal to matrix_rank's."""

from __future__ import annotations

import threading

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from regcollide.audit import certify, decide
from regcollide.audit.certify import gram, is_positive_definite, lanczos_top
from regcollide.audit.rank import NonFiniteWeightsError, ranks_of


def with_spectrum(sigma: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = sigma.numel()
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=torch.float64))
    return u @ torch.diag(sigma) @ v.T  # (m, n) with singular values sigma


def test_positive_definite_certificate_accepts_clear_cases_and_refuses_indefinite_or_tiny_ones():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(150, 150, generator=gen, dtype=torch.float64))
    spectra = [torch.linspace(1, 2, 150), torch.cat([torch.tensor([-1e-9]), torch.linspace(1, 2, 149)]),
               torch.cat([torch.tensor([1e-16]), torch.linspace(1, 2, 149)])]
    mats = torch.stack([q @ torch.diag(s.double()) @ q.T for s in spectra])
    ok, factor, shift = is_positive_definite(mats)
    assert ok.tolist() == [True, False, False]  # 1e-16 is below the rounding shift: not certifiable
    assert float(shift[0]) > 0 and torch.allclose(factor[0] @ factor[0].T, mats[0] - shift[0] * torch.eye(150))


def test_lanczos_top_matches_the_largest_eigenvalue_of_a_random_gram():
    gen = torch.Generator().manual_seed(1)
    grams = gram(torch.randn(2, 300, 700, generator=gen))[0]  # (2, 300, 300)
    top = lanczos_top(lambda q: (grams @ q[:, :, None])[:, :, 0], (2, 300), 40, torch.float64, "cpu")
    exact = torch.linalg.eigvalsh(grams)[:, -1]
    assert torch.allclose(top, exact, rtol=1e-6) and bool((top <= exact * (1 + 1e-12)).all())


def test_full_rank_matrices_take_the_certificate_and_agree_with_matrix_rank(monkeypatch):
    monkeypatch.setattr(decide, "_CERTIFY_MIN_WORK", 0)  # small matrices would go to the eigensolver
    gen = torch.Generator().manual_seed(2)
    mats = [torch.randn(200, 600, generator=gen), torch.randn(700, 200, generator=gen)]
    infos = ranks_of(mats, cosines=False)
    assert [info.method for info in infos] == ["cholesky", "cholesky"]
    assert [info.rank for info in infos] == [int(torch.linalg.matrix_rank(m)) for m in mats] == [200, 200]
    for mat, info in zip(mats, infos, strict=True):
        sigma = torch.linalg.svdvals(mat.double())
        assert info.sigma_max == pytest.approx(float(sigma[0]), rel=1e-6)
        assert info.sigma_min == pytest.approx(float(sigma[-1]), rel=1e-3)


@pytest.mark.parametrize("factor", [0.5, 1 - 1e-6, 1 + 1e-6, 2.0])
def test_a_singular_value_at_the_threshold_leaves_the_certificate_and_still_agrees(factor):
    n = 400
    rtol = n * torch.finfo(torch.float32).eps
    sigma = torch.linspace(1.0, 0.3, 200, dtype=torch.float64)
    sigma[-1] = rtol * factor
    mat = with_spectrum(sigma, n, seed=3).float()
    (info,) = ranks_of([mat], cosines=False, factors=(0.1, 10.0))
    assert info.method != "cholesky"
    assert info.rank == int(torch.linalg.matrix_rank(mat))
    assert list(info.ranks_at) == [int(torch.linalg.matrix_rank(mat, rtol=f * rtol)) for f in (0.1, 10.0)]


def test_nan_or_inf_weights_are_refused_with_one_clear_error():
    for bad in (float("nan"), float("inf")):
        mat = torch.randn(50, 80)
        mat[3, 4] = bad
        with pytest.raises(NonFiniteWeightsError, match="NaN or inf"):
            ranks_of([mat])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_bad_tolerances_are_refused(value):
    with pytest.raises(ValueError, match="finite number >= 0"):
        ranks_of([torch.randn(4, 4)], rtol=value)
    with pytest.raises(ValueError, match="factors"):
        ranks_of([torch.randn(4, 4)], factors=(value,))


def _blas_threads() -> dict[str, int]:
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_small_grams_run_scipys_blas_on_one_thread_and_give_the_count_back(monkeypatch):
    # Two BLAS pools spinning on the same cores made small audits 6x slower: small calls take one thread.
    seen = []
    original = certify._chunked_syrk
    monkeypatch.setattr(certify, "_chunked_syrk", lambda *args: seen.append(_blas_threads()) or original(*args))
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        certify.gram(torch.randn(1, 300, 700), single=True)  # 512 * 300^2 flops per call: one thread
        assert seen and set(seen[0].values()) == {1}
        assert _blas_threads() == before == {path: 2 for path in before}
        monkeypatch.setattr(certify, "_PARALLEL_MIN_FLOPS", 1e6)  # now a "large" call keeps the pool
        certify.gram(torch.randn(1, 300, 700), single=True)
        assert seen[1] == before


def test_one_thread_contexts_nest_and_the_outermost_gives_the_count_back():
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        with certify.blas_threads(0):
            with certify.blas_threads(0):  # inner: no second switch
                assert set(_blas_threads().values()) == {1}
            with certify.blas_threads(1e12):  # a large call inside a small batch stays on one thread
                assert set(_blas_threads().values()) == {1}
            assert set(_blas_threads().values()) == {1}
        assert _blas_threads() == before == {path: 2 for path in before}


@pytest.mark.parametrize("shape", [(3, 150, 700), (1, 150, 700), (3, 700, 150), (2, 300, 1100)])
def test_the_upper_triangle_gram_is_the_full_one_and_solvers_reading_it_agree(shape):
    batch = torch.randn(*shape, generator=torch.Generator().manual_seed(11))
    full, frob2, delta = gram(batch, single=True)
    upper, frob2_u, delta_u = gram(batch, single=True, full=False)
    assert torch.equal(full, full.mT) and torch.equal(torch.triu(upper), torch.triu(full))
    assert not bool(torch.tril(upper, diagonal=-1).any())  # nothing below the diagonal to lean on
    assert torch.equal(frob2, frob2_u) and torch.equal(delta, delta_u)
    expected = torch.linalg.eigvalsh(full.double())  # (B, k) from the full symmetric Grams
    got = torch.from_numpy(decide._eigvalsh32(upper))  # scipy (k >= 192) or torch, upper triangle only
    norm = expected[:, -1:].abs()
    assert float(((got - expected).abs() / norm).max()) < 1e-5


def test_a_batch_is_decided_as_its_matrices_are_one_by_one():
    gen = torch.Generator().manual_seed(12)
    batch = torch.randn(3, 200, 600, generator=gen)
    batch[1, 0] = batch[1, 1]  # one rank-deficient member: it leaves the float32 stage for the float64 one
    rule = decide.Rule(600 * 2.0**-23, 0.0, (1.0, 10.0), 2.0**-23)
    together, _ = decide.decide_batch(batch, rule)
    alone = [decide.decide_batch(batch[i : i + 1], rule)[0][0] for i in range(3)]
    assert together == alone
    assert [d[0] for d in together] == [(200, 200), (199, 199), (200, 200)]
    assert [d[-1] for d in together] == ["gram", "gram", "gram"]


def test_one_thread_contexts_overlapping_across_threads_keep_one_thread_until_the_last_closes(monkeypatch):
    # The pools are process-wide: a context closing in one thread must not give the second thread back
    # while another thread's context is still open. (Recorded on a stand-in library: OpenBLAS may ignore
    # a thread count set from a thread other than the one that started it.)
    class Library:
        def __init__(self):
            self.count, self.calls = 2, []

        def get_num_threads(self):
            return self.count

        def set_num_threads(self, count):
            self.count = count
            self.calls.append(count)

    library = Library()
    monkeypatch.setitem(certify._one_thread_state, "libraries", [library])
    entered, release = threading.Event(), threading.Event()

    def worker():
        with certify.blas_threads(0):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    assert entered.wait(10)
    with certify.blas_threads(0):  # opened and closed while the worker's context is open
        assert library.count == 1
    assert library.count == 1  # the worker still runs on one thread
    release.set()
    thread.join(10)
    assert library.count == 2 and library.calls == [1, 2]
