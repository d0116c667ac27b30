"""Effect tests that can fail: a few hundred mnist5k steps with each regularizer against ERM, same seed.

All runs share one small MLP (784-64-64-10, Li et al.'s MLP at width 0.25), Adam, batch 64, 300 steps, and
draw the same batches in the same order; only the regularizer differs.
"""

from __future__ import annotations

import pytest
import torch
from _train_utils import mnist_tensors, predictions, single_thread, train

from regcollide.audit.matrices import iter_weight_layers, layer_matrix
from regcollide.models import create_model
from regcollide.regularizers import build_regularizer
from regcollide.regularizers.decorrelation import max_positive_cosine

STEPS = 300
WIDTH = 0.25
EPS = 0.1


def student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", width=WIDTH)


@pytest.fixture(scope="module")
def erm_model() -> torch.nn.Module:
    return train(student(), [], STEPS)


def mean_condition_ratio(model: torch.nn.Module) -> float:
    """Mean σ_min/σ_max over the weight layers, from a full SVD (independent of the penalty's code)."""
    ratios = []
    for layer in iter_weight_layers(model):
        sigma = torch.linalg.svdvals(layer_matrix(layer).detach())
        ratios.append((sigma.min() / sigma.max()).item())
    return sum(ratios) / len(ratios)


def mean_max_positive_cosine(model: torch.nn.Module) -> float:
    values = [max_positive_cosine(layer_matrix(layer).detach()).item() for layer in iter_weight_layers(model)]
    return sum(values) / len(values)


def accuracy(model: torch.nn.Module) -> float:
    images, labels = mnist_tensors("test")
    return (predictions(model, images) == labels).float().mean().item()


def robust_accuracy(model: torch.nn.Module, n: int = 300) -> float:
    """Share of the first n test images classified correctly *and* not broken by L∞ PGD-20 at ε = 0.1."""
    from regcollide.attacks.pgd.attack import PGD

    images, labels = mnist_tensors("test")
    images, labels = images[:n], labels[:n]
    with single_thread():
        correct = predictions(model, images) == labels
        broken = PGD(model, eps=EPS, steps=20, random_start=True, seed=0)(images, labels).success
    return (correct & ~broken).float().mean().item()


def test_singular_penalty_raises_condition_ratio(erm_model):
    model = train(student(), [(1.0, build_regularizer("singular", measure="ratio"))], STEPS)
    erm, regularized = mean_condition_ratio(erm_model), mean_condition_ratio(model)
    print(f"mean sigma_min/sigma_max: ERM {erm:.3f}, singular {regularized:.3f}")
    assert regularized > erm + 0.1
    assert accuracy(model) > 0.85  # it still learns the task


def test_decorrelation_lowers_max_positive_cosine(erm_model):
    model = train(student(), [(1.0, build_regularizer("decorrelation", kappa=10.0))], STEPS)
    erm, regularized = mean_max_positive_cosine(erm_model), mean_max_positive_cosine(model)
    print(f"mean max positive cosine: ERM {erm:.3f}, decorrelation {regularized:.3f}")
    assert regularized < erm - 0.05
    assert accuracy(model) > 0.85


def test_distilled_narrow_student_agrees_with_wide_teacher(trained_mlp):
    reg = build_regularizer("distill", teacher=trained_mlp, temperature=4.0, alpha=0.9, feature_weight=0.5)
    model = train(student(), [(1.0, reg)], STEPS)
    images, _ = mnist_tensors("test")
    agreement = (predictions(model, images) == predictions(trained_mlp, images)).float().mean().item()
    print(f"student/teacher agreement on 1000 test images: {agreement:.3f}")
    assert agreement >= 0.90


@pytest.mark.parametrize("name, params", [("pgd_at", {"eps": EPS, "steps": 5}),
                                          ("trades", {"eps": EPS, "steps": 5, "beta": 6.0})])
def test_adversarial_training_raises_pgd_robust_accuracy(erm_model, name, params):
    model = train(student(), [(1.0, build_regularizer(name, **params))], STEPS)
    erm, robust = robust_accuracy(erm_model), robust_accuracy(model)
    print(f"PGD-20 robust accuracy at eps={EPS}: ERM {erm:.3f}, {name} {robust:.3f}")
    assert robust > erm + 0.2
