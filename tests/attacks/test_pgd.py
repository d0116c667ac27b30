"""PGD (Madry et al. 2018) against torchattacks' reference implementation, plus its invariants."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from regcollide.attacks.pgd.attack import PGD
from regcollide.data import load_tensors

REFERENCE = {"linf": (torchattacks.PGD, 0.08, 0.01), "l2": (torchattacks.PGDL2, 1.2, 0.15)}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_torchattacks_without_random_start(trained_mlp, mnist_test, norm):
    """Same ε, α, steps, no random start: identical adversarial predictions and robust accuracy.

    torchattacks returns the last iterate, so the exact comparison uses ``early_stop=False`` (last-iterate
    semantics). With early stopping (the default) a sample counts as broken if any iterate fools the model,
    so its success set contains torchattacks' and the unbroken samples end with the same prediction.
    """
    images, labels = mnist_test
    reference, eps, alpha = REFERENCE[norm]
    ref_adv = reference(trained_mlp, eps=eps, alpha=alpha, steps=10, random_start=False)(images, labels)
    with torch.no_grad():
        ref_pred = trained_mlp(ref_adv).argmax(1)

    ours = PGD(trained_mlp, eps=eps, alpha=alpha, steps=10, norm=norm, random_start=False,
               batch_size=len(images), early_stop=False)(images, labels)
    with torch.no_grad():
        pred = trained_mlp(ours.adv).argmax(1)
    assert torch.equal(pred, ref_pred)
    assert torch.equal(ours.success, ref_pred != labels)
    assert (ref_pred == labels).float().mean() == (~ours.success).float().mean()
    assert 0.0 < (~ours.success).float().mean() < 0.9  # the comparison is not vacuous

    early = PGD(trained_mlp, eps=eps, alpha=alpha, steps=10, norm=norm, random_start=False,
                batch_size=len(images))(images, labels)
    assert bool((early.success | (ref_pred == labels)).all())  # every torchattacks success is ours too
    with torch.no_grad():
        early_pred = trained_mlp(early.adv).argmax(1)
    assert torch.equal(early_pred[~early.success], labels[~early.success])
    assert torch.equal(early_pred != labels, early.success)


def test_random_start_robust_accuracy_close_to_torchattacks(trained_mlp, mnist_test):
    images, labels = mnist_test
    torch.manual_seed(0)
    ref_adv = torchattacks.PGD(trained_mlp, eps=0.08, alpha=0.01, steps=10, random_start=True)(images, labels)
    with torch.no_grad():
        ref_acc = (trained_mlp(ref_adv).argmax(1) == labels).float().mean().item()
    ours = PGD(trained_mlp, eps=0.08, alpha=0.01, steps=10, random_start=True, early_stop=False, seed=1)
    acc = (~ours(images, labels).success).float().mean().item()
    assert abs(acc - ref_acc) <= 0.02, (acc, ref_acc)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_adversarial_examples_stay_in_ball_and_box(trained_mlp, norm, eps):
    images, labels = load_tensors("mnist5k", "test", n=300)
    out = PGD(trained_mlp, eps=eps, steps=8, norm=norm, restarts=2, batch_size=64)(images, labels)
    delta = (out.adv - images).reshape(len(images), -1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(out.adv.min()) >= 0 and float(out.adv.max()) <= 1
    with torch.no_grad():
        clean = trained_mlp(images).argmax(1) == labels
        adv_pred = trained_mlp(out.adv).argmax(1)
    assert torch.equal(out.success, adv_pred != labels)  # success describes the returned example
    assert (~out.success).float().mean() <= clean.float().mean()  # robust accuracy <= clean accuracy
    assert bool((out.first_success_step[~clean] == 0).all())  # already misclassified at the start...
    assert bool((out.first_success_step[clean & out.success] >= 0).all())
    assert bool((out.first_success_step[clean & out.success] <= 2 * 8).all())
    assert bool((out.first_success_step[~out.success] == -1).all())


def test_per_sample_eps_and_targeted(trained_mlp):
    images, labels = load_tensors("mnist5k", "test", n=200)
    eps = torch.where(torch.arange(200) % 2 == 0, 0.03, 0.2)  # (N,)
    out = PGD(trained_mlp, eps=0.1, steps=10)(images, labels, eps=eps)
    assert bool(((out.adv - images).abs().amax((1, 2, 3)) <= eps + 1e-6).all())
    assert out.success[eps == 0.2].float().mean() > out.success[eps == 0.03].float().mean()

    targets = (labels + 1) % 10
    hit = PGD(trained_mlp, eps=0.2, steps=20, targeted=True)(images, labels, target_labels=targets)
    with torch.no_grad():
        pred = trained_mlp(hit.adv).argmax(1)
    assert torch.equal(hit.success, pred == targets)
    assert hit.success.float().mean() > 0.5


def test_restores_training_mode_and_rejects_bad_input(trained_mlp):
    images, labels = load_tensors("mnist5k", "test", n=16)
    trained_mlp.train()
    try:
        PGD(trained_mlp, steps=2)(images, labels)
        assert trained_mlp.training
    finally:
        trained_mlp.eval()
    with pytest.raises(ValueError, match="norm"):
        PGD(trained_mlp, norm="l3")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(trained_mlp)(images * 2 - 0.5, labels)
    with pytest.raises(ValueError, match="random_start"):
        PGD(trained_mlp, restarts=3, random_start=False)
    with pytest.raises(ValueError, match="target_labels"):
        PGD(trained_mlp, targeted=True)(images, labels)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 0.0])
def test_budgets_must_be_finite_and_positive(trained_mlp, mnist_test, bad):
    images, labels = mnist_test[0][:4], mnist_test[1][:4]
    with pytest.raises(ValueError, match="finite number > 0"):
        PGD(trained_mlp, eps=bad)
    per_sample = torch.tensor([0.1, bad, 0.1, 0.1])
    with pytest.raises(ValueError, match="finite number > 0"):
        PGD(trained_mlp, eps=0.1, steps=2)(images, labels, eps=per_sample)


def test_target_labels_are_checked(trained_mlp, mnist_test):
    images, labels = mnist_test[0][:4], mnist_test[1][:4]
    attack = PGD(trained_mlp, eps=0.1, steps=2, targeted=True)
    with pytest.raises(ValueError, match="integer class indices"):
        attack(images, labels, target_labels=labels.float())
    with pytest.raises(ValueError, match="integer class indices"):
        attack(images, labels, target_labels=labels[:3])
    with pytest.raises(ValueError, match=">= 0"):
        attack(images, labels, target_labels=torch.tensor([1, -1, 2, 3]))
