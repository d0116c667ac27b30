"""Null-space search measurements that must describe the model, not the tolerance: strided-conv kernels,
the first-layer residual in the verdict, detection structure, distinct colliding adversarials, valid images.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcollide.attacks.nullspace.adversarial import colliding_adversarial, count_distinct
from regcollide.attacks.nullspace.basis import ConvOperator, build_plan, periodic_matrix
from regcollide.attacks.nullspace.outputs import compare
from regcollide.attacks.nullspace.search import MIN_DISTANCE, NullspaceSearch, evaluate_nullspace, exactness
from regcollide.data import load_tensors
from regcollide.models import create_model

TARGET = 1e-5
EPS32 = torch.finfo(torch.float32).eps


def smooth_stem(seed: int = 0) -> nn.Conv2d:
    """A ResNet stem (3→64, 7×7, stride 2, padding 3) with Gaussian-smoothed filters, as training leaves them.

    Smooth filters barely see stride-periodic patterns that alternate from pixel to pixel, so the periodic
    operator has singular values at 1-15% of σ_max: small, but nothing like a kernel.
    """
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    g = torch.exp(-torch.arange(-2, 3.0) ** 2 / (2 * 1.2**2))
    g = (g[:, None] * g[None]) / (g.sum() ** 2)
    with torch.no_grad():
        raw = torch.randn(64 * 3, 1, 11, 11)
        conv.weight.copy_(F.conv2d(raw, g[None, None]).reshape(64, 3, 7, 7))
    return conv


@pytest.mark.slow
def test_strided_stem_small_singular_values_are_not_called_kernel():
    conv = smooth_stem()
    shape = (3, 112, 112)  # 64·56·56 = 200,704 rows: max(rows, cols)·eps(float32) would be 0.024
    op = ConvOperator(conv, torch.ones(3, 1, 1, dtype=torch.float64))
    m = periodic_matrix(op, shape, (2, 2))
    ratios = torch.linalg.svdvals(m) / torch.linalg.svdvals(m)[0]
    assert ratios.min() > 0.008 and (ratios < 0.09).sum() >= 3  # the trained-like regime of the issue
    assert (ratios < max(m.shape) * EPS32).sum() >= 3  # what the old tolerance called "kernel"
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    plan = build_plan(model, shape)
    assert plan.kind == "approximate" and not plan.exact  # the documented smallest-singular-vector plan
    assert "rank 12 of 12" in plan.reason
    # the approximate direction is the operator's least-seen one: its ratio is at most the best periodic one
    assert 0 < float(plan.ratios.min()) <= 1.05 * float(ratios.min())
    result = evaluate_nullspace(model, torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)))
    assert not result.exact and result.kernel_dim == 1 and "not_exact" in [f.id for f in result.flags]


def test_exact_periodic_kernel_still_found_with_the_operator_tolerance():
    torch.manual_seed(0)  # 4 outputs for 12 unknowns per period: an 8-dim kernel, σ at float64 round-off
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)).eval()
    model(torch.zeros(1, 3, 15, 15))
    plan = build_plan(model, (3, 15, 15))
    assert plan.kind == "periodic" and plan.basis.shape[0] == 8 and float(plan.ratios.max()) < 1e-12


def _mute_head(model: nn.Sequential) -> nn.Sequential:
    """Zero the layers after W1, so the output never moves, whatever W1's output does."""
    with torch.no_grad():
        model[-1].weight.zero_()
    return model.eval()


def test_exact_verdict_requires_a_small_first_layer_residual(monkeypatch):
    torch.manual_seed(0)
    model = _mute_head(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 3)))
    search = NullspaceSearch(model, beta=1.0)
    plan = search.plan((1, 4, 4))
    # a basis that is *not* in ker W1 but claims to be (what a too-loose tolerance produces)
    wrong = dataclasses.replace(plan, basis=torch.linalg.qr(model[1].weight.detach().double().T)[0].T)
    monkeypatch.setattr(search, "plan", lambda shape: wrong)
    out = search(torch.rand(3, 1, 4, 4))
    assert out.rel_output_residual.max() == 0  # the muted head hides it from the output ...
    assert out.rel_first_layer_residual.max() > 0.1  # ... but W1's output moved
    assert not out.exact and "first-layer residual" in out.reason
    exact, _ = exactness(plan, None, torch.tensor([1e-7]), torch.tensor([1e-7]))
    assert exact  # both at rounding level: exact
    assert not exactness(plan, None, torch.tensor([1e-7]), torch.tensor([float("nan")]))[0]


