"""Eval speed: `regcollide eval` of the default run with default settings, quiet and under load.

Target: at most 45 s on a quiet 2-core machine, and at most 3x that while another 2-thread job uses the
cores. The load is a competing process this benchmark starts itself (float32 matmuls on 2 torch threads).
The baseline, measured in the same run and interleaved, is the same eval on 2 torch threads (the old
behaviour); the eval's own choice (``num_threads: 0``) runs small models on one thread, because their
kernels are too small to split and extra threads only oversubscribe the cores.

Full mode times the real command end to end (a fresh ``regcollide eval`` process, imports included) on a
default run it trains first (configs/default.yaml, the ``make run`` job) or on ``--run DIR``. ``--quick``
(well under a minute) times clean + PGD + AutoAttack on fewer images in this process. Each figure is the
median of ``--repeats`` (default 3) interleaved repeats.

Usage: ``.venv/bin/python benchmarks/bench_eval.py [--quick] [--run runs/default] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY = "import torch\ntorch.set_num_threads(2)\na = torch.randn(800, 800)\nwhile True:\n    a = (a @ a).tanh()\n"
QUICK_SETTINGS = {"parts": ["clean", "pgd", "autoattack"], "n": 100, "autoattack_n": 20, "pgd_steps": 10}


def train_default_run(folder: Path) -> Path:
    """The `make run` job (configs/default.yaml) without its end-of-run eval, into ``folder``."""
    cmd = [sys.executable, str(REPO / "train" / "regularized.py"), "--set", f"out_dir={folder}",
           "--set", "run_name=bench-default", "--set", "eval.enabled=false", "--set", "train.progress=false"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return folder / "bench-default"


def cli_eval(run: Path, threads: int) -> Callable[[], None]:
    """One end-to-end `regcollide eval` with default settings (and a thread count), in a fresh process."""
    def go() -> None:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "regcollide.cli", "eval", str(run), "--out", out, "--force",
                   "--no-progress", "--num-threads", str(threads)]
            subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return go


def library_eval(run: Path, threads: int) -> Callable[[], None]:
    from regcollide.evaluation.evaluate import evaluate_run

    return lambda: evaluate_run(run, {**QUICK_SETTINGS, "num_threads": threads}, cache={})


def timed(fn: Callable[[], None], busy: bool) -> float:
    """Wall-clock seconds of ``fn``, optionally while a competing 2-thread job runs."""
    job = subprocess.Popen([sys.executable, "-c", BUSY], env=dict(os.environ, OMP_NUM_THREADS="2")) if busy else None
    try:
        if job is not None:
            time.sleep(1.0)  # let the competitor reach its steady state
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        if job is not None:
            job.kill()   # our own child, by its handle
            job.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="clean + PGD + AutoAttack on 100/20 images, in-process")
    parser.add_argument("--run", type=Path, default=None, help="run folder to evaluate (default: train one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_default_run(Path(tmp))
        make = library_eval if args.quick else cli_eval
        conditions = {(threads, busy): make(run, threads) for busy in (False, True) for threads in (0, 2)}
        times: dict = {key: [] for key in conditions}
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared with other jobs)", flush=True)
        for r in range(args.repeats):  # interleaved, so drifting background load hits every condition
            for (threads, busy), fn in conditions.items():
                times[threads, busy].append(timed(fn, busy))
                print(f"  repeat {r + 1}: threads={'auto' if threads == 0 else threads} "
                      f"{'loaded' if busy else 'quiet '} {times[threads, busy][-1]:6.1f} s", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    report(times, args.quick)


def report(times: dict, quick: bool) -> None:
    med = {key: statistics.median(v) for key, v in times.items()}
    what = "quick eval (clean, PGD, AutoAttack; 100/20 images)" if quick else "regcollide eval, default run"
    print(f"\n{what}: median of {len(next(iter(times.values())))} repeats")
    for threads in (0, 2):
        label = "auto (1 thread for small models)" if threads == 0 else "2 threads (baseline)"
        quiet, loaded = med[threads, False], med[threads, True]
        print(f"  {label:34s} quiet {quiet:6.1f} s   loaded {loaded:6.1f} s   loaded/quiet {loaded / quiet:4.2f}x")
    print(f"  speed-up of auto over the baseline: quiet {med[2, False] / med[0, False]:.2f}x, "
          f"loaded {med[2, True] / med[0, True]:.2f}x")
    if not quick:
        ok = med[0, False] <= 45 and med[0, True] <= 3 * 45
        print(f"  target (quiet <= 45 s, loaded <= 135 s): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
