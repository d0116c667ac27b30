"""evaluate_model on any module and data shape, benchmark(), the part registry, and one settings schema
giving the same PGD numbers from training's end-of-run eval, `regcollide eval` and `regcollide attack pgd`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, TensorDataset

from regcollide.cli import main
from regcollide.data import load_tensors
from regcollide.evaluation.benchmark import benchmark
from regcollide.evaluation.evaluate import evaluate_model
from regcollide.evaluation.inputs import pick_threads
from regcollide.evaluation.registry import Part, get_part, part_names, register_part
from regcollide.evaluation.settings import EvalSettings, default
from regcollide.runs import load_run

QUICK = EvalSettings(parts=("clean", "pgd"), n=24, pgd_steps=4, pgd_check_n=8, pgd_bisection_steps=2)


class DictRows(torch.utils.data.Dataset):
    """A map-style dataset of {"image", "label"} rows, as regcollide.data and the hub produce."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


@pytest.fixture(scope="module")
def model(run):
    return load_run(run)[0]


def test_every_data_shape_gives_the_same_entry(model):
    x, y = load_tensors("mnist5k", "test", n=24, seed=0)
    shapes = {"spec": "mnist5k", "pair": (x, y), "tensor dataset": TensorDataset(x, y),
              "dict rows": DictRows(x, y), "loader": DataLoader(TensorDataset(x, y), batch_size=7)}
    entries = {name: evaluate_model(model, data, QUICK) for name, data in shapes.items()}
    with torch.no_grad():
        direct = int((model(x).argmax(1) == y).sum()) / len(y)
    for name, entry in entries.items():
        assert entry["clean_acc"] == pytest.approx(direct, abs=1e-12), name
        assert entry["pgd"]["eps_star"] == entries["spec"]["pgd"]["eps_star"], name
        assert entry["threat_model"] == {"dataset": entry["dataset"], "norm": "linf", "eps": 0.1, "n": 24}
    assert entries["spec"]["dataset"] == "mnist5k" and entries["pair"]["dataset"] == "custom"
    json.dumps(entries["loader"])


def test_mode_and_thread_count_are_restored(model):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    model.train()
    try:
        seen = []
        real = get_part("clean").run
        get_part("clean").run = lambda ctx: (seen.append((torch.get_num_threads(), ctx.model.training)),
                                             real(ctx))[1]
        evaluate_model(model, "mnist5k", QUICK.replace(parts=("clean",)))
        assert seen == [(1, False)]   # a small model on CPU runs on one thread, in eval mode
        assert torch.get_num_threads() == 2 and model.training
    finally:
        del get_part("clean").run
        model.eval()
        torch.set_num_threads(threads)
    assert pick_threads(model, 3) == 3


@pytest.mark.parametrize("bad", ["raw pixels", "nan", "empty", "no labels"])
def test_bad_data_is_refused_with_a_value_error(model, bad):
    x, y = load_tensors("mnist5k", "test", n=8, seed=0)
    data = {"raw pixels": (x * 255, y), "nan": (x.masked_fill(x > 0.5, float("nan")), y),
            "empty": (x[:0], y[:0]), "no labels": [x[i] for i in range(8)]}[bad]
    with pytest.raises(ValueError):
        evaluate_model(model, data, QUICK)


def test_benchmark_reports_clean_autoattack_and_pgd_on_the_same_images(model):
    x, y = load_tensors("mnist5k", "test", n=16, seed=0)
    threads = torch.get_num_threads()
    result = benchmark(model, (x, y), threat_model="L2", eps=3.0, n=16, pgd_steps=10, pgd_check_n=8)
    assert torch.get_num_threads() == threads
    with torch.no_grad():
        assert result.clean_acc == int((model(x).argmax(1) == y).sum()) / 16
    assert result.autoattack_acc <= result.pgd_acc <= result.clean_acc and result.n == 16
    assert result.entry["autoattack"]["n"] == result.entry["pgd"]["n"] == 16
    assert json.loads(json.dumps(result.to_dict()))["threat_model"] == "L2"
    with pytest.raises(ValueError, match="threat_model"):
        benchmark(model, (x, y), threat_model="Linf2")


def test_parts_are_registered_by_name_in_run_order():
    assert part_names() == ("clean", "pgd", "autoattack", "audit", "nullspace", "polytope")
    assert get_part("clean").entry_key == "clean_acc" and get_part("audit").entry_key == "audit"
    assert [p for p in part_names() if get_part(p).per_sample] == ["clean", "pgd", "autoattack"]
    with pytest.raises(ValueError, match="registered twice"):
        register_part("pgd", order=99)(type("AnotherPGD", (Part,), {}))
    with pytest.raises(ValueError, match="valid parts"):
        get_part("fgsm")


def test_settings_schema_refuses_bad_values():
    for bad in ({"eps": float("nan")}, {"eps": float("inf")}, {"eps": -0.1}, {"n": 0}, {"pgd_steps": 2.5},
                {"norm": "l3"}, {"seed": -1}, {"parts": ["clean", "fgsm"]}, {"n": True}):
        with pytest.raises(ValueError):
            EvalSettings.from_any(bad)
    with pytest.raises(ValueError, match="valid settings"):
        EvalSettings.from_any({"epsilon": 0.1})


def test_cli_defaults_come_from_the_schema():
    from regcollide.commands.attack_pgd import pgd
    from regcollide.commands.eval import eval_cmd

    eval_defaults = {p.name: p.default for p in eval_cmd.params}
    pgd_defaults = {p.name: p.default for p in pgd.params}
    for name in ("n", "norm", "eps", "pgd_steps", "pgd_restarts", "autoattack_n", "nullspace_n", "batch_size",
                 "seed", "num_threads"):
        assert eval_defaults[name] == default(name), name
    for option, name in (("n", "n"), ("norm", "norm"), ("eps", "eps"), ("steps", "pgd_steps"),
                         ("restarts", "pgd_restarts"), ("bisection_steps", "pgd_bisection_steps"),
                         ("batch_size", "batch_size"), ("seed", "seed")):
        assert pgd_defaults[option] == default(name), option


@pytest.mark.slow  # trains a tiny run with the library, then evaluates it three ways
def test_training_eval_and_attack_pgd_give_the_same_pgd_numbers(train_run, tmp_path):
    run = train_run("eval.parts=[pgd]", "eval.n=60", "eval.pgd_steps=5").run_dir
    from_training = json.loads((run / "results.json").read_text())["pgd"]
    out = CliRunner().invoke(main, ["eval", str(run), "--out", str(tmp_path / "e"), "--parts", "pgd", "--n", "60",
                                    "--pgd-steps", "5", "--force", "--no-progress"])
    assert out.exit_code == 0, out.output
    from_eval = json.loads((tmp_path / "e" / f"{run.name}.json").read_text())["pgd"]
    out = CliRunner().invoke(main, ["attack", "pgd", "mlp", "--checkpoint", str(run), "--n", "60", "--steps", "5",
                                    "--no-progress", "--out", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    from_attack = json.loads((tmp_path / "p" / "results.json").read_text())
    for key in ("clean_acc", "robust_acc", "median_eps_star", "eps_star", "steps", "eps", "n", "curve"):
        assert from_training[key] == from_eval[key] == from_attack[key], key
