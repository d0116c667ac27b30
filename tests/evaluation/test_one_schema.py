"""One settings schema: the end-of-run eval of training, ``regcollide attack pgd`` and ``regcollide eval`` take
their defaults from ``EvalSettings`` alone, so one trained model gets the same PGD numbers from each."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from click.testing import CliRunner

from regcollide.cli import main
from regcollide.evaluation.settings import EvalSettings
from regcollide.training.config import ConfigError, EvalConfig, dump_config, from_dict, load_config

N = 100  # the one shared override: test images for every entry point (the schema's default is larger)


def test_the_training_eval_section_is_the_schema_plus_two_switches():
    schema = {f.name: f.default for f in dataclasses.fields(EvalSettings)}
    section = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
    assert set(section) - set(schema) == {"enabled", "every_epoch"}
    assert {k: section[k] for k in schema} == schema
    config = load_config()
    assert config.eval.settings() == EvalSettings()
    assert from_dict(yaml.safe_load(dump_config(config))).eval == config.eval  # the run folder's config.yaml


@pytest.mark.parametrize("assignment,words", [
    ("eval.eps=.nan", "finite"), ("eval.eps=.inf", "finite"), ("eval.pgd_stepz=3", "did you mean 'pgd_steps'"),
    ("eval.parts=[pgd, nope]", "unknown eval part"), ("eval.n=0", "n must be an integer >= 1"),
    ("eval.norm=l3", "norm must be one of")])
def test_bad_eval_keys_are_one_line_config_errors(assignment, words):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[assignment])
    message = str(err.value)
    assert message.startswith("eval") and words in message and "\n" not in message


def test_the_three_entry_points_agree_by_default(train_run, tmp_path):
    result = train_run("eval.parts=[clean, pgd]", f"eval.n={N}")
    run_dir = result.run_dir
    end_of_run = json.loads((run_dir / "results.json").read_text())["pgd"]

    runner = CliRunner()
    attack = runner.invoke(main, ["attack", "pgd", "mlp", "--checkpoint", str(run_dir), "--n", str(N),
                                  "--no-progress", "--out", str(tmp_path / "pgd")])
    assert attack.exit_code == 0, attack.output
    attack_pgd = json.loads((tmp_path / "pgd" / "results.json").read_text())

    evaluated = runner.invoke(main, ["eval", str(run_dir), "--parts", "clean,pgd", "--n", str(N),
                                     "--no-progress", "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    eval_pgd = json.loads((tmp_path / "eval" / f"{run_dir.name}.json").read_text())["pgd"]

    defaults = EvalSettings()
    for found in (end_of_run, attack_pgd, eval_pgd):
        assert (found["eps"], found["steps"], found["restarts"]) == (defaults.eps, defaults.pgd_steps,
                                                                     defaults.pgd_restarts)
        assert found["n"] == N
    # Same images, seed, attack and budget: the numbers agree exactly, not just within noise.
    for key in ("clean_acc", "robust_acc", "median_eps_star"):
        assert end_of_run[key] == attack_pgd[key] == eval_pgd[key], key
    assert 0 < end_of_run["robust_acc"] < end_of_run["clean_acc"]  # a non-trivial attack on this model
