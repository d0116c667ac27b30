"""End to end: eval/study.py on a zoo of 4 tiny models (train -> eval -> leaderboard -> correlation).

Acceptance of issue 9: every output is produced, and the reported statistics equal scipy.stats called
directly on the numbers stored in the eval entries.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]

# eps = 0.3 breaks every undefended MNIST model within APGD-CE, so AutoAttack skips its slow later attacks.
TINY_EVAL = {"parts": ["clean", "pgd", "autoattack", "audit", "nullspace", "polytope"], "n": 40, "eps": 0.3,
             "pgd_steps": 5, "pgd_bisection_steps": 3, "pgd_check_n": 16, "autoattack_n": 16,
             "nullspace_n": 4, "polytope_vertices": 3, "polytope_samples": 50, "polytope_targets": 1,
             "polytope_steps": 30}
# Widths on both sides of 784 change μ and nullity(W1); a regularized member changes the spectrum.
MEMBERS = [{"name": "w0.25", "set": ["model.width=0.25"]},
           {"name": "w0.5-s1", "set": ["model.width=0.5", "seed=1"]},
           {"name": "w0.25-sing", "set": ["model.width=0.25", "regularizers=[{name: singular, weight: 0.5}]"]},
           {"name": "w3.5", "set": ["model.width=3.5"]}]   # 896 hidden units: W1 (896 x 784) is tall


def _study_module():
    spec = importlib.util.spec_from_file_location("study", ROOT / "eval" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_zoo_end_to_end(tmp_path):
    sweep = {"base": str(ROOT / "configs" / "zoo" / "base.yaml"), "eval": TINY_EVAL, "runs": MEMBERS}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    argv = ["--sweep", str(tmp_path / "sweep.yaml"), "--runs", str(tmp_path / "runs"), "--out", str(out),
            "--train-set", "train.epochs=1", "--train-set", "data.limit_train=512", "--n-boot", "300",
            "--jobs", "1"]
    assert _study_module().main(argv) == 0

    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "report.md", "scatter.png",
                 "correlations.csv", "correlations.json", "study.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    entries = [json.loads((out / "entries" / f"{m['name']}.json").read_text()) for m in MEMBERS]
    assert all(e["audit"] and e["pgd"] and e["autoattack"] for e in entries)
    with open(out / "leaderboard.csv") as f:
        assert sorted(r["name"] for r in csv.DictReader(f)) == sorted(m["name"] for m in MEMBERS)

    # The structure really differs across the zoo: the tall W1 of w3.5 has a trivial kernel.
    assert [e["audit"]["first_nullity"] == 0 for e in entries] == [False, False, False, True]
    assert len({e["audit"]["mu"] for e in entries}) == 2
    assert entries[3]["nullspace"] is None and "nullity(W1) = 0" in entries[3]["skipped"]["nullspace"]

    saved = json.loads((out / "correlations.json").read_text())
    computed = [t for t in saved["tests"] if t["skipped"] is None]
    assert computed, "no computable correlation in the tiny zoo"
    for t in computed:
        xs, ys = saved["values"][t["structural"]], saved["values"][t["ease"]]
        pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        x, y = [p[0] for p in pairs], [p[1] for p in pairs]
        assert t["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert t["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue, rel=1e-9, abs=1e-300)
        assert t["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert t["kendall_p"] == pytest.approx(stats.kendalltau(x, y).pvalue, rel=1e-9, abs=1e-300)
        assert t["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
        assert t["pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue, rel=1e-9, abs=1e-300)
    # The values the statistics used are the entries' own numbers.
    assert saved["values"]["nu"] == [e["audit"]["nu"] for e in entries]
    assert saved["values"]["pgd_robust_acc"] == [e["pgd"]["robust_acc"] for e in entries]

    # Re-running skips training and reuses every evaluated part.
    assert _study_module().main(argv) == 0
    record = json.loads((out / "study.json").read_text())
    assert all("train_s" not in t for t in record["members"].values())
    again = json.loads((out / "entries" / "w0.25.json").read_text())
    assert sorted(again["cached_parts"]) == sorted(TINY_EVAL["parts"])
