"""The documented CIFAR-10 study command (configs/study/cifar10.yaml) runs end to end offline on a local
parquet fixture in the hub's layout (``--data parquet:<dir>``), at the design's --quick size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from _cifar_fixture import write_cifar10_parquet

ROOT = Path(__file__).resolve().parents[2]


def test_cifar10_study_design_runs_on_a_local_fixture(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = importlib.util.spec_from_file_location("study_run_cifar", ROOT / "eval" / "study" / "run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    data = write_cifar10_parquet(tmp_path / "cifar10", 32, seed=1)
    out = tmp_path / "out"
    argv = ["--design", str(ROOT / "configs" / "study" / "cifar10.yaml"), "--quick", "--data", f"parquet:{data}",
            "--out", str(out), "--runs", str(tmp_path / "runs"), "--n-boot", "20", "--jobs", "1"]
    assert runner.main(argv) == 0
    entries = {p.stem: json.loads(p.read_text()) for p in (out / "entries").glob("*.json")}
    assert sorted(entries) == sorted(f"{c}-s{s}" for c in ("width-32", "width-64", "rank-4") for s in (0, 1))
    structure = entries["width-64-s0"]["outcomes"]["structure"]
    assert structure["input_shape"] == [3, 32, 32] and structure["first_nullity"] == 3072 - 64
    assert entries["rank-4-s1"]["outcomes"]["structure"]["layers"][1]["rank"] <= 4
    assert entries["width-32-s0"]["outcomes"]["autoattack"]["n"] == 8  # the quick design's AutoAttack subset
    claims = json.loads((out / "analysis.json").read_text())["analysis"]["claims"]
    assert [c["holds"] for c in claims] == [True] * 3 and claims[1]["claimed"] == "= 3040"
