#!/usr/bin/env python
"""The collision study: train and measure every job of a design, then recompute the report from the entries.

    .venv/bin/python eval/study/run.py --fresh                  # the full study (docs/study/preregistration.md)
    .venv/bin/python eval/study/run.py --quick --out /tmp/sq    # the same pipeline at CI size (< 2 min)
    .venv/bin/python eval/study/run.py --report-only            # recompute report + figures from the entries
    .venv/bin/python eval/study/run.py --executor submitit --slurm partition=gpu   # one Slurm job per model
    .venv/bin/python eval/study/run.py --design configs/study/cifar10.yaml --out study-cifar10   # CIFAR-10 (GPU)

Jobs whose entry exists with the same hash are skipped (so an interrupted or re-queued study resumes);
``--fresh`` recomputes every job. Run folders go to ``--runs`` (not committed); entries, figures,
``analysis.json`` and ``report.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from regcollide.io import write_json
from regcollide.reports.study.report import write_report
from regcollide.study.design import DesignError, expand, load_design
from regcollide.study.execute import EXECUTORS, run_jobs

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--design", type=Path, default=ROOT / "configs" / "study" / "design.yaml")
    parser.add_argument("--quick", action="store_true", help="the design's CI-size 'quick' variant")
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help="data spec replacing the design's (e.g. parquet:/path/to/cifar10 offline)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "study", help="entries, figures, report")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "study", help="run folders (not committed)")
    parser.add_argument("--executor", choices=EXECUTORS, default="pool")
    parser.add_argument("--jobs", type=int, default=2, help="pool workers (one torch thread each)")
    parser.add_argument("--fresh", action="store_true", help="recompute jobs whose entry already exists")
    parser.add_argument("--report-only", action="store_true", help="only recompute the report from the entries")
    parser.add_argument("--n-boot", type=int, default=1000, help="hierarchical bootstrap resamples")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="start no job after this many minutes (pool); a rerun finishes the rest")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="submitit parameter for --executor submitit (e.g. slurm_partition=gpu)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.jobs < 1:
            raise DesignError("--jobs must be >= 1")
        design = load_design(args.design, quick=args.quick)
        if args.data is not None:
            design["data"] = args.data
        jobs = expand(design)
        slurm = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.slurm)}
        start = time.perf_counter()
        counts = {"skipped": len(jobs), "run": 0, "not_started": 0}
        if not args.report_only:
            counts = run_jobs(jobs, args.runs, args.out / "entries", args.executor, args.jobs, args.fresh,
                              slurm=slurm, budget_minutes=args.budget_minutes)
        wall = time.perf_counter() - start
        result = write_report(args.out / "entries", args.out, n_boot=args.n_boot)
    except (DesignError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.report_only:
        write_json({"wall_seconds": round(wall, 1), "jobs_run": counts["run"], "jobs_skipped": counts["skipped"],
                    "jobs_not_started": counts.get("not_started", 0), "budget_minutes": args.budget_minutes,
                    "workers": args.jobs, "executor": args.executor,
                    "models_per_hour": round(3600 * counts["run"] / wall, 1) if counts["run"] else None},
                   args.out / "run.json")
    p = result["primary"]
    r = f"not computable ({p.get('skipped')})" if p.get("r") is None or p.get("skipped") else \
        f"{p['r']:+.3f} (p = {p['p']:.3g})"
    print(f"study: {result['n_models']} models, primary partial Spearman {r} -> {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
