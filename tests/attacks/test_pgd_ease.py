"""PGD ease: ε* bisection, censoring, the curve and the JSON contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from regcollide.attacks.checks import Flag
from regcollide.attacks.pgd.attack import PGD
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.data import load_tensors
from regcollide.io import write_json

CONTRACT = ("norm eps steps restarts clean_acc robust_acc median_eps_star mean_steps_to_success curve "
            "flags").split()
SETTINGS = {"eps": 0.05, "steps": 10, "bisection_steps": 5, "seed": 3}


@pytest.fixture(scope="module")
def ease(trained_mlp):
    images, labels = load_tensors("mnist5k", "test", n=200)
    return evaluate_pgd(trained_mlp, images, labels, checks=False, **SETTINGS), images, labels


def test_eps_star_agrees_with_the_fixed_eps_run(ease, trained_mlp):
    result, images, labels = ease
    with torch.no_grad():
        correct = trained_mlp(images).argmax(1) == labels
    # the same settings reproduce evaluate_pgd's fixed-ε run on the correctly classified samples
    fixed = PGD(trained_mlp, eps=SETTINGS["eps"], steps=SETTINGS["steps"], seed=SETTINGS["seed"])(
        images[correct], labels[correct])
    star = torch.tensor(result.eps_star, dtype=torch.float64)[correct]
    assert bool((star[fixed.success] <= SETTINGS["eps"]).all())  # ε* ≤ ε whenever broken at ε
    assert bool((star[~fixed.success] > SETTINGS["eps"]).all())
    assert result.robust_acc == pytest.approx(int((~fixed.success).sum()) / len(images))
    assert result.robust_acc <= result.clean_acc == pytest.approx(float(correct.float().mean()))
    assert 0 < result.robust_acc  # some samples survive, so both branches of the search ran
    assert all(e == 0.0 for e, c in zip(result.eps_star, correct.tolist()) if not c)
    broken = fixed.first_success_step[fixed.success].double()
    assert result.mean_steps_to_success == pytest.approx(float(broken.mean()))
    assert 0 <= result.mean_steps_to_success <= SETTINGS["steps"]


def test_eps_star_is_a_breaking_budget(trained_mlp):
    """Without random start PGD is deterministic per sample: attacking at ε* itself must succeed.

    Tolerance: 2% of samples, because the bisection ran them in other batch compositions and BLAS may
    round a near-zero gradient component differently.
    """
    images, labels = load_tensors("mnist5k", "test", n=150)
    result = evaluate_pgd(trained_mlp, images, labels, eps=0.05, steps=10, bisection_steps=4,
                          random_start=False, checks=False)
    star = torch.tensor(result.eps_star, dtype=torch.float32)
    censored = torch.tensor(result.eps_star_censored)
    keep = (star > 0) & ~censored
    again = PGD(trained_mlp, eps=0.05, steps=10, random_start=False)(images[keep], labels[keep], eps=star[keep])
    assert again.success.float().mean() >= 0.98
    below = PGD(trained_mlp, eps=0.05, steps=10, random_start=False)(images[keep], labels[keep],
                                                                      eps=star[keep] * 0.5)
    assert below.success.float().mean() < again.success.float().mean()


def test_curve_is_monotone_and_consistent(ease):
    result, _, _ = ease
    rates = [c["success_rate"] for c in result.curve]
    budgets = [c["eps"] for c in result.curve]
    assert budgets == sorted(budgets) and budgets[0] == 0.0 and SETTINGS["eps"] in budgets
    assert all(a <= b for a, b in zip(rates, rates[1:]))
    assert all(0 <= r <= 1 for r in rates)
    at_eps = next(c for c in result.curve if c["eps"] == SETTINGS["eps"])
    assert at_eps["robust_acc"] == pytest.approx(result.robust_acc)
    accs = [c["robust_acc"] for c in result.curve]
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert 0 < result.curve_area < 1


def test_censored_samples_count_at_the_upper_bound(trained_mlp):
    images, labels = load_tensors("mnist5k", "test", n=100)
    result = evaluate_pgd(trained_mlp, images, labels, eps=0.002, eps_max=0.004, steps=5, bisection_steps=2,
                          checks=False)
    star = np.array(result.eps_star)
    cens = np.array(result.eps_star_censored)
    correct = star > 0
    assert result.n_censored == int(cens.sum()) > correct.sum() / 2
    assert np.all(star[cens] == 0.004)
    assert result.median_eps_star == pytest.approx(float(np.median(star[correct])))  # censored included
    assert result.median_censored and result.median_eps_star == 0.004


def test_contract_keys_and_json(ease, tmp_path):
    result, _, _ = ease
    data = result.to_dict()
    assert set(CONTRACT) <= set(data)
    assert {"curve_area", "n", "n_censored", "eps_star", "eps_max", "alpha", "seed", "timings"} <= set(data)
    assert set(data["curve"][0]) >= {"eps", "success_rate"}
    assert data["n"] == len(data["eps_star"]) == 200
    write_json(result, tmp_path / "pgd.json")
    back = json.loads((tmp_path / "pgd.json").read_text())
    assert back["robust_acc"] == result.robust_acc and back["flags"] == []


def test_bad_arguments(trained_mlp):
    images, labels = load_tensors("mnist5k", "test", n=8)
    with pytest.raises(ValueError, match="eps_max"):
        evaluate_pgd(trained_mlp, images, labels, eps=0.1, eps_max=0.05)
    with pytest.raises(ValueError, match="norm"):
        evaluate_pgd(trained_mlp, images, labels, norm="l1")


def test_median_states_its_population_and_the_all_sample_median(ease, trained_mlp):
    result, images, labels = ease
    with torch.no_grad():
        correct = (trained_mlp(images).argmax(1) == labels).numpy()
    star = np.array(result.eps_star)  # misclassified samples hold 0
    assert not correct.all() and (star[~correct] == 0).all()
    assert result.median_eps_star_population == "correct"
    assert result.median_eps_star == pytest.approx(float(np.median(star[correct])))
    assert result.median_eps_star_all == pytest.approx(float(np.median(star)))
    # misclassified samples at ε* = 0 can only pull the median down
    assert result.median_eps_star_all <= result.median_eps_star
    data = result.to_dict()
    assert data["median_eps_star_population"] == "correct" and "median_eps_star_all" in data


def test_all_sample_median_counts_misclassified_as_zero():
    # A constant model is right on one class only: the all-sample median is 0 when most are wrong.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10.0))  # always predicts class 9
    images, _ = load_tensors("mnist5k", "test", n=40)
    labels = torch.zeros(40, dtype=torch.long)
    labels[:5] = 9  # 5 of 40 correct
    result = evaluate_pgd(model, images, labels, eps=0.05, steps=3, bisection_steps=2, checks=False)
    assert result.clean_acc == pytest.approx(5 / 40)
    assert result.median_eps_star_all == 0.0
    assert result.median_eps_star > 0  # the constant model is never broken: censored at eps_max
    assert result.median_censored


def test_bisection_shows_one_labelled_bar(trained_mlp, capsys):
    images, labels = load_tensors("mnist5k", "test", n=40)
    evaluate_pgd(trained_mlp, images, labels, eps=0.05, steps=3, bisection_steps=3, checks=False, progress=True)
    err = capsys.readouterr().err
    assert "ε* bisection step 3/3" in err
    after = err.split("ε*", 1)[1]
    assert "PGD-3 linf:" not in after  # only the fixed-ε run has a PGD bar; the bisection's calls show none


def test_flags_are_typed(trained_mlp):
    images, labels = load_tensors("mnist5k", "test", n=64)
    result = evaluate_pgd(trained_mlp, images, labels, eps=0.02, steps=3, bisection_steps=1, check_n=16)
    assert all(isinstance(flag, Flag) for flag in result.flags)
    assert all(set(flag) == {"id", "message", "severity"} for flag in result.to_dict()["flags"])
