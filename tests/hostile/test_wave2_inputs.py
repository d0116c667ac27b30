"""Hostile inputs of `regcollide eval`, the study runner and the benchmarks: each is refused in one line
before anything is written (or, for a --n beyond the split, warned about and recorded as the n used)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys

import pytest
from conftest import REPO, invoke, one_error_line, tree
from test_faults import _train

from regcollide.evaluation.settings import MAX_THREADS, EvalSettings


def _study():
    spec = importlib.util.spec_from_file_location("hostile_study_run", REPO / "eval" / "study" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study_error(capsys, argv: list[str]) -> str:
    """Run the study in-process; it must exit 2 (argparse or a refused design) with one error line."""
    try:
        code = _study().main(argv)
    except SystemExit as stop:  # argparse's parser.error
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    return one_error_line(re.sub(r"^\S+: error:", "error:", err, flags=re.M), "error:")  # argparse: "<prog>: error:"


def test_eval_records_the_number_of_images_actually_used(world):
    out = world["root"] / "out"
    output = invoke(["eval", str(world["run"]), "--out", str(out), "--parts", "clean", "--n", "1000000000",
                     "--no-progress"], 0)
    used = 1000  # mnist5k's test split
    assert one_error_line(output, "warning:") == (f"warning: n = 1000000000 is more than the {used} images of "
                                                  f"the eval data; using all {used}")
    entry = json.loads((out / "run.json").read_text())
    assert entry["n"] == entry["threat_model"]["n"] == entry["settings"]["n"] == used


def test_eval_thread_count_is_bounded_on_the_command_line_and_in_settings(world):
    before = tree(world["root"])
    line = invoke(["eval", str(world["run"]), "--out", str(world["root"] / "out"), "--parts", "clean", "--force",
                   "--num-threads", "1000000000"], 2)
    assert "--num-threads" in line and f"0<=x<={MAX_THREADS}" in line
    assert tree(world["root"]) == before
    with pytest.raises(ValueError, match=f"num_threads must be at most {MAX_THREADS}, got 1000000000"):
        EvalSettings(num_threads=10**9)
    assert EvalSettings(num_threads=MAX_THREADS).num_threads == MAX_THREADS


def test_the_config_thread_count_is_bounded_too(world, capsys):
    before = tree(world["root"])
    code, err = _train(capsys, "--set", "eval.num_threads=1000000000", "--set", f"out_dir={world['runs']}",
                       "--dry-run")
    assert code == 2
    assert f"num_threads must be at most {MAX_THREADS}, got 1000000000" in one_error_line(err, "error:")
    assert tree(world["root"]) == before


def test_eval_polytope_samples_beyond_memory_are_one_line_before_any_work(world, monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 10**9 // 4096}  # a machine with 1 GB
    monkeypatch.setattr("os.sysconf", lambda name: pages[name])
    before = tree(world["root"])
    line = invoke(["eval", str(world["run"]), "--out", str(world["root"] / "out"), "--parts", "clean,polytope",
                   "--polytope-samples", "100000", "--polytope-steps", "1", "--no-progress"], 2)
    assert "--polytope-samples" in line
    assert "100000 samples of 1x28x28 inputs need about 3 GB, more than this machine's 1 GB; use at most 39859" in line
    assert tree(world["root"]) == before  # not even --out was created


@pytest.mark.parametrize("argv, says", [
    (["--report-only", "--n-boot", "-1"], "--n-boot: -1 is not in 20..100000"),
    (["--report-only", "--n-boot", "0"], "--n-boot: 0 is not in 20..100000"),
    (["--report-only", "--n-boot", "1000000000000"], "--n-boot: 1000000000000 is not in 20..100000"),
    (["--jobs", "100000000000"], "--jobs: 100000000000 is not in 1..256"),
    (["--budget-minutes", "nan"], "--budget-minutes: nan is not a finite number > 0"),
    (["--budget-minutes", "inf"], "--budget-minutes: inf is not a finite number"),
    (["--budget-minutes", "-5"], "--budget-minutes: -5 is not a finite number"),
    (["--executor", "local", "--data", "nope:x"], "unknown dataset spec 'nope:x'"),
    (["--executor", "submitit", "--slurm", "garbage"], "'garbage' is not KEY=VALUE"),
])
def test_study_bad_options_are_one_line_and_write_nothing(world, capsys, argv, says):
    out = world["root"] / "study"
    before = tree(world["root"])
    assert says in _study_error(capsys, [*argv, "--out", str(out), "--runs", str(world["root"] / "r")])
    assert tree(world["root"]) == before and not out.exists()


@pytest.mark.parametrize("option", ["--out", "--runs"])
def test_study_folders_under_a_regular_file_are_one_line(world, capsys, option):
    blocker = world["neighbour"] / "precious.txt"
    before = tree(world["root"])
    line = _study_error(capsys, [option, str(blocker / "sub")])
    assert f"{option}: {blocker / 'sub'} lies under the file {blocker}; choose a folder" in line
    assert tree(world["root"]) == before


def test_study_design_with_invalid_yaml_is_one_line(world, capsys):
    design = world["root"] / "design.yaml"
    design.write_text("a: [1, 2\n")
    before = tree(world["root"])
    line = _study_error(capsys, ["--design", str(design), "--out", str(world["root"] / "study")])
    assert f"{design} is not valid YAML" in line and "fix the design file" in line
    assert tree(world["root"]) == before


BENCH_CASES = [
    ("bench_pgd", ["--n", "-5"], "argument --n: -5 is not in 1..100000"),
    ("bench_pgd", ["--n", "0"], "argument --n: 0 is not in 1..100000"),
    ("bench_pgd", ["--steps", "0"], "argument --steps: 0 is not in 1..100000"),
    ("bench_pgd", ["--model", "bogus"], "argument --model: invalid choice: 'bogus'"),
    ("bench_polytope", ["--vertices", "1"], "argument --vertices: 1 is not in 2..1000"),
    ("bench_polytope", ["--threads", "-1"], f"argument --threads: -1 is not in 1..{MAX_THREADS}"),
    ("bench_polytope", ["--targets", "0"], "argument --targets: 0 is not in 1..1000"),
    ("bench_polytope", ["--steps", "-1"], "argument --steps: -1 is not in 1..1000000"),
    ("bench_polytope", ["--repeats", "0"], "argument --repeats: 0 is not in 1..1000"),
    ("bench_study_train", ["--job", "bogus"], "--job 'bogus' is not a job of design.yaml"),
    ("bench_study_train", ["--epochs", "0"], "argument --epochs: 0 is not in 1..10000"),
    ("bench_study_train", ["--quick", "--epochs", "0"], "argument --epochs: 0 is not in 1..10000"),
    ("bench_study_train", ["--repeats", "0"], "argument --repeats: 0 is not in 1..1000"),
    ("bench_regularizers", ["--batch-size", "0"], "argument --batch-size: 0 is not in 1..100000"),
    ("bench_regularizers", ["--block", "0"], "argument --block: 0 is not in 1..100000"),
    ("bench_regularizers", ["--warmup", "-1"], "argument --warmup: -1 is not in 0..1000000"),
    ("bench_regularizers", ["--repeats", "2"], "argument --repeats: 2 is not in 3..1000"),
]


@pytest.mark.parametrize("bench, argv, says", BENCH_CASES)
def test_benchmark_bad_options_stop_in_one_line_before_any_work(monkeypatch, capsys, bench, argv, says):
    # in-process (the imports are paid once); the subprocess test below checks the real exit and stderr
    script = REPO / "benchmarks" / f"{bench}.py"
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    captured = capsys.readouterr()
    assert stop.value.code == 2 and captured.out == ""
    assert says in one_error_line(captured.err, f"{bench}.py: error:")


def test_a_benchmark_refuses_a_bad_option_in_a_real_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_polytope.py"), "--vertices", "1"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert "argument --vertices: 1 is not in 2..1000" in one_error_line(done.stderr, "bench_polytope.py: error:")


@pytest.mark.slow  # ~25 s: submitit's local executor starts a job process that fails at its data
def test_a_failed_submitit_job_is_one_line_naming_its_error(world, capsys):
    runs = world["root"] / "r"
    code = _study().main(["--quick", "--executor", "local", "--data", "parquet:/nonexistent/x",
                          "--out", str(world["root"] / "study"), "--runs", str(runs)])
    line = one_error_line(capsys.readouterr().err, "error:")
    assert code == 1
    assert line == (f"error: a study job failed: regcollide.training.validate.ConfigError: data.spec: parquet path "
                    f"'/nonexistent/x' does not exist. (logs under {runs / 'submitit'})")
