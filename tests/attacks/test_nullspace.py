"""Null-space search (Ozbulak et al. 2022): exactness is measured, kernels are right, boxes are respected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regcollide.attacks.nullspace.basis import ConvOperator, build_plan, smallest_singular_vectors
from regcollide.attacks.nullspace.perturb import MODES
from regcollide.attacks.nullspace.search import NullspaceError, NullspaceSearch, evaluate_nullspace
from regcollide.data import load_tensors
from regcollide.models import create_model

CONTRACT = ("model first_layer nullity exact n beta linf_mean l2_mean max_abs_output_residual "
            "max_rel_output_residual max_rel_first_layer_residual prediction_agreement").split()
TARGET = 1e-5  # max relative output residual of an exact collision in float32 (docs/design.md)


@pytest.fixture(scope="module")
def digits():
    return load_tensors("mnist5k", "test", n=6)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return create_model("mlp").eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)  # 3×32×32 with 16×16 patches: 768 inputs per patch, 192 outputs -> nullity 576
    return create_model("vit-tiny", in_chans=3, img_size=32, patch_size=16).eval()


def rgb(images, size=32):
    return torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(size, size), mode="bilinear",
                                           align_corners=False).clamp(0, 1)


def test_mlp_exact_collisions_and_noise_baseline(mlp, digits):
    images, labels = digits
    result = evaluate_nullspace(mlp, images, labels, n=6, beta=1.0, collisions=2)
    out = result.to_dict()
    assert all(key in out for key in CONTRACT)
    assert out["exact"] and out["kind"] == "linear" and out["nullity"] == 784 - 256 == 528
    assert out["max_rel_output_residual"] <= TARGET and out["prediction_agreement"] == 1.0
    assert out["noise_min_rel_output_residual"] >= 1000 * out["max_rel_output_residual"]
    assert out["l2_mean"] == pytest.approx(1.0, rel=1e-5)  # ‖δ‖₂ = β for a Linear first layer


def test_kernel_basis_matches_svd_reference(mlp):
    plan = build_plan(mlp, (1, 28, 28))
    weight = mlp[1].weight.detach().double()
    basis = plan.basis  # (528, 784)
    assert basis.shape == (784 - torch.linalg.matrix_rank(weight).item(), 784)
    assert torch.allclose(basis @ basis.T, torch.eye(basis.shape[0], dtype=torch.float64), atol=1e-10)
    assert (weight @ basis.T).abs().max() < 1e-10 * weight.abs().max()
    assert build_plan(mlp, (1, 28, 28)) is plan  # cached per model and geometry


def test_normalization_is_folded_into_w1(vit):
    plan = build_plan(vit, (3, 32, 32))
    assert plan.kind == "patchify" and plan.exact and plan.nullity == 768 - 192
    assert plan.normalization_folded
    std = vit.normalize.std.double()
    assert torch.allclose(plan.scale[:, 0, 0], 1 / std)
    weight = vit.net.patch_embed.proj.weight.detach().double().reshape(192, -1)  # (192, 3·16·16)
    folded = weight * (1 / std).repeat_interleave(256)
    assert (folded @ plan.basis.T).abs().max() < 1e-10 * folded.abs().max()
    # the unfolded kernel is a different subspace: ignoring the normalization would not collide
    assert (weight @ plan.basis.T).abs().max() > 1e-3 * weight.abs().max()


@pytest.mark.parametrize("mode", MODES)
def test_patchify_vit_is_exact_in_every_mode(vit, digits, mode):
    images = rgb(digits[0][:3])
    result = evaluate_nullspace(vit, images, mode=mode, collisions=2, beta=1.0).to_dict()
    assert result["exact"] and result["kind"] == "patchify", result["reason"]
    assert result["max_rel_output_residual"] <= TARGET and result["prediction_agreement"] == 1.0
    assert result["noise_min_rel_output_residual"] >= 1000 * result["max_rel_output_residual"]
    assert result["max_rel_first_layer_residual"] <= TARGET


def test_per_patch_and_masked_structure(vit, digits):
    images = rgb(digits[0][:2])
    per_patch = NullspaceSearch(vit, mode="per_patch", seed=1)(images)
    patches = per_patch.plan.untile(per_patch.perturbations.double())  # (N, 4, 768)
    assert patches.norm(dim=2).sub(1).abs().max() < 1e-5  # unit φ on each patch
    assert (patches[:, 0] - patches[:, 1]).abs().max() > 1e-3  # different kernel vectors per patch
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:16, :16] = True  # the top-left patch only
    masked = NullspaceSearch(vit, mode="masked", mask=mask)(images)
    assert masked.perturbations[:, :, ~mask].abs().max() == 0
    assert masked.perturbations[:, :, mask].abs().max() > 0 and masked.exact


def test_masked_linear_uses_kernel_vectors_supported_in_the_mask(mlp, digits):
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[4:24, 4:24] = True  # 400 pixels > 256 outputs: a 144-dim kernel lives inside
    out = NullspaceSearch(mlp, mode="masked", mask=mask, collisions=2)(digits[0][:2])
    assert out.perturbations[:, :, ~mask].abs().max() == 0 and out.exact
    assert out.rel_output_residual.max() <= TARGET


@pytest.mark.parametrize("model_name", ["mlp", "vit"])
def test_valid_image_stays_in_box_and_in_kernel(model_name, mlp, vit, digits):
    model, images = (mlp, digits[0]) if model_name == "mlp" else (vit, rgb(digits[0][:3]))
    result, out = evaluate_nullspace(model, images, valid_image=True, beta=1.0, mode="random",
                                     return_output=True)
    assert out.images.min() >= 0 and out.images.max() <= 1  # no clipping was needed: δ was fitted
    assert result.exact and result.max_rel_output_residual <= TARGET
    # MNIST's black background forbids most directions; the fitted δ still keeps a real size
    per_patch = 1.0 if model_name == "mlp" else 2.0  # vit: 4 patches of norm β
    assert result.l2_mean > 0.3 * per_patch


@pytest.mark.slow
def test_resnet18_is_reported_not_exact():
    torch.manual_seed(0)
    model = create_model("tv:resnet18").eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = evaluate_nullspace(model, images).to_dict()
    assert not result["exact"] and result["kind"] == "approximate" and "not_exact" in [f["id"] for f in result["flags"]]
    assert "not a kernel vector" in result["reason"]
    assert 0 < result["approx_ratio_relative"] < 1 and result["approx_ratio"] > 0
    assert result["max_rel_output_residual"] > 0 and result["max_rel_first_layer_residual"] > TARGET


def test_smallest_singular_vector_matches_dense_svd():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 7, stride=2, padding=3)
    op = ConvOperator(conv, torch.full((3, 1, 1), 2.0, dtype=torch.float64))
    shape = (3, 12, 12)
    vectors, ratios, sigma_max = smallest_singular_vectors(op, shape, k=1, maxiter=300)
    with torch.no_grad():  # the dense operator, one column per pixel: the reference spectrum
        dense = op(torch.eye(432, dtype=torch.float64).reshape(432, *shape)).reshape(432, -1).T
    sigma = torch.linalg.svdvals(dense)
    assert sigma_max == pytest.approx(sigma[0].item(), rel=0.05)
    assert sigma[-1].item() <= ratios[0].item() <= 1.05 * sigma[-1].item()


def test_periodic_kernel_of_an_overlapping_conv_is_exact():
    torch.manual_seed(0)  # stride-2 3×3 conv, 4 outputs: 12 unknowns per period -> 8-dim exact kernel
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)).eval()
    model(torch.zeros(1, 3, 15, 15))
    result = evaluate_nullspace(model, torch.rand(3, 3, 15, 15), collisions=2).to_dict()
    assert result["kind"] == "periodic" and result["exact"], result["reason"]
    assert result["kernel_dim"] == 8 and result["max_rel_output_residual"] <= TARGET
    # padding makes borders differ from the interior; the same conv with padding has less or no kernel
    padded = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Flatten()).eval()
    verdict = evaluate_nullspace(padded, torch.rand(2, 3, 15, 15)).to_dict()
    assert verdict["exact"] == (verdict["max_rel_output_residual"] <= TARGET)


def test_nullity_zero_first_layer_has_a_clear_message(digits):
    model = create_model("vit-tiny").eval()  # 1×28×28, 7×7 patches: 49 inputs, 192 outputs
    with pytest.raises(NullspaceError, match="nullity 0"):
        evaluate_nullspace(model, digits[0][:2])


def test_bad_mode_is_rejected(mlp):
    with pytest.raises(ValueError, match="repeat, per_patch, random, masked"):
        NullspaceSearch(mlp, mode="tiled")
