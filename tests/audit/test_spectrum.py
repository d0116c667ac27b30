"""Spectrum audit: exact ranks (agreeing with torch.linalg.matrix_rank), nu/mu/nullity, reference values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regcollide.audit.rank import default_tolerance, rank_and_singular_values, ranks_of
from regcollide.audit.spectrum import audit

CONTRACT_KEYS = {"model", "convention", "rtol", "atol", "n_weights", "nu", "mu", "nu_frac", "mu_frac",
                 "total_nullity", "structural_nullity", "excess_nullity", "first_nullity", "layers"}
LAYER_KEYS = {"name", "kind", "out_dim", "in_dim", "rank", "nullity", "structural_nullity", "sigma_min",
              "sigma_max", "max_cosine"}


def low_rank(m: int, n: int, r: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(m, r, generator=gen, dtype=torch.float64)
    right = torch.randn(r, n, generator=gen, dtype=torch.float64)
    return (left @ right).to(dtype)


@pytest.mark.parametrize(("m", "n", "r"), [(12, 12, 5), (12, 12, 12), (6, 40, 3), (6, 40, 6), (40, 6, 4),
                                           (1, 9, 1), (64, 64, 63)])
def test_known_rank_synthetic_matrices(m, n, r):
    info = rank_and_singular_values(low_rank(m, n, r, seed=m * n + r))
    assert info.rank == r
    assert n - info.rank == n - r  # nullity = in - rank


def test_zero_matrix_has_rank_zero():
    info = rank_and_singular_values(torch.zeros(3, 5))
    assert (info.rank, info.sigma_max) == (0, 0.0)


def test_agrees_with_matrix_rank_on_random_low_rank_matrices():
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        m, n = (int(v) for v in torch.randint(1, 70, (2,), generator=gen))
        r = int(torch.randint(0, min(m, n) + 1, (1,), generator=gen))
        matrix = low_rank(m, n, r, seed=trial) if r else torch.zeros(m, n)
        assert rank_and_singular_values(matrix).rank == int(torch.linalg.matrix_rank(matrix)), (m, n, r)


def _with_singular_values(sigma: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = sigma.numel()
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=torch.float64))
    return u @ torch.diag(sigma) @ v.T  # (m, n), singular values exactly `sigma` up to rounding


@pytest.mark.parametrize("factor", [0.5, 0.99, 1 - 1e-6, 1 - 1e-12, 1 + 1e-12, 1 + 1e-6, 1.01, 2.0])
def test_near_threshold_singular_values_agree_with_matrix_rank(factor):
    m, n = 30, 90
    rtol = n * torch.finfo(torch.float32).eps
    sigma = torch.linspace(1.0, 0.3, m, dtype=torch.float64)
    sigma[-1] = rtol * factor  # sigma_max = 1, so the tolerance is rtol itself
    sigma[-2] = rtol * factor ** 0.5
    matrix = _with_singular_values(sigma, n, seed=1)
    assert rank_and_singular_values(matrix, rtol=rtol).rank == int(torch.linalg.matrix_rank(matrix, rtol=rtol))
    as_float32 = matrix.float()
    assert rank_and_singular_values(as_float32).rank == int(torch.linalg.matrix_rank(as_float32))


def test_clear_cases_are_certified_by_the_gram_and_borderline_ones_use_the_svd():
    # 160 x 400 float64: large enough for the Gram path (small matrices go straight to the SVD).
    rtol = 400 * torch.finfo(torch.float32).eps
    sigma = torch.linspace(1.0, 0.3, 160, dtype=torch.float64)
    assert rank_and_singular_values(_with_singular_values(sigma, 400, 2), rtol=rtol).method == "gram"
    sigma[-1] = rtol * (1 + 1e-9)
    info = rank_and_singular_values(_with_singular_values(sigma, 400, 2), rtol=rtol)
    assert info.method == "svd"


def test_rtol_and_atol_follow_matrix_rank_semantics():
    matrix = _with_singular_values(torch.tensor([1.0, 1e-1, 1e-3, 1e-5], dtype=torch.float64), 6, seed=3)
    for kwargs in ({"rtol": 1e-2}, {"atol": 1e-4}, {"atol": 1e-2, "rtol": 1e-4}, {"rtol": 0.5}):
        info = rank_and_singular_values(matrix, **kwargs)
        assert info.rank == int(torch.linalg.matrix_rank(matrix, **kwargs)), kwargs
    assert rank_and_singular_values(matrix, rtol=1e-2).tol == pytest.approx(1e-2)
    with pytest.raises(ValueError, match=">= 0"):
        rank_and_singular_values(matrix, rtol=-1.0)


def test_singular_values_and_cosines_match_references():
    # 140 x 140 float32: the float64 Gram path, whose sigmas carry float64 accuracy. Small matrices report
    # the reference's own float32 SVD values and rectangles the float32 Gram's (both tested in
    # test_fast_paths).
    matrix = _with_singular_values(torch.linspace(3.0, 0.2, 140, dtype=torch.float64), 140, seed=5).float()
    info = rank_and_singular_values(matrix)
    assert info.method == "gram"
    sigma = torch.linalg.svdvals(matrix.double())
    assert info.sigma_max == pytest.approx(float(sigma[0]), rel=1e-10)
    assert info.sigma_min == pytest.approx(float(sigma[-1]), rel=1e-8)
    assert info.tol == pytest.approx(default_tolerance(140, 140, float(sigma[0])), rel=1e-10)
    for mat in (matrix, matrix.T.contiguous()):
        rows = torch.nn.functional.normalize(mat.double(), dim=1)
        cos = rows @ rows.T - 3 * torch.eye(mat.shape[0], dtype=torch.float64)
        got = rank_and_singular_values(mat)
        assert got.max_cosine == pytest.approx(float(cos.max()), abs=1e-5)
        assert got.max_abs_cosine == pytest.approx(float((rows @ rows.T).fill_diagonal_(0).abs().max()), abs=1e-5)


def test_batching_and_cache_give_the_same_ranks_and_see_in_place_updates():
    layer = nn.Linear(30, 10)
    mats = [low_rank(10, 30, r, seed=r) for r in range(1, 11)]
    batched = ranks_of(mats)
    assert [info.rank for info in batched] == list(range(1, 11))
    assert [rank_and_singular_values(m).rank for m in mats] == list(range(1, 11))
    assert audit(layer).layers[0].rank == 10
    with torch.no_grad():
        layer.weight[5:] = 0.0  # in-place: bumps the version counter, the cache must not answer
    assert audit(layer).layers[0].rank == 5


def test_the_cache_key_sees_a_change_the_version_counter_misses():
    # Writes through .data do not bump the version counter, like a freed buffer reused at the same
    # address: only the content fingerprint can tell. Entry (0, 1) is off the fingerprint's sample.
    from regcollide.audit.rank import _cache_key

    matrix = torch.randn(100, 300, generator=torch.Generator().manual_seed(3))
    before = _cache_key(matrix, None, None, False, ())
    matrix.data[0, 1] += 1e-3
    assert _cache_key(matrix, None, None, False, ()) != before
    matrix.data[0, 1] -= 1e-3
    assert _cache_key(matrix, None, None, False, ()) == before  # and it is deterministic


def test_linear_8_to_4_has_nullity_4_all_structural():
    result = audit(nn.Linear(8, 4), input_shape=(8,))
    layer = result.layers[0]
    assert (layer.nullity, layer.structural_nullity, layer.excess_nullity) == (4, 4, 0)
    assert (result.nu, result.mu, result.first_nullity, result.first_layer_source) == (1, 1, 4, "forward")


def test_excess_nullity_counts_rank_loss_beyond_the_shape():
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight.copy_(low_rank(6, 6, 2, seed=9))
    result = audit(model, input_shape=(6,))
    assert [layer.nullity for layer in result.layers] == [4, 3]
    assert (result.structural_nullity, result.excess_nullity, result.total_nullity) == (3, 4, 7)
    assert (result.nu, result.mu, result.nu_frac, result.mu_frac) == (2, 1, 1.0, 0.5)


def test_grouped_and_paper_conventions_differ_on_a_depthwise_conv():
    conv = nn.Conv2d(4, 4, kernel_size=3, groups=4)  # weight (4, 1, 3, 3)
    paper = audit(conv, input_shape=(4, 5, 5))
    grouped = audit(conv, input_shape=(4, 5, 5), convention="grouped")
    # paper: one 4 x 9 matrix, rank 4; grouped: four 1 x 9 blocks, rank 1 each.
    assert (paper.layers[0].out_dim, paper.layers[0].in_dim, paper.total_nullity) == (4, 9, 5)
    assert (grouped.layers[0].out_dim, grouped.layers[0].in_dim, grouped.total_nullity) == (4, 36, 32)
    assert grouped.layers[0].blocks == 4 and grouped.structural_nullity == 32


def test_result_dict_has_every_contract_key_and_records_tolerance():
    data = audit(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2)), (3, 4, 4)).to_dict()
    assert CONTRACT_KEYS <= set(data)
    assert {"first_layer", "first_layer_source", "tolerance_rule"} <= set(data)
    for layer in data["layers"]:
        assert LAYER_KEYS | {"excess_nullity", "tol"} <= set(layer)
        assert layer["tol"] == pytest.approx(default_tolerance(layer["out_dim"], layer["in_dim"], layer["sigma_max"]))


def test_audit_without_input_shape_falls_back_to_registration_order():
    result = audit(nn.Sequential(nn.Linear(5, 3)))
    assert result.first_layer_source == "registration"
    with pytest.raises(ValueError, match="no Linear"):
        audit(nn.Sequential(nn.ReLU()))


@pytest.mark.slow
def test_alexnet_reference_values():
    from regcollide.models import create_model

    result = audit(create_model("tv:alexnet", num_classes=1000, in_chans=3, img_size=224), (3, 224, 224))
    assert (result.n_weights, result.mu, result.first_nullity, result.structural_nullity) == (8, 7, 299, 16515)
    assert result.first_layer_source == "forward"


def test_deit_tiny_reference_values():
    from regcollide.models import create_model

    model = create_model("timm:deit_tiny_patch16_224", num_classes=1000, in_chans=3, img_size=224)
    result = audit(model, (3, 224, 224))
    assert (result.mu, result.first_nullity) == (13, 576)
    assert result.first_layer.endswith("patch_embed.proj")
