"""Null-space search beyond classifiers: segmentation, detection, colliding adversarial examples, DeiT."""

from __future__ import annotations

import pytest
import torch

from regcollide.attacks.nullspace.adversarial import colliding_adversarial
from regcollide.attacks.nullspace.outputs import compare, split_output
from regcollide.attacks.nullspace.search import evaluate_nullspace
from regcollide.data import load_tensors
from regcollide.models import create_model

TARGET = 1e-5


def test_structural_comparison_of_nested_outputs():
    detections = [{"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 2]), "scores": torch.tensor([.9, .8])},
                  {"boxes": torch.ones(1, 4), "labels": torch.tensor([3]), "scores": torch.tensor([.7])}]
    other = [{"boxes": torch.ones(2, 4) * 1.5, "labels": torch.tensor([1, 2]), "scores": torch.tensor([.9, .8])},
             {"boxes": torch.ones(2, 4), "labels": torch.tensor([3, 3]), "scores": torch.tensor([.7, .1])}]
    ref, new = split_output(detections, 2), split_output(other, 2)
    same_count = compare(ref[0], new[0])
    assert same_count.max_abs == pytest.approx(0.5) and same_count.agreement == 1.0 and not same_count.mismatched
    more = compare(ref[1], new[1])  # a different number of detections is reported, not compared
    assert sorted(more.mismatched) == ["boxes", "labels", "scores"] and more.agreement == 0.0
    seg = {"out": torch.zeros(1, 2, 2, 2), "aux": torch.zeros(1, 2, 2, 2)}
    seg_other = {"out": torch.zeros(1, 2, 2, 2), "aux": torch.zeros(1, 2, 2, 2)}
    seg_other["out"][0, 1, 0, 0] = 1.0  # one pixel of four changes class
    assert compare(split_output(seg, 1)[0], split_output(seg_other, 1)[0]).agreement == pytest.approx(0.75)


@pytest.mark.slow
def test_segmentation_model_is_compared_per_pixel():
    torch.manual_seed(0)
    model = create_model("tv:lraspp_mobilenet_v3_large", num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = evaluate_nullspace(model, images).to_dict()
    # MobileNetV3's stem is a 3×3 stride-2 padded conv: not patchify, so never claimed exact
    assert result["kind"] in ("approximate", "periodic") and result["exact"] is (result["kind"] == "periodic")
    assert result["normalization_folded"] and result["structure_mismatches"] == 0
    assert 0.0 <= result["prediction_agreement"] <= 1.0 and result["max_rel_first_layer_residual"] > 0


@pytest.mark.slow
def test_detection_model_in_eval_mode():
    torch.manual_seed(0)
    model = create_model("tv:fasterrcnn_mobilenet_v3_large_fpn", num_classes=3, min_size=64, max_size=64,
                         box_score_thresh=0.0).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result, out = evaluate_nullspace(model, images, return_output=True)
    assert not result.exact and result.kind == "approximate" and result.normalization_folded  # own transform
    assert set(out.reference_outputs[0]) == {"boxes", "labels", "scores"}
    assert len(out.reference_outputs[0]["labels"]) > 0  # with score threshold 0 there is something to compare
    assert result.structure_mismatches == sum(bool(m) for m in out.mismatched)
    assert model.training is False


def test_detection_resize_is_refused_with_advice():
    model = create_model("tv:fasterrcnn_mobilenet_v3_large_fpn", num_classes=3).eval()  # resizes to 800
    with pytest.raises(ValueError, match="min_size/max_size"):
        evaluate_nullspace(model, torch.rand(1, 3, 64, 64))


def test_colliding_adversarial_examples_stay_in_ball_and_agree():
    torch.manual_seed(0)
    model = create_model("mlp").eval()
    images, labels = load_tensors("mnist5k", "test", n=3)
    eps, k = 0.1, 3
    out = colliding_adversarial(model, images, labels, eps=eps, collisions=k, beta=1.0, mode="random")
    clean = images.repeat_interleave(k, 0)
    assert (out.images - clean).abs().max() <= eps + 1e-6  # float32 round-off of x ± ε only
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.exact and out.count == 3 * k and out.min_pairwise_l2 > 0.1
    adv_pred = model(out.adversarial).argmax(1).repeat_interleave(k)
    assert torch.equal(model(out.images).argmax(1), adv_pred) and out.agreement_with_adversarial == 1.0
    assert out.max_rel_output_residual <= TARGET


def test_colliding_adversarial_accepts_any_attack_callable():
    torch.manual_seed(0)
    model = create_model("mlp").eval()
    images, labels = load_tensors("mnist5k", "test", n=2)

    def fgsm(x, y):  # a one-step attack given as a plain callable
        x = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return (x + 0.05 * x.grad.sign()).clamp(0, 1).detach()

    out = colliding_adversarial(model, images, labels, eps=0.05, attack=fgsm, collisions=2)
    assert (out.images - images.repeat_interleave(2, 0)).abs().max() <= 0.05 + 1e-6
    assert out.agreement_with_adversarial == 1.0


@pytest.mark.slow
def test_deit_tiny_at_224_is_exact():
    torch.manual_seed(0)
    model = create_model("timm:deit_tiny_patch16_224").eval()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = evaluate_nullspace(model, images, beta=1.0).to_dict()
    assert result["exact"] and result["kind"] == "patchify" and result["nullity"] == 3 * 16 * 16 - 192
    assert result["max_rel_output_residual"] <= TARGET and result["prediction_agreement"] == 1.0
    assert result["noise_min_rel_output_residual"] >= 1000 * result["max_rel_output_residual"]
