"""Unit behaviour of the loss-replacing entries (TRADES, PGD-AT, distillation) and spectral normalization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_registry import tiny_batch, tiny_cnn
from torch import nn

from regcollide.regularizers import build_regularizer
from regcollide.regularizers.adversarial import kl_pgd
from regcollide.regularizers.distill import feature_distance_loss


def test_kl_pgd_stays_in_ball_and_box_and_restores_mode():
    model = tiny_cnn().train()
    images = tiny_batch()["image"]
    target = F.softmax(model(images), dim=1).detach()
    adv = kl_pgd(model, images, target, eps=0.05, alpha=0.02, steps=5)
    assert model.training
    assert (adv - images).abs().max() <= 0.05 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    before = F.kl_div(F.log_softmax(model(images), 1), target, reduction="sum")
    after = F.kl_div(F.log_softmax(model(adv), 1), target, reduction="sum")
    assert after > before  # the inner loop really ascends the KL


def test_trades_with_beta_zero_is_cross_entropy():
    model = tiny_cnn()
    batch = tiny_batch()
    outputs = model(batch["image"])
    term = build_regularizer("trades", beta=0.0, steps=1)(model, batch, outputs)
    assert term.item() == pytest.approx(F.cross_entropy(outputs, batch["label"]).item(), rel=1e-6)


def test_pgd_at_loss_is_at_least_clean_loss_and_restores_mode():
    model = tiny_cnn().train()
    batch = tiny_batch()
    outputs = model(batch["image"])
    reg = build_regularizer("pgd_at", eps=0.2, steps=5)
    adv = reg.adversarial(model, batch["image"], batch["label"])
    assert model.training
    assert (adv - batch["image"]).abs().max() <= 0.2 + 1e-6
    with torch.no_grad():
        model.eval()
        clean_loss = F.cross_entropy(model(batch["image"]), batch["label"])
        adv_loss = F.cross_entropy(model(adv), batch["label"])
    assert adv_loss > clean_loss
    assert torch.isfinite(reg(model.train(), batch, outputs))


def test_spectral_norm_bounds_sigma_max_and_finalize_restores_plain_weights():
    model = tiny_cnn()
    keys = set(model.state_dict())
    reg = build_regularizer("spectral", n_power_iterations=30)
    model = reg.setup(model)
    model.train()
    model(tiny_batch()["image"])  # power iteration runs in training-mode forwards
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            sigma = torch.linalg.svdvals(module.weight.detach().reshape(module.weight.shape[0], -1)).max()
            assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    assert reg(model, tiny_batch(), torch.zeros(6, 3)).item() == 0.0
    model = reg.finalize(model)
    assert set(model.state_dict()) == keys
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert torch.linalg.svdvals(module.weight.detach()).max().item() == pytest.approx(1.0, abs=1e-3)


def counting_teacher() -> tuple[nn.Module, list[int]]:
    teacher, calls = tiny_cnn(), []
    teacher.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    return teacher, calls


def test_distill_hinton_reference_and_identical_student_costs_nothing():
    teacher = tiny_cnn()
    batch = tiny_batch()
    reg = build_regularizer("distill", teacher=teacher, temperature=2.0, alpha=1.0, feature_weight=1.0)
    student = reg.setup(tiny_cnn())  # same seed: the student *is* the teacher
    outputs = student(batch["image"])
    assert reg(student, batch, outputs).item() == pytest.approx(0.0, abs=1e-6)

    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3))
    reg = build_regularizer("distill", teacher=teacher, temperature=2.0, alpha=0.7)
    other = reg.setup(other)
    outputs = other(batch["image"])
    with torch.no_grad():
        t_logits = teacher(batch["image"])
    p_t, log_p_t = F.softmax(t_logits / 2, 1), F.log_softmax(t_logits / 2, 1)
    kl = (p_t * (log_p_t - F.log_softmax(outputs / 2, 1))).sum(1).mean()
    expected = 0.7 * 4 * kl + 0.3 * F.cross_entropy(outputs, batch["label"])
    assert reg(other, batch, outputs).item() == pytest.approx(expected.item(), rel=1e-5)


def test_distill_cache_skips_teacher_and_detects_augmentation():
    teacher, calls = counting_teacher()
    reg = build_regularizer("distill", teacher=teacher, feature_weight=0.5)
    student = reg.setup(nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3)))
    batch = tiny_batch()
    first = reg(student, batch, student(batch["image"]))
    second = reg(student, batch, student(batch["image"]))
    assert calls == [6] and second.item() == pytest.approx(first.item(), rel=1e-6)
    flipped = dict(batch, image=batch["image"].flip(-1))  # same indices, different pixels
    with pytest.warns(UserWarning, match="augmentation"):
        reg(student, flipped, student(flipped["image"]))
    assert calls == [6, 6] and not reg.cache_teacher
    uncached = build_regularizer("distill", teacher=teacher, cache_teacher=False)
    uncached.setup(student)
    uncached(student, batch, student(batch["image"]))
    uncached(student, batch, student(batch["image"]))
    assert calls == [6, 6, 6, 6]


def test_distill_teacher_is_frozen_and_in_eval_mode():
    teacher = tiny_cnn().train()
    reg = build_regularizer("distill", teacher=teacher)
    assert not reg.teacher.training and not any(p.requires_grad for p in reg.teacher.parameters())


def test_feature_distance_loss_ignores_scale_and_width_but_not_collisions():
    features = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    rotation, _ = torch.linalg.qr(torch.randn(7, 7, generator=torch.Generator().manual_seed(1)))
    wider = 3.0 * torch.cat([features, torch.zeros(8, 2)], dim=1) @ rotation  # same geometry, other width
    assert feature_distance_loss(wider, features).item() == pytest.approx(0.0, abs=1e-7)
    collided = features.clone()
    collided[1] = collided[0]  # the student merges two inputs the teacher separates
    assert feature_distance_loss(collided, features).item() > 1e-3


@pytest.mark.parametrize("robust", ["ard", "rslad"])
def test_robust_distillation_tracks_give_finite_gradients(robust):
    reg = build_regularizer("distill", teacher=tiny_cnn(), robust=robust, eps=0.1, steps=2)
    student = reg.setup(nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3)))
    batch = tiny_batch()
    term = reg(student, batch, student(batch["image"]))
    term.backward()
    assert torch.isfinite(term) and term.item() > 0
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


def test_feature_distance_loss_gradcheck():
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(5, 3, dtype=torch.float64, generator=generator).requires_grad_(True)
    teacher = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(lambda s: feature_distance_loss(s, teacher), (student,))
