"""Eval speed: `regcollide eval` of the default run with default settings, quiet and under load.

Target: at most 45 s on a quiet 2-core machine, and at most 3x that while another 2-thread job uses the
cores. The load is a competing process this benchmark starts itself (float32 matmuls on 2 torch threads).
The baseline, measured in the same run and interleaved, is the same eval on 2 torch threads (the old
behaviour); the eval's own choice (``num_threads: 0``) runs small models on one thread, because their
kernels are too small to split and extra threads only oversubscribe the cores.

Every timing is one fresh ``regcollide eval`` process (imports included), the real command end to end.
Full mode evaluates a default run (configs/default.yaml, the ``make run`` job, trained first) or
``--run DIR`` with default settings. ``--quick`` trains the default config for 2 epochs and evaluates clean,
PGD and AutoAttack on 50/10 images, and leaves out the loaded baseline. Each figure is the median of
``--repeats`` (default 3) interleaved repeats.

An oversubscribed baseline can take ten minutes under load, so it is stopped once it has taken
``--cap`` times as long as the eval's own choice did in the same repeat and load (at least 10 s); a stopped
run counts as that cap, and its median is reported as a lower bound (">"). Each run also reports the CPU
seconds of the eval process: with one thread, about the wall time it would take on an idle machine,
which a machine shared with other jobs cannot show directly.

Usage: ``.venv/bin/python benchmarks/bench_eval.py [--quick] [--run runs/default] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY = "import torch\ntorch.set_num_threads(2)\na = torch.randn(800, 800)\nwhile True:\n    a = (a @ a).tanh()\n"
QUICK_OPTIONS = ["--parts", "clean,pgd,autoattack", "--n", "50", "--autoattack-n", "10", "--pgd-steps", "10"]
TARGET_QUIET, LOAD_FACTOR = 45.0, 3.0
AUTO, BASELINE = 0, 2  # --num-threads: the eval's own choice, and the old 2-thread default


@dataclass(frozen=True)
class Timing:
    seconds: float  # wall clock
    cpu: float  # user + system CPU seconds of the eval process: about its wall time on an idle machine
    stopped: bool  # hit the cap: the true time is longer


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children only
    return usage.ru_utime + usage.ru_stime


def train_default_run(folder: Path, quick: bool) -> Path:
    """The `make run` job (configs/default.yaml) without its end-of-run eval, into ``folder``."""
    cmd = [sys.executable, str(REPO / "train" / "regularized.py"), "--set", f"out_dir={folder}",
           "--set", "run_name=bench-default", "--set", "eval.enabled=false", "--set", "train.progress=false"]
    if quick:
        cmd += ["--set", "train.epochs=2"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return folder / "bench-default"


def eval_command(run: Path, out: str, threads: int, quick: bool) -> list[str]:
    """One end-to-end `regcollide eval` with default settings (or the quick ones) and a thread count."""
    return [sys.executable, "-m", "regcollide.cli", "eval", str(run), "--out", out, "--force", "--no-progress",
            "--num-threads", str(threads), *(QUICK_OPTIONS if quick else [])]


def timed(cmd: list[str], busy: bool, cap: float | None) -> Timing:
    """Wall-clock seconds of ``cmd`` (a child process), optionally next to a competing 2-thread job."""
    job = subprocess.Popen([sys.executable, "-c", BUSY], env=dict(os.environ, OMP_NUM_THREADS="2")) if busy else None
    try:
        if job is not None:
            time.sleep(1.0)  # let the competitor reach its steady state
        start, cpu = time.perf_counter(), children_cpu()  # the competitor is reaped only after this
        child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = child.communicate(timeout=cap)
        except subprocess.TimeoutExpired:
            child.kill()  # our own child, by its handle
            child.communicate()
            return Timing(cap, children_cpu() - cpu, True)
        if child.returncode:
            raise SystemExit(f"regcollide eval failed ({child.returncode}): {err.strip().splitlines()[-1:]}")
        return Timing(time.perf_counter() - start, children_cpu() - cpu, False)
    finally:
        if job is not None:
            job.kill()   # our own child, by its handle
            job.wait()


def conditions(quick: bool) -> list[tuple[int, bool]]:
    """(threads, loaded) pairs in run order; each baseline follows the auto run it is capped against."""
    pairs = [(AUTO, False), (BASELINE, False), (AUTO, True)]
    return pairs if quick else pairs + [(BASELINE, True)]


def measure(run: Path, quick: bool, repeats: int, cap_factor: float) -> dict[tuple[int, bool], list[Timing]]:
    times: dict[tuple[int, bool], list[Timing]] = {key: [] for key in conditions(quick)}
    with tempfile.TemporaryDirectory() as out:
        for r in range(repeats):  # interleaved, so drifting background load hits every condition
            for threads, busy in conditions(quick):
                cap = None if threads == AUTO else max(10.0, cap_factor * times[AUTO, busy][-1].seconds)
                result = timed(eval_command(run, out, threads, quick), busy, cap)
                times[threads, busy].append(result)
                print(f"  repeat {r + 1}: threads={'auto' if threads == AUTO else threads} "
                      f"{'loaded' if busy else 'quiet '} {'>' if result.stopped else ' '}{result.seconds:6.1f} s "
                      f"(CPU {result.cpu:5.1f} s, load average {os.getloadavg()[0]:.1f})", flush=True)
    return times


def median(runs: list[Timing]) -> tuple[float, str]:
    """The median and a ">" when it is a lower bound (a stopped run is at or below it)."""
    value = statistics.median(run.seconds for run in runs)
    stopped = any(run.stopped and run.seconds <= value for run in runs)
    return value, ">" if stopped else ""


def report(times: dict[tuple[int, bool], list[Timing]], quick: bool) -> None:
    what = "quick eval (clean, PGD, AutoAttack; 50/10 images)" if quick else "regcollide eval, default run"
    print(f"\n{what}: median of {len(times[AUTO, False])} repeats, wall-clock seconds, imports included")
    for threads in (AUTO, BASELINE):
        label = "auto (1 thread for small models)" if threads == AUTO else "2 threads (baseline)"
        cells = []
        for busy in (False, True):
            if (threads, busy) in times:
                value, bound = median(times[threads, busy])
                cells.append(f"{'loaded' if busy else 'quiet'} {bound:1s}{value:6.1f} s")
        print(f"  {label:34s} " + "   ".join(cells))
    auto_cpu = statistics.median(run.cpu for run in times[AUTO, False])
    print(f"  auto, CPU seconds of the eval process (its wall time on an idle machine): {auto_cpu:.1f} s")
    auto_quiet, auto_loaded = median(times[AUTO, False])[0], median(times[AUTO, True])[0]
    print(f"  auto loaded/quiet: {auto_loaded / auto_quiet:.2f}x")
    base_quiet, bound = median(times[BASELINE, False])
    print(f"  speed-up of auto over the baseline, quiet: {bound}{base_quiet / auto_quiet:.2f}x")
    if (BASELINE, True) in times:
        base_loaded, bound = median(times[BASELINE, True])
        print(f"  speed-up of auto over the baseline, loaded: {bound}{base_loaded / auto_loaded:.2f}x")
    if not quick:
        ok = auto_quiet <= TARGET_QUIET and auto_loaded <= LOAD_FACTOR * TARGET_QUIET
        print(f"  target (quiet <= {TARGET_QUIET:.0f} s, loaded <= {LOAD_FACTOR * TARGET_QUIET:.0f} s): "
              f"{'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2-epoch run; clean + PGD + AutoAttack on 50/10 images; no loaded baseline")
    parser.add_argument("--run", type=Path, default=None, help="run folder to evaluate (default: train one)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median; >= 3)")
    parser.add_argument("--cap", type=float, default=3.0,
                        help="stop a baseline run after this many times the paired auto run (>= 1)")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (the median of fewer is one noisy sample)")
    if not args.cap >= 1:
        parser.error("--cap must be >= 1")
    if args.run is not None and not (args.run / "config.yaml").is_file():
        parser.error(f"--run {args.run} is not a run folder (no config.yaml); train one with `make run`")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_default_run(Path(tmp), args.quick)
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared with other jobs)", flush=True)
        times = measure(run, args.quick, args.repeats, args.cap)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    report(times, args.quick)


if __name__ == "__main__":
    main()
