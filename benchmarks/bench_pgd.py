"""PGD speed: PGD-k against k bare forward+backward passes and against ``torchattacks.PGD``, same run.

The three are timed interleaved on the same model and images (one thread; the thread's CPU time, which a
shared machine's load barely moves), and each is the median of ``--repeats`` runs. Our PGD runs with
``early_stop=False`` so every sample takes all k steps, the same work as the floor and as torchattacks.

Targets: PGD / passes ≤ 1.15 and PGD / torchattacks ≤ 1.0. The full mode also trains the model for two
epochs and reports the cost of the ε* search (bisection) relative to one PGD run.

    .venv/bin/python benchmarks/bench_pgd.py --quick          # mlp, 20 steps, 256 images: a few seconds
    .venv/bin/python benchmarks/bench_pgd.py                  # mlp, 40 steps, 1000 images, + ε* search
    .venv/bin/python benchmarks/bench_pgd.py --model lenet5 --steps 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
import torchattacks

from regcollide.attacks.pgd.attack import PGD
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.commands.argtypes import int_range
from regcollide.data import load_tensors
from regcollide.models import create_model, list_models

TARGET_PASSES, TARGET_TORCHATTACKS = 1.15, 1.0


def cpu_seconds(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def bare_passes(model, x, y, k: int) -> None:
    """The floor: k forward + input-gradient backward passes, nothing else."""
    for _ in range(k):
        x = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x), y), x)


def quick_train(model, images, labels, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)  # the split is stored sorted by class
        for i in range(0, len(images), 64):
            batch = order[i:i + 64]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def time_attacks(model, x, y, steps: int, repeats: int) -> dict[str, list[float]]:
    """CPU seconds of the floor, our PGD and torchattacks' PGD, ``repeats`` interleaved rounds each.

    Each round runs all three, in an order that rotates from round to round, so no variant always runs
    after the same other one (whatever one leaves in the caches, each inherits equally often).
    """
    eps = 0.1
    ours = PGD(model, eps=eps, steps=steps, batch_size=len(x), early_stop=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=ours.alpha, steps=steps, random_start=True)
    runs = {"passes": lambda: bare_passes(model, x, y, steps), "pgd": lambda: ours(x, y),
            "torchattacks": lambda: theirs(x, y)}
    for fn in runs.values():  # warm-up
        fn()
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats):
        for name in names[round_ % 3:] + names[: round_ % 3]:
            times[name].append(cpu_seconds(runs[name]))
    return times


def ratios(times: dict[str, list[float]], name: str, baseline: str) -> tuple[float, float]:
    """(ratio of the medians, median of the per-round ratios). The second pairs the runs of one round,
    which share the machine's load at that moment; both are printed."""
    paired = statistics.median(a / b for a, b in zip(times[name], times[baseline]))
    return statistics.median(times[name]) / statistics.median(times[baseline]), paired


def eps_star_cost(model, x, y, steps: int) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    train_x, train_y = load_tensors("mnist5k", "train")
    quick_train(model.train(), train_x, train_y, epochs=2)
    for p in model.parameters():
        p.requires_grad_(False)
    result = evaluate_pgd(model, x, y, eps=0.1, steps=steps, batch_size=len(x), checks=False)
    t = result.timings
    print(f"trained: clean {result.clean_acc:.3f}, robust@0.1 {result.robust_acc:.3f}, median ε* "
          f"{result.median_eps_star:.4f} (correct), {result.median_eps_star_all:.4f} (all)")
    print(f"  PGD run {t['pgd'] * 1e3:.1f} ms, ε* search ({result.bisection_steps} bisection steps) "
          f"{t['eps_star'] * 1e3:.1f} ms: {t['eps_star'] / t['pgd']:.2f}x one PGD run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, 256 images, no ε* search")
    parser.add_argument("--model", default="mlp", choices=list_models())
    parser.add_argument("--steps", type=int_range(1, 10**5), default=None)
    parser.add_argument("--n", type=int_range(1, 10**5), default=None, help="images (default 1000; 256 with --quick)")
    # the median of fewer than 3 is one noisy sample
    # a round of the quick mode takes ~0.2 s, which a shared machine's load moves by several %: 9 rounds
    parser.add_argument("--repeats", type=int_range(3, 1000), default=9, help="interleaved runs per side (median)")
    args = parser.parse_args()
    steps = args.steps or (20 if args.quick else 40)
    n = args.n or (256 if args.quick else 1000)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = load_tensors("mnist5k", "test", n=n)
    times = time_attacks(model, x, y, steps, args.repeats)
    t = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.model}, {n} images, {steps} steps, 1 thread, CPU ms, median of {args.repeats} interleaved runs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  {steps} forward+backward passes: {t['passes'] * 1e3:8.1f} ms")
    print(f"  PGD-{steps} (no early stop):       {t['pgd'] * 1e3:8.1f} ms")
    print(f"  torchattacks.PGD:               {t['torchattacks'] * 1e3:8.1f} ms")
    for label, baseline, target in (("PGD / passes", "passes", TARGET_PASSES),
                                    ("PGD / torchattacks", "torchattacks", TARGET_TORCHATTACKS)):
        ratio, paired = ratios(times, "pgd", baseline)
        print(f"  {label}: {ratio:.3f} (per-round median {paired:.3f})  (target <= {target:.2f}) "
              f"{'ok' if max(ratio, paired) <= target else 'ABOVE TARGET'}")
    if not args.quick:
        eps_star_cost(model, x, y, steps)


if __name__ == "__main__":
    main()
