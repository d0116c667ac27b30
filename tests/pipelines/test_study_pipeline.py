"""End to end: eval/study/run.py --quick (design -> train -> measure -> entries -> statistics -> report).

Acceptance of the study: the primary statistic in analysis.json is recomputed here from the raw entry
files with scipy and numpy only; a second run skips every job (entries keyed by hash); a job whose entry
does not match its hash runs again; submitit's DebugExecutor runs a job like the pool does.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from regcollide.runs import load_run
from regcollide.study.design import expand, load_design
from regcollide.study.execute import is_done, run_jobs

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "configs" / "study" / "design.yaml"


def _runner():
    spec = importlib.util.spec_from_file_location("study_run", ROOT / "eval" / "study" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _independent_partial(entries: Path, structural: str, outcome: str = "pgd") -> tuple[float, float]:
    """Partial Spearman of an audit quantity and median eps* (PGD or FAB), from the raw JSON, without the package.

    Returns (r, largest |residual| of the structural ranks): 0 residual means no variation is left.
    """
    rows = [json.loads(p.read_text()) for p in sorted(entries.glob("*.json"))]
    x = np.array([e["outcomes"]["structure"][structural] for e in rows], float)
    y = np.array([(e["outcomes"]["pgd"]["0.1"] if outcome == "pgd" else e["outcomes"]["fab"])["median_eps_star"]
                  for e in rows], float)
    acc = np.array([e["outcomes"]["pgd"]["0.1"]["clean_acc"] for e in rows], float)
    size = np.array([math.log(e["outcomes"]["structure"]["n_params"]) for e in rows])
    fams = [e["job"]["family"] for e in rows]
    cols = [np.ones(len(rows)), stats.rankdata(acc), stats.rankdata(size)]
    cols += [np.array([f == g for f in fams], float) for g in sorted(set(fams))[1:]]
    design = np.column_stack(cols)
    res = [v - design @ np.linalg.lstsq(design, v, rcond=None)[0] for v in (stats.rankdata(x), stats.rankdata(y))]
    return float(np.corrcoef(*res)[0, 1]), float(np.abs(res[0]).max())


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, runs = tmp_path / "study", tmp_path / "runs"
    argv = ["--quick", "--out", str(out), "--runs", str(runs), "--n-boot", "40", "--jobs", "2"]
    assert _runner().main(argv) == 0
    jobs = expand(load_design(DESIGN, quick=True))
    assert sorted(p.stem for p in (out / "entries").glob("*.json")) == sorted(j.name for j in jobs)
    for name in ("report.md", "analysis.json", "dose_response.png", "primary.png", "run.json"):
        assert (out / name).is_file(), name
    analysis = json.loads((out / "analysis.json").read_text())["analysis"]
    primary = analysis["primary"]
    assert primary["n"] == len(jobs)
    r, left = _independent_partial(out / "entries", "first_nullity")
    if primary["r"] is None:  # in the quick design nullity(W1) moves with parameter count: nothing is left
        assert left < 1e-9 and primary["skipped"]
    else:
        assert primary["r"] == pytest.approx(r, abs=1e-9)
    # a secondary test whose variables vary within every family (FAB's eps* is continuous; PGD's lies on the
    # quick design's 2-step bisection grid and can be constant within a family), recomputed independently
    (sigma,) = [t for t in analysis["secondary"]
                if (t["structural"], t["outcome"]) == ("mean_sigma_ratio", "fab_eps_star")]
    assert sigma["r"] == pytest.approx(_independent_partial(out / "entries", "mean_sigma_ratio", "fab")[0], abs=1e-9)
    report = (out / "report.md").read_text()
    assert f"{sigma['r']:+.3f}" in report and str(tmp_path) not in report
    # the width family moves nullity(W1) exactly as designed, on the trained weights
    entries = {p.stem: json.loads(p.read_text()) for p in (out / "entries").glob("*.json")}
    assert entries["width-32-s0"]["outcomes"]["structure"]["first_nullity"] == 784 - 32
    assert entries["width-256-s1"]["outcomes"]["structure"]["first_nullity"] == 784 - 256
    assert entries["width-256-s0"]["outcomes"]["autoattack"]["n"] == 8

    # a second run recomputes nothing but a stale entry (hash mismatch)
    stale = out / "entries" / "singular-0.5-s1.json"
    data = json.loads(stale.read_text())
    data["job"]["hash"] = "0" * 16
    stale.write_text(json.dumps(data))
    assert _runner().main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["jobs_run"], run["jobs_skipped"]) == (1, len(jobs) - 1)
    assert all(is_done(out / "entries", j) for j in jobs)


def test_submitit_debug_executor_runs_a_job_like_the_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    job = next(j for j in expand(load_design(DESIGN, quick=True)) if j.name == "width-32-s0")
    counts = run_jobs([job], tmp_path / "runs", tmp_path / "entries", executor="debug", log_dir=tmp_path / "log")
    assert counts == {"skipped": 0, "run": 1, "not_started": 0}
    entry = json.loads((tmp_path / "entries" / "width-32-s0.json").read_text())
    assert entry["job"]["hash"] == job.hash and entry["outcomes"]["structure"]["first_nullity"] == 752
    # the run folder is a regular run: the library reloads it from config.yaml
    model, config = load_run(tmp_path / "runs" / "width-32-s0")
    assert config["model"]["name"] == "mlp-h32" and model[1].weight.shape == (32, 784)


def test_bad_design_is_one_line(tmp_path, capsys):
    assert _runner().main(["--design", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: design file") and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\nmeasure: {}\nfamilies: [{family: a, model: mlp-h32, levels: []}]\n")
    assert _runner().main(["--design", str(bad), "--out", str(tmp_path)]) == 2
    assert "levels" in capsys.readouterr().err
