"""`accelerate launch --multi_gpu --num_processes 2` (two CPU processes over gloo, MULTI_CPU): the eval
shards the per-sample parts, gathers them, and merges AutoAttack and PGD shards into typed flag dicts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from regcollide.attacks.checks import Flag
from regcollide.evaluation.evaluate import evaluate_run

SETTINGS = {"n": 30, "autoattack_n": 30, "pgd_steps": 5, "pgd_check_n": 8, "pgd_bisection_steps": 2,
            "parts": ["clean", "pgd", "autoattack"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two(script, tmp_path) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # two interpreters import torch and accelerate, then AutoAttack runs in each
def test_two_process_eval_with_autoattack_gathers_and_matches_one(run, tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from accelerate import Accelerator
        from regcollide.evaluation.evaluate import evaluate_run
        acc = Accelerator(cpu=True)
        entry = evaluate_run({str(run)!r}, {SETTINGS!r}, accelerator=acc, cache={{}})
        if acc.is_main_process:
            json.dump({{"entry": entry, "procs": acc.num_processes}}, open({str(tmp_path / "o.json")!r}, "w"))
    """))
    launch_two(script, tmp_path)
    got = json.loads((tmp_path / "o.json").read_text())
    entry, single = got["entry"], evaluate_run(run, SETTINGS, cache={})
    assert got["procs"] == 2
    # Per-sample rates are exact under sharding: the same images, split in two and gathered.
    assert entry["clean_acc"] == pytest.approx(single["clean_acc"], abs=1e-12)
    assert entry["pgd"]["clean_acc"] == pytest.approx(single["pgd"]["clean_acc"], abs=1e-12)
    aa, pgd = entry["autoattack"], entry["pgd"]
    assert aa["n"] == pgd["n"] == 30 and len(pgd["eps_star"]) == 30
    assert aa["clean_acc"] == pytest.approx(single["autoattack"]["clean_acc"], abs=1e-12)
    assert [b["attack"] for b in aa["breakdown"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["breakdown"][0]["attacked"] == round(aa["clean_acc"] * 30)  # both shards' robust points
    assert aa["robust_acc"] <= aa["pgd_robust_acc_same_subset"] + 1e-12  # compared after the merge
    # Every flag of the merged results is a Flag dict (the old merge appended strings and crashed here).
    for flags in (aa["flags"], pgd["flags"]):
        assert all(Flag.from_dict(f).to_dict() == f for f in flags)
    assert "sharded_approximation" in {f["id"] for f in pgd["flags"]}  # the median is a shard mean


@pytest.mark.slow
def test_two_processes_match_one(run, tmp_path):
    """Clean accuracy over 61 images (an odd split) is exactly the one-process value."""
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from accelerate import Accelerator
        from regcollide.evaluation.evaluate import evaluate_run
        acc = Accelerator(cpu=True)
        entry = evaluate_run({str(run)!r}, {{"n": 61, "parts": ["clean"]}}, accelerator=acc, cache={{}})
        if acc.is_main_process:
            result = {{"clean": entry["clean_acc"], "procs": acc.num_processes}}
            json.dump(result, open({str(tmp_path / "o.json")!r}, "w"))
    """))
    launch_two(script, tmp_path)
    got = json.loads((tmp_path / "o.json").read_text())
    single = evaluate_run(run, {"n": 61, "parts": ["clean"]}, cache={})
    assert got["procs"] == 2
    assert got["clean"] == pytest.approx(single["clean_acc"], abs=1e-12)
