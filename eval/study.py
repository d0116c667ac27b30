"""The ν/μ/nullity vs PGD-ease correlation study: train the zoo, evaluate it, report.

    python eval/study.py                       # configs/zoo/sweep.yaml -> runs/zoo, docs/study
    python eval/study.py --only mlp-w1 --only cnn-w0.5 --out /tmp/study

Steps, each skipping finished work so an interrupted study resumes where it stopped:
  1. train every zoo member with train/regularized.py (a run folder with model.safetensors is done);
  2. evaluate it with regcollide.evaluation.evaluate.evaluate_run into <out>/entries/<name>.json (parts whose
     weights and settings are unchanged are reused from the existing entry);
  3. write the leaderboard (Markdown, CSV, HTML) and the correlation report (Markdown, scatter PNG,
     CSV/JSON) into <out>, plus the same correlation restricted to the MLP family (one architecture, so
     the comparison is not driven by architecture alone) into <out>/mlp-only;
  4. record wall times in <out>/study.json.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]


def load_sweep(path: Path) -> dict:
    sweep = yaml.safe_load(path.read_text())
    for key in ("base", "runs"):
        if key not in sweep:
            raise SystemExit(f"{path}: missing '{key}' (see configs/zoo/sweep.yaml)")
    names = [r["name"] for r in sweep["runs"]]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SystemExit(f"{path}: duplicate run names {sorted(duplicates)}")
    return sweep


def train_member(member: dict, base: Path, runs_dir: Path, extra: list[str], log_dir: Path) -> float:
    """Train one member in a subprocess (the training script owns its accelerate state); returns seconds."""
    run = runs_dir / member["name"]
    overrides = [s.replace("{runs}", str(runs_dir)) for s in member.get("set", [])] + extra
    cmd = [sys.executable, str(ROOT / "train" / "regularized.py"), str(base), "--set", f"out_dir={runs_dir}",
           "--set", f"run_name={member['name']}", "--set", "eval.enabled=false"]
    for s in overrides:
        cmd += ["--set", s]
    if run.exists():
        cmd.append("--overwrite")  # a folder without weights is an interrupted run: start it again
    start = time.perf_counter()
    log = log_dir / f"{member['name']}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"training {member['name']} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def evaluate_member(run: Path, settings: dict, entries_dir: Path) -> tuple[dict, float]:
    from regcollide.evaluation.evaluate import evaluate_run
    from regcollide.io import write_json

    target = entries_dir / f"{run.name}.json"
    start = time.perf_counter()
    entry = evaluate_run(run, settings, cache=target if target.is_file() else {})
    write_json(entry, target)
    return entry, time.perf_counter() - start


def _depends(member: dict) -> bool:
    return any("{runs}" in s for s in member.get("set", []))


def study_member(member: dict, base: Path, runs_dir: Path, train_set: list[str], log_dir: Path,
                 settings: dict, entries_dir: Path) -> tuple[dict, dict]:
    """Train (unless done) and evaluate one member; returns (entry, timings). Runs in a worker process."""
    import torch

    # One thread per worker: on a shared or small machine, torch's default thread pool oversubscribes.
    torch.set_num_threads(1)
    run, times = runs_dir / member["name"], {}
    if not (run / "model.safetensors").is_file():
        times["train_s"] = round(train_member(member, base, runs_dir, train_set, log_dir), 1)
    entry, seconds = evaluate_member(run, settings, entries_dir)
    times["eval_s"] = round(seconds, 1)
    return entry, times


def report(entries: list[dict], out: Path, n_boot: int) -> dict:
    from regcollide.reports.correlation import correlate_entries
    from regcollide.reports.correlation_report import write_correlation_report
    from regcollide.reports.leaderboard import write_leaderboard

    write_leaderboard(entries, out, title="regcollide study: mnist5k zoo")
    study = correlate_entries(entries, n_boot=n_boot)
    write_correlation_report(study, out, groups=[str(e.get("model")) for e in entries])
    summary = {"all": _headline(study)}
    mlp = [e for e in entries if e.get("model") == "mlp"]
    if len(mlp) >= 3:
        sub = correlate_entries(mlp, n_boot=n_boot)
        write_correlation_report(sub, out / "mlp-only", groups=[e["name"].split("-")[-1] for e in mlp])
        summary["mlp_only"] = _headline(sub)
    return summary


def _headline(study) -> dict:
    computed = [t for t in study.tests if t.skipped is None]
    return {"n_models": study.n_models, "computable": len(computed),
            "significant": [f"{t.structural} vs {t.ease}: rho={t.spearman:+.2f}, p_holm={t.spearman_p_holm:.2g}"
                            for t in computed if t.significant],
            "constant": sorted(study.constant)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "configs" / "zoo" / "sweep.yaml")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "zoo", help="parent of the run folders")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "study", help="report folder")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="members to include")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra training override for every member (e.g. train.epochs=1 for a smoke test)")
    parser.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                        help="eval setting override (YAML value), e.g. --eval-set n=50")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2, help="members trained/evaluated in parallel (1 thread each)")
    args = parser.parse_args(argv)

    sweep = load_sweep(args.sweep)
    members = [m for m in sweep["runs"] if not args.only or m["name"] in args.only]
    unknown = set(args.only) - {m["name"] for m in sweep["runs"]}
    if unknown:
        raise SystemExit(f"--only: no members named {sorted(unknown)} in {args.sweep}")
    settings = dict(sweep.get("eval") or {})
    for assignment in args.eval_set:
        key, _, value = assignment.partition("=")
        settings[key] = yaml.safe_load(value)
    base = (ROOT / sweep["base"]) if not Path(sweep["base"]).is_absolute() else Path(sweep["base"])
    runs_dir, out = args.runs.resolve(), args.out
    entries_dir, log_dir = out / "entries", runs_dir / "logs"
    for d in (runs_dir, entries_dir, log_dir):
        d.mkdir(parents=True, exist_ok=True)

    start, results = time.perf_counter(), {}
    job = functools.partial(study_member, base=base, runs_dir=runs_dir, train_set=args.train_set,
                            log_dir=log_dir, settings=settings, entries_dir=entries_dir)
    # Members that train from another member (distillation teachers, "{runs}") wait for the first phase.
    phases = [[m for m in members if not _depends(m)], [m for m in members if _depends(m)]]
    with tqdm(total=len(members), desc="study", unit="model") as bar:
        for phase in phases:
            if args.jobs == 1:
                for member in phase:
                    results[member["name"]] = job(member)
                    bar.update()
                continue
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(job, m): m["name"] for m in phase}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
    entries = [results[m["name"]][0] for m in members]
    timings = {m["name"]: results[m["name"]][1] for m in members}
    summary = report(entries, out, args.n_boot)
    total = time.perf_counter() - start
    record = {"wall_seconds": round(total, 1), "jobs": args.jobs, "members": timings, "eval_settings": settings,
              "headline": summary}
    from regcollide.io import write_json

    write_json(record, out / "study.json")
    print(f"study: {len(entries)} models in {total / 60:.1f} min -> {out}/report.md, {out}/leaderboard.md")
    for line in summary["all"]["significant"] or ["no correlation significant after Holm correction"]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
