"""AutoAttack (standard, via pyautoattack) on CPU: runs, is at least as strong as PGD, reports a breakdown."""

from __future__ import annotations

import pytest
import torch

from regcollide.attacks.autoattack import evaluate_autoattack
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.data import load_tensors


@pytest.fixture
def one_thread():
    """FAB-T and Square run thousands of tiny-batch iterations; two threads on a shared 2-core machine
    made them ~15x slower than one (measured: 366 s against 22 s), so these tests use one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # ~25 s idle: FAB-T and Square cost a fixed number of iterations once any point survives
def test_autoattack_is_at_least_as_strong_as_pgd(trained_mlp, one_thread):
    """ε = 0.1 leaves a few of the 100 points robust to PGD, so every attack of the ensemble runs."""
    images, labels = load_tensors("mnist5k", "test", n=100)
    rng = torch.get_rng_state()
    aa = evaluate_autoattack(trained_mlp, images, labels, norm="linf", eps=0.1, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the package reseeds the global RNG; we restore it
    pgd = evaluate_pgd(trained_mlp, images, labels, eps=0.1, steps=40, checks=False, bisection_steps=0)
    assert aa.clean_acc == pytest.approx(pgd.clean_acc)
    assert aa.robust_acc <= pgd.robust_acc <= pgd.clean_acc
    assert [b["attack"] for b in aa.breakdown] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa.breakdown[0]["attacked"] == round(aa.clean_acc * 100)
    accs = [b["robust_acc"] for b in aa.breakdown]
    assert all(a >= b for a, b in zip(accs, accs[1:])) and accs[-1] == aa.robust_acc
    assert aa.version == "standard" and aa.seed == 0 and aa.n == 100 and aa.package_version
    assert set(aa.to_dict()) >= {"robust_acc", "clean_acc", "breakdown", "n", "seed", "version"}


def test_autoattack_l2_and_bad_norm(trained_mlp, one_thread):
    images, labels = load_tensors("mnist5k", "test", n=50)
    aa = evaluate_autoattack(trained_mlp, images, labels, norm="l2", eps=3.0, seed=1)  # APGD-CE breaks all
    assert aa.robust_acc == 0 < aa.clean_acc and aa.norm == "l2"
    assert [b["attacked"] for b in aa.breakdown[1:]] == [0, 0, 0]  # nothing left for the later attacks
    with pytest.raises(ValueError, match="norm"):
        evaluate_autoattack(trained_mlp, images, labels, norm="l1")
