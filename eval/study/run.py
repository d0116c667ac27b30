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
from submitit.core.utils import FailedJobError

from regcollide.commands.argtypes import int_range, positive_finite
from regcollide.io import write_json
from regcollide.reports.outputs import OutputDirError, check_out_dir
from regcollide.reports.study.report import write_report
from regcollide.study.design import DesignError, expand, load_design
from regcollide.study.execute import EXECUTORS, run_jobs

ROOT = Path(__file__).resolve().parents[2]
MAX_JOBS = 256  # pool workers: far above any machine's cores, far below what exhausts process tables
DATA_KINDS = ("hf", "parquet", "imagefolder")  # the <kind>:<source> data specs besides the embedded mnist5k


def folder(text: str) -> Path:
    """A folder that exists or can be created (the reports' own check; argparse names the option)."""
    try:
        return check_out_dir(text, option="")
    except OutputDirError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def data_spec(text: str) -> str:
    """A dataset spec: mnist5k, or hf:/parquet:/imagefolder: with a source (checked before any job starts)."""
    kind, _, rest = text.partition(":")
    if text != "mnist5k" and not (kind in DATA_KINDS and rest):
        raise argparse.ArgumentTypeError(f"unknown dataset spec {text!r}: use mnist5k, hf:<id>[:<config>], "
                                         "parquet:<path> or imagefolder:<dir>")
    return text


def slurm_pair(text: str) -> tuple[str, object]:
    """One submitit parameter KEY=VALUE (VALUE read as YAML: numbers stay numbers)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. slurm_partition=gpu)")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {key} is not valid YAML") from None


def _last_trace_line(message: str) -> str:
    """The exception line of the job's traceback inside submitit's message (trace framed by dashed lines)."""
    parts = message.split("----------------------\n")
    trace = parts[1] if len(parts) >= 3 else message
    return [line.strip() for line in trace.splitlines() if line.strip()][-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--design", type=Path, default=ROOT / "configs" / "study" / "design.yaml")
    parser.add_argument("--quick", action="store_true", help="the design's CI-size 'quick' variant")
    parser.add_argument("--data", type=data_spec, default=None, metavar="SPEC",
                        help="data spec replacing the design's (e.g. parquet:/path/to/cifar10 offline)")
    parser.add_argument("--out", type=folder, default=ROOT / "docs" / "study", help="entries, figures, report")
    parser.add_argument("--runs", type=folder, default=ROOT / "runs" / "study", help="run folders (not committed)")
    parser.add_argument("--executor", choices=EXECUTORS, default="pool")
    parser.add_argument("--jobs", type=int_range(1, MAX_JOBS), default=2, help="pool workers (one torch thread each)")
    parser.add_argument("--fresh", action="store_true", help="recompute jobs whose entry already exists")
    parser.add_argument("--report-only", action="store_true", help="only recompute the report from the entries")
    parser.add_argument("--n-boot", type=int_range(20, 100_000), default=1000,
                        help="hierarchical bootstrap resamples (20..100000; the report uses 1000)")
    parser.add_argument("--budget-minutes", type=positive_finite, default=None,
                        help="start no job after this many minutes (pool); a rerun finishes the rest")
    parser.add_argument("--slurm", type=slurm_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="submitit parameter for --executor submitit (e.g. slurm_partition=gpu)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        design = load_design(args.design, quick=args.quick)
        if args.data is not None:
            design["data"] = args.data
        jobs = expand(design)
        slurm = dict(args.slurm)
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
    except yaml.YAMLError as err:
        print(f"error: {args.design} is not valid YAML ({' '.join(str(err).split())[:200]}); fix the design file",
              file=sys.stderr)
        return 2
    except FailedJobError as err:  # a submitit job's own traceback is in its log; its last line says why
        print(f"error: a study job failed: {_last_trace_line(str(err))} (logs under {args.runs / 'submitit'})",
              file=sys.stderr)
        return 1
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
