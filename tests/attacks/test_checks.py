"""Sanity flags fire on deliberately broken models and stay quiet on a healthy one."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcollide.attacks import checks
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.data import load_tensors


class Wrapped(nn.Module):
    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):  # (B, C, H, W) -> (B, K)
        if self.kind == "softmax":
            return self.net(x).softmax(1)
        if self.kind == "round":  # a non-differentiable quantization step: zero gradient almost everywhere
            return self.net(torch.round(x * 4) / 4)
        return self.net(F.dropout(x, 0.3, training=True))  # dropout left on in eval mode


def ids(flags):
    return {f.id for f in flags}


@pytest.fixture(scope="module")
def batch():
    return load_tensors("mnist5k", "test", n=128)


def test_healthy_model_has_no_flags(trained_mlp, batch):
    assert checks.model_checks(trained_mlp, *batch) == []
    result = evaluate_pgd(trained_mlp, *batch, eps=0.1, steps=10, bisection_steps=1)
    assert result.flags == []


def test_softmax_outputs_are_flagged(trained_mlp, batch):
    flags = checks.check_probability_outputs(Wrapped(trained_mlp, "softmax"), batch[0])
    assert ids(flags) == {checks.PROBABILITY_OUTPUTS} and "softmax" in flags[0].message
    result = evaluate_pgd(Wrapped(trained_mlp, "softmax"), *batch, eps=0.1, steps=10, bisection_steps=1)
    assert checks.PROBABILITY_OUTPUTS in ids(result.flags)


def test_non_differentiable_step_is_flagged_and_still_reported(trained_mlp, batch):
    model = Wrapped(trained_mlp, "round")
    assert ids(checks.check_zero_gradients(model, *batch)) == {checks.ZERO_GRADIENTS}
    images, labels = load_tensors("mnist5k", "test", n=48)  # PGD never succeeds here, so every run costs its full steps
    result = evaluate_pgd(model, images, labels, eps=0.1, steps=5, bisection_steps=0)
    assert {checks.ZERO_GRADIENTS, checks.LARGE_EPS} <= ids(result.flags)
    assert result.robust_acc == result.clean_acc > 0.9  # the (meaningless) number is still reported


def test_dropout_left_on_is_flagged(trained_mlp, batch):
    model = Wrapped(trained_mlp, "dropout")
    assert ids(checks.check_randomness(model, batch[0])) == {checks.RANDOMIZED_FORWARD}
    result = evaluate_pgd(model, *batch, eps=0.1, steps=10, bisection_steps=1)
    assert checks.RANDOMIZED_FORWARD in ids(result.flags)


def test_accuracy_rules():
    assert checks.check_monotone([0, 0.1, 0.2], [0.9, 0.5, 0.1]) == []
    flags = checks.check_monotone([0.2, 0.0, 0.1], [0.6, 0.9, 0.5])  # order of the inputs does not matter
    assert ids(flags) == {checks.NON_MONOTONE} and "0.1" in flags[0].message
    assert checks.check_large_eps(0.0, 1.0) == []
    assert ids(checks.check_large_eps(0.3, 1.0)) == {checks.LARGE_EPS}
    assert checks.check_stability(0.50, 0.49, "steps", tol=0.02) == []
    assert ids(checks.check_stability(0.50, 0.40, "steps")) == {checks.UNSTABLE_STEPS}
    assert ids(checks.check_stability(0.50, 0.40, "restarts")) == {checks.UNSTABLE_RESTARTS}


def test_eval_mode_is_restored(trained_mlp, batch):
    trained_mlp.train()
    try:
        checks.model_checks(trained_mlp, *batch)
        assert trained_mlp.training
    finally:
        trained_mlp.eval()


def test_flag_round_trips_through_json_and_refuses_bad_fields():
    flag = checks.Flag(checks.LARGE_EPS, "accuracy 0.3 > 0 at eps=1")
    assert flag.severity == "warning"
    back = checks.Flag.from_dict(json.loads(json.dumps(flag.to_dict())))
    assert back == flag and hash(back) == hash(flag)
    assert checks.Flag.from_dict({"id": "x", "message": "m"}).severity == "warning"  # older entries
    for bad in ("not_exact", {"id": "x"}, {"id": "", "message": "m"}, {"id": "x", "message": "m", "severity": "?"}):
        with pytest.raises(ValueError):
            checks.Flag.from_dict(bad)


def test_merge_flags_keeps_each_distinct_flag_once_in_order():
    a, b = checks.Flag("a", "first"), checks.Flag("b", "second", "info")
    merged = checks.merge_flags([a, b.to_dict()], [b, a.to_dict()], [])
    assert merged == [a, b] and all(isinstance(f, checks.Flag) for f in merged)
    with pytest.raises(ValueError):
        checks.merge_flags([a], ["a string flag"])  # strings never mix in silently


def test_check_results_serialize_as_flag_dicts(trained_mlp, batch):
    result = evaluate_pgd(Wrapped(trained_mlp, "softmax"), *batch, eps=0.1, steps=10, bisection_steps=1)
    flags = json.loads(json.dumps(result.to_dict()))["flags"]
    assert flags and all(set(f) == {"id", "message", "severity"} for f in flags)
