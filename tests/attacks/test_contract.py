"""The evaluator contract, checked for every evaluator: each is called on a batch of images in [0, 1] and
labels and returns a typed result with ``to_dict()`` and typed flags. For each one: the model's train/eval
mode is restored, images outside [0, 1] are refused with a ValueError, the result is JSON-serializable
with every flag a ``Flag`` dict, and the same seed gives the same result."""

from __future__ import annotations

import json

import pytest
import torch

from regcollide.attacks.autoattack import evaluate_autoattack
from regcollide.attacks.checks import Flag
from regcollide.attacks.nullspace.search import evaluate_nullspace
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.attacks.polytope.evaluate import evaluate_polytope
from regcollide.audit.spectrum import audit

# name -> evaluator(model, images, labels, seed) -> result; budgets as small as still exercise the method.
EVALUATORS = {
    "pgd_ease": lambda m, x, y, seed: evaluate_pgd(m, x, y, eps=0.1, steps=5, bisection_steps=2, check_n=8,
                                                   seed=seed),
    # L2 ε = 3 breaks every digit with APGD-CE, so the later attacks have nothing left (fast).
    "autoattack": lambda m, x, y, seed: evaluate_autoattack(m, x, y, norm="l2", eps=3.0, seed=seed),
    "nullspace": lambda m, x, y, seed: evaluate_nullspace(m, x, y, n=4, valid_image=True, seed=seed),
    "polytope": lambda m, x, y, seed: evaluate_polytope(m, x, y, vertices=2, samples=16, targets=2, steps=30,
                                                        seed=seed),
}
TAKES_IMAGES = list(EVALUATORS)
EVALUATORS["audit"] = lambda m, x, y, seed: audit(m, tuple(x.shape[1:]))  # a function of the weights only


@pytest.fixture(scope="module")
def batch(mnist_test):
    images, labels = mnist_test
    return images[:8], labels[:8]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # AutoAttack's tiny batches contend badly with other jobs on more threads
    yield
    torch.set_num_threads(threads)


def _strip_timings(d):
    """The result without wall-clock fields, which legitimately differ between two runs."""
    if isinstance(d, dict):
        return {k: _strip_timings(v) for k, v in d.items() if k not in ("seconds", "timings")}
    if isinstance(d, list):
        return [_strip_timings(v) for v in d]
    return d


@pytest.mark.parametrize("name", list(EVALUATORS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mode_is_restored(name, mode, trained_mlp, batch, one_thread):
    trained_mlp.train(mode == "train")
    try:
        EVALUATORS[name](trained_mlp, *batch, seed=0)
        assert trained_mlp.training == (mode == "train")
        assert all(m.training == (mode == "train") for m in trained_mlp.modules())
    finally:
        trained_mlp.eval()


@pytest.mark.parametrize("name", TAKES_IMAGES)
@pytest.mark.parametrize("shift", [-0.5, 255.0, float("nan")])
def test_images_outside_the_unit_box_are_refused(name, shift, trained_mlp, batch):
    images, labels = batch
    bad = images.clone()
    bad[0, 0, 0, 0] = shift
    with pytest.raises(ValueError):
        EVALUATORS[name](trained_mlp, bad, labels, seed=0)


@pytest.mark.parametrize("name", list(EVALUATORS))
def test_result_is_json_with_typed_flags_and_deterministic(name, trained_mlp, batch, one_thread):
    first = EVALUATORS[name](trained_mlp, *batch, seed=3)
    second = EVALUATORS[name](trained_mlp, *batch, seed=3)
    assert all(isinstance(f, Flag) for f in getattr(first, "flags", []))
    data = json.loads(json.dumps(first.to_dict()))
    for flag in data.get("flags", []):
        assert Flag.from_dict(flag).to_dict() == flag
    assert _strip_timings(data) == _strip_timings(json.loads(json.dumps(second.to_dict())))
