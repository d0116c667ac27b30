"""PGD speed: PGD-k against k bare forward+backward passes of the same model and batch (target ratio ≤ 1.15).

Also prints the cost of the ε* search (bisection) relative to one PGD run. Both are measured in the
same run; each timing is the best of ``--repeats``. Usage: ``python benchmarks/bench_pgd.py [--model lenet5]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from regcollide.attacks.pgd.attack import PGD
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.data import load_tensors
from regcollide.models import create_model


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = load_tensors("mnist5k", "test", n=args.batch)

    # early_stop=False keeps every sample active for all steps: the worst case, same work as the floor
    attack = PGD(model, eps=0.1, steps=args.steps, batch_size=args.batch, early_stop=False)
    base, pgd = float("inf"), float("inf")
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both alike
        base = min(base, best_of(lambda: bare_passes(model, x, y, args.steps), 1))
        pgd = min(pgd, best_of(lambda: attack(x, y), 1))
    print(f"{args.model}, batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} thread(s)")
    print(f"  {args.steps} forward+backward passes: {base * 1e3:8.1f} ms")
    print(f"  PGD-{args.steps} (no early stop):       {pgd * 1e3:8.1f} ms")
    print(f"  ratio PGD / passes: {pgd / base:.3f}  (target <= 1.15)")

    for p in model.parameters():
        p.requires_grad_(True)
    train_x, train_y = load_tensors("mnist5k", "train")
    quick_train(model.train(), train_x, train_y, epochs=2)
    for p in model.parameters():
        p.requires_grad_(False)
    result = evaluate_pgd(model, x, y, eps=0.1, steps=args.steps, batch_size=args.batch, checks=False)
    t = result.timings
    print(f"trained {args.model}: clean {result.clean_acc:.3f}, robust@0.1 {result.robust_acc:.3f}")
    print(f"  PGD run {t['pgd'] * 1e3:.1f} ms, eps* search ({result.bisection_steps} bisection steps) "
          f"{t['eps_star'] * 1e3:.1f} ms: {t['eps_star'] / t['pgd']:.2f}x one PGD run")


if __name__ == "__main__":
    main()
