"""Speed of the batched polytope search (T targets × K vertices in one optimization) against a loop of T
single-target searches, the way ``evaluate_polytope`` ran before.

Both run the same number of Adam steps on the same targets (the stopping rule is switched off with
``plateau=0``, so neither stops early), interleaved (batched, loop, batched, loop, ...) so that load from
other processes hits both alike; the ratio is the median over ``--repeats`` pairs. The vertices of the
two agree (same units, float32 rounding only); the benchmark checks the units.

    python benchmarks/bench_polytope.py --quick                # mlp, 4 targets, 200 steps (seconds)
    python benchmarks/bench_polytope.py --targets 8 --steps 1000 --model cnn-small --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from regcollide.attacks.polytope.search import PolytopeSearch
from regcollide.commands.argtypes import int_range
from regcollide.data import load_tensors
from regcollide.evaluation.settings import MAX_THREADS
from regcollide.models import create_model, list_models


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mlp, 4 targets, 200 steps, 3 repeats")
    parser.add_argument("--model", default="mlp", choices=list_models())
    parser.add_argument("--targets", type=int_range(1, 1000), default=8)
    parser.add_argument("--vertices", type=int_range(2, 1000), default=5, help="K >= 2: a polytope, not a point")
    parser.add_argument("--steps", type=int_range(1, 10**6), default=1000)
    parser.add_argument("--repeats", type=int_range(1, 1000), default=3)
    parser.add_argument("--threads", type=int_range(1, MAX_THREADS), default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.targets, args.steps, args.repeats = "mlp", 4, 200, 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    images, _ = load_tensors("mnist5k", "test", n=args.targets)
    settings = dict(vertices=args.vertices, steps=args.steps, plateau=0.0, progress=False)
    batched = PolytopeSearch(model, seed=0, **settings)
    singles = [PolytopeSearch(model, seed=j, **settings) for j in range(args.targets)]
    batched.search_batch(images[:1])  # warm-up: layer resolution and the optimizer's first-use imports
    outs = {}
    ratios, batch_times, loop_times = [], [], []
    for _ in range(args.repeats):
        b = _time(lambda: outs.__setitem__("batch", batched.search_batch(images)))
        loop = _time(lambda: outs.__setitem__("loop", [s.search(x) for s, x in zip(singles, images)]))
        batch_times.append(b)
        loop_times.append(loop)
        ratios.append(loop / b)
    same_units = all(torch.equal(a.units, b.units) for a, b in zip(outs["batch"], outs["loop"]))
    print(f"polytope {args.model}: {args.targets} targets × {args.vertices} vertices, {args.steps} steps, "
          f"{args.threads} thread(s)")
    print(f"  batched {statistics.median(batch_times):.3f} s   loop {statistics.median(loop_times):.3f} s   "
          f"speed-up {statistics.median(ratios):.2f}× (median of {args.repeats} interleaved pairs)")
    if not same_units:
        print("  the batched and looped searches chose different units", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
