"""evaluate_run: contract keys, agreement with direct computation, skip reasons, caching, sharding, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from regcollide.evaluation.evaluate import evaluate_run
from regcollide.evaluation.registry import PartContext, get_part
from regcollide.evaluation.settings import EvalSettings
from regcollide.evaluation.sharding import merge_shards

CONTRACT = ("name", "model", "dataset", "training", "clean_acc", "pgd", "autoattack", "audit", "nullspace",
            "polytope", "seed", "versions", "weights_hash", "settings", "settings_hash", "timings")
FAST = {"n": 40, "pgd_steps": 3, "pgd_check_n": 8, "pgd_bisection_steps": 2, "parts": ["clean", "pgd"]}


def test_entry_contract_and_direct_agreement(run):
    from regcollide.data import load_tensors
    from regcollide.runs import load_run

    entry = evaluate_run(run, FAST, cache={})
    for key in CONTRACT:
        assert key in entry
    assert entry["name"] == "mlp-q" and entry["model"] == "mlp" and entry["dataset"] == "mnist5k"
    assert entry["training"]["regularizers"][0]["name"] == "singular" and "eval" not in entry["training"]
    assert entry["versions"]["torch"] and entry["versions"]["python"]

    model, _ = load_run(run)
    x, y = load_tensors("mnist5k", "test", n=40, seed=0)
    with torch.no_grad():
        direct = int((model(x).argmax(1) == y).sum()) / len(y)
    assert entry["clean_acc"] == pytest.approx(direct, abs=1e-12)
    assert entry["clean_acc"] > 0.4   # the few training steps learned something (chance is 0.1)
    pgd = entry["pgd"]
    assert pgd["clean_acc"] == pytest.approx(direct) and pgd["robust_acc"] <= pgd["clean_acc"]
    assert pgd["eps"] == 0.1 and pgd["steps"] == 3 and pgd["n"] == 40
    for part in ("autoattack", "audit", "nullspace", "polytope"):
        assert entry[part] is None and "not selected" in entry["skipped"][part]
    assert set(entry["part_hashes"]) == {"clean", "pgd"}
    json.dumps(entry)   # plain JSON


def test_cache_reuses_only_unchanged_parts(run, tmp_path, make_run_folder):
    first = evaluate_run(run, FAST, cache={})
    again = evaluate_run(run, FAST, cache=first)
    assert sorted(again["cached_parts"]) == ["clean", "pgd"]
    assert again["pgd"] == first["pgd"] and again["clean_acc"] == first["clean_acc"]

    # A new eps changes PGD's key but not clean accuracy's.
    changed = evaluate_run(run, {**FAST, "eps": 0.05}, cache=first)
    assert changed["cached_parts"] == ["clean"] and changed["pgd"]["eps"] == 0.05
    # A different batch size is not a different result.
    assert evaluate_run(run, {**FAST, "batch_size": 7}, cache=first)["settings_hash"] == first["settings_hash"]

    # New weights (same config) invalidate everything.
    other = make_run_folder(tmp_path / "mlp-q", steps=5, seed=1)
    assert evaluate_run(other, FAST, cache=first)["cached_parts"] == []

    # A results.json in the run folder is the default cache (what the training script writes).
    (other / "results.json").write_text(json.dumps(evaluate_run(other, FAST, cache={})))
    assert sorted(evaluate_run(other, FAST)["cached_parts"]) == ["clean", "pgd"]


def test_autoattack_runs_on_a_prefix_of_the_pgd_images_and_is_not_weaker(run, monkeypatch):
    import regcollide.evaluation.parts.autoattack as aa_part
    import regcollide.evaluation.parts.pgd as pgd_part
    from regcollide.data import load_tensors

    seen = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapped(model, images, labels, **kwargs):
            seen[name] = (images.clone(), labels.clone())
            return real(model, images, labels, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    spy(pgd_part, "evaluate_pgd")
    spy(aa_part, "evaluate_autoattack")
    settings = {**FAST, "n": 24, "pgd_steps": 10, "autoattack_n": 8, "parts": ["pgd", "autoattack"]}
    entry = evaluate_run(run, settings, cache={})

    x, y = load_tensors("mnist5k", "test", n=24, seed=0)
    assert torch.equal(seen["evaluate_pgd"][0], x) and torch.equal(seen["evaluate_pgd"][1], y)
    assert torch.equal(seen["evaluate_autoattack"][0], x[:8]) and torch.equal(seen["evaluate_autoattack"][1], y[:8])
    assert len(set(y[:8].tolist())) >= 4   # the prefix is a class mixture, not one sorted class

    aa, pgd = entry["autoattack"], entry["pgd"]
    assert aa["n"] == 8 and pgd["n"] == 24
    robust = [e > pgd["eps"] for e in pgd["eps_star"][:8]]   # PGD's own verdict on AutoAttack's images
    assert aa["pgd_robust_acc_same_subset"] == pytest.approx(sum(robust) / 8)
    assert aa["pgd_clean_acc_same_subset"] == pytest.approx(aa["clean_acc"])
    assert aa["clean_acc"] > aa["robust_acc"]   # something was actually broken
    assert aa["robust_acc"] <= aa["pgd_robust_acc_same_subset"]
    assert not [f for f in aa["flags"] if f["id"] in ("autoattack_weaker_than_pgd", "autoattack_subset_mismatch")]


def test_autoattack_subset_and_weaker_than_pgd_flag():
    from regcollide.evaluation.parts.autoattack import compare_to_pgd

    subset = get_part("autoattack").n_images
    assert subset(EvalSettings(n=200, autoattack_n=32)) == 32
    assert subset(EvalSettings(n=20, autoattack_n=32)) == 20   # never beyond PGD's images
    # PGD: 4 images, ε* = 0 (misclassified), 0.05 (broken at ε=0.1), 0.3 and 0.4 (robust) -> robust 2/4.
    pgd = {"eps": 0.1, "eps_star": [0.0, 0.05, 0.3, 0.4]}
    stronger = compare_to_pgd({"n": 4, "clean_acc": 0.75, "robust_acc": 0.25, "flags": []}, pgd)
    assert stronger["pgd_robust_acc_same_subset"] == 0.5 and stronger["flags"] == []
    weaker = compare_to_pgd({"n": 4, "clean_acc": 0.75, "robust_acc": 0.75, "flags": []}, pgd)
    assert [f["id"] for f in weaker["flags"]] == ["autoattack_weaker_than_pgd"]
    # Recomputed, not accumulated, when a cached entry is compared again.
    assert compare_to_pgd(weaker, pgd)["flags"] == weaker["flags"]
    mismatch = compare_to_pgd({"n": 4, "clean_acc": 1.0, "robust_acc": 0.25, "flags": []}, pgd)
    assert [f["id"] for f in mismatch["flags"]] == ["autoattack_subset_mismatch"]
    assert compare_to_pgd({"n": 4, "clean_acc": 1.0, "robust_acc": 0.25, "flags": []}, None)[
        "pgd_robust_acc_same_subset"] is None


def test_inapplicable_parts_are_null_with_reason(tmp_path, make_run_folder):
    vit = make_run_folder(tmp_path / "vit", name="vit-tiny", width=0.25, steps=1)
    entry = evaluate_run(vit, {"parts": ["polytope"], "n": 8}, cache={})
    assert entry["polytope"] is None and "ReLU" in entry["skipped"]["polytope"]
    from regcollide.evaluation.registry import PartOutcome

    ctx = PartContext(model=None, images=None, labels=None, settings=EvalSettings(), input_shape=(1, 28, 28),
                      outcomes={"audit": PartOutcome(value={"first_nullity": 0})})
    out = get_part("nullspace").run(ctx)
    assert out.value is None and "nullity(W1) = 0" in out.reason


def test_bad_settings_and_folder(tmp_path):
    with pytest.raises(ValueError, match="valid parts"):
        EvalSettings(parts=("clean", "fgsm"))
    with pytest.raises(ValueError, match="valid settings"):
        EvalSettings.from_any({"epsilon": 0.1})
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        evaluate_run(tmp_path, FAST)


def test_merge_shards_rates_exact_and_approximations_flagged():
    a = {"clean_acc": 1.0, "robust_acc": 0.5, "median_eps_star": 0.1, "mean_steps_to_success": 2.0, "n": 2,
         "eps_star": [0.1, 0.3], "curve": [{"eps": 0.1, "success_rate": 0.5}],
         "flags": [{"id": "x", "message": "m"}]}
    b = {"clean_acc": 0.5, "robust_acc": 0.0, "median_eps_star": 0.2, "mean_steps_to_success": 5.0, "n": 6,
         "eps_star": [0.0] * 6, "curve": [{"eps": 0.1, "success_rate": 1.0}],
         "flags": [{"id": "x", "message": "m"}]}
    m = merge_shards([a, b], [2, 6])
    assert m["clean_acc"] == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)
    assert m["robust_acc"] == pytest.approx(1 / 8)
    # Steps are a mean over broken samples: 1 broken in a, 3 in b.
    assert m["mean_steps_to_success"] == pytest.approx((1 * 2.0 + 3 * 5.0) / 4)
    assert m["eps_star"] == [0.1, 0.3] + [0.0] * 6 and m["n"] == 8
    assert m["curve"][0]["success_rate"] == pytest.approx((2 * 0.5 + 6 * 1.0) / 8)
    assert m["flags"][0] == {"id": "x", "message": "m", "severity": "warning"}
    assert [f["id"] for f in m["flags"][1:]] == ["sharded_approximation"]
    assert "median_eps_star" in m["flags"][1]["message"]
    assert merge_shards([a], [2]) is a


def test_eval_command_writes_and_reuses(run, tmp_path):
    from regcollide.commands.eval import eval_cmd

    args = [str(run), "--out", str(tmp_path / "e"), "--n", "40", "--pgd-steps", "3", "--parts", "clean,pgd",
            "--no-progress"]
    first = CliRunner().invoke(eval_cmd, args)
    assert first.exit_code == 0, first.output
    entry = json.loads((tmp_path / "e" / "mlp-q.json").read_text())
    assert entry["pgd"]["n"] == 40
    second = CliRunner().invoke(eval_cmd, args)
    assert second.exit_code == 0 and "reused: clean, pgd" in second.output
    bad = CliRunner().invoke(eval_cmd, [str(run), "--out", str(tmp_path / "e"), "--parts", "clean,nope"])
    assert bad.exit_code != 0 and "choose a comma list" in bad.output