class CountingDetector(nn.Module):
    """A detector-shaped toy: the number of detections depends on the raw image, outside W1's view."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 4)

    def forward(self, x):
        features = self.embed(x.flatten(1))  # (B, 4)
        out = []
        for f, image in zip(features, x):
            k = 1 + int(image.sum() > 8.0)  # one box, or two for bright images
            out.append({"boxes": f[:4].repeat(k, 1), "labels": torch.zeros(k, dtype=torch.long),
                        "scores": f[:1].sigmoid().repeat(k)})
        return out


def test_different_numbers_of_detections_are_a_mismatch_not_skipped(monkeypatch):
    torch.manual_seed(0)
    model = CountingDetector().eval()
    images = torch.full((2, 1, 4, 4), 0.49)  # sum 7.84: one detection each
    search = NullspaceSearch(model, beta=2.0, mode="repeat")
    plan = search.plan((1, 4, 4))
    phi = plan.basis.sum(1) @ plan.basis  # the kernel part of the all-ones image: brightens the image
    phi = (phi / phi.norm())[None]
    monkeypatch.setattr(search, "plan", lambda shape: dataclasses.replace(plan, basis=phi))
    out = search(images)
    assert (out.images.flatten(1).sum(1) > 8.0).all()  # two detections now
    assert out.rel_first_layer_residual.max() <= TARGET and out.rel_output_residual.max() <= TARGET
    assert out.mismatched == [["boxes", "labels", "scores"]] * 2 and (out.agreement == 0).all()
    assert not out.exact and "output structure" in out.reason  # the residual alone said "exact"
    extra = compare({"labels": torch.zeros(1)}, {"labels": torch.zeros(1), "boxes": torch.zeros(1, 4)})
    assert extra.mismatched == ["boxes"] and extra.agreement == 0.0  # a leaf only the collision has


def test_distinct_count_needs_the_minimum_distance():
    to_adv = torch.tensor([[1.0, 1.0, 1e-10]])  # the third example barely moved from x′
    pairwise = torch.tensor([[[0.0, 1.9e-10, 1.0], [1.9e-10, 0.0, 1.0], [1.0, 1.0, 0.0]]])
    assert count_distinct(to_adv, pairwise, MIN_DISTANCE) == 1  # the first two are one picture
    assert count_distinct(to_adv, pairwise, 1e-12) == 3  # a looser minimum counts round-off as distinct
    far = torch.tensor([[[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]])
    assert count_distinct(torch.ones(1, 3), far, MIN_DISTANCE) == 3


def test_colliding_adversarials_that_barely_moved_are_not_counted():
    torch.manual_seed(0)
    model = create_model("mlp").eval()
    images, labels = load_tensors("mnist5k", "test", n=2)
    tiny = colliding_adversarial(model, images, labels, eps=0.1, collisions=3, beta=1e-6, mode="random")
    assert tiny.count == 0 and tiny.min_distance == pytest.approx(1 / 255)
    assert len(tiny.distances_to_adversarial) == 6 and max(tiny.distances_to_adversarial) < MIN_DISTANCE
    assert [len(row) for row in tiny.pairwise_l2] == [3, 3]  # K(K−1)/2 pairs per image
    real = colliding_adversarial(model, images, labels, eps=0.1, collisions=3, beta=1.0, mode="random")
    assert real.count == 6 and min(min(row) for row in real.pairwise_l2) >= MIN_DISTANCE
    assert real.to_dict()["min_pairwise_l2"] == pytest.approx(min(min(row) for row in real.pairwise_l2))
    with pytest.raises(ValueError, match="finite"):
        colliding_adversarial(model, images, labels, eps=math.inf)


def test_valid_image_search_reports_found_and_relative_distance():
    torch.manual_seed(0)
    model = create_model("mlp").eval()
    images, _ = load_tensors("mnist5k", "test", n=8)
    valid = evaluate_nullspace(model, images, valid_image=True, mode="random")
    median = float(torch.pdist(images.flatten(1).double()).median())
    assert valid.valid_found and valid.valid_count == 8 and valid.median_image_distance == pytest.approx(median)
    assert valid.relative_distance == pytest.approx(valid.l2_mean / median)
    assert 0 < valid.relative_distance < 1  # β = 1 against digits ~10 apart
    raw = evaluate_nullspace(model, images, valid_image=False, mode="repeat")
    assert raw.exact and raw.min_pixel < 0  # exact, but not images: the kernel vector leaves [0, 1]
    assert raw.valid_count < raw.n and raw.valid_found == (raw.valid_count > 0)
    single = evaluate_nullspace(model, images[:1], valid_image=True)
    assert single.relative_distance is None and single.median_image_distance is None


@pytest.mark.parametrize("beta", [math.inf, math.nan, -1.0, 0.0])
def test_non_finite_or_non_positive_beta_is_refused(beta):
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        evaluate_nullspace(create_model("mlp").eval(), torch.rand(2, 1, 28, 28), beta=beta)
