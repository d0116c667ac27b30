"""Cost of a training step with each regularizer, as a ratio to a plain ERM step measured in the same run.

Every registry model (mlp, lenet5, cnn-small, resnet18-cifar, vit-tiny) at its default geometry, random
images in [0, 1], batch 128, one thread (its CPU time is measured, so it must do all the work). A step is
forward, loss + Σ weight·term, backward and an SGD update on the same batch. ERM and regularized blocks of ``--block``
steps alternate, so load changes on a shared machine hit both sides; each side's cost is the median over
``--repeats`` blocks of the mean step time. A block spans whole lazy-regularization periods (``singular``
and ``decorrelation`` evaluate on every 8th training step), so their amortized cost is what is measured.
Before timing, the regularized model trains ``--warmup`` steps (200 on mlp and lenet5, about the first 6
epochs of the default run; 24 on the larger models): the singular tracker's cost depends on the state
training drives a layer into (σ_min lifted into a cluster of nearly equal values), which a fresh random
matrix does not show (``--warmup 0`` times the fresh state).

Targets: singular ≤ 1.30× ERM, decorrelation ≤ 1.15× ERM. The other entries are reported without one.

    .venv/bin/python benchmarks/bench_regularizers.py --quick     # mlp, lenet5, cnn-small: under a minute
    .venv/bin/python benchmarks/bench_regularizers.py             # every model, every regularizer
    .venv/bin/python benchmarks/bench_regularizers.py --models mlp --only singular --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from regcollide.commands.argtypes import int_range
from regcollide.models import create_model, default_geometry, list_models
from regcollide.regularizers import build_regularizer

TARGETS = {"singular": 1.30, "decorrelation": 1.15}
QUICK_MODELS = ["mlp", "lenet5", "cnn-small"]
SMALL_MODELS = {"mlp", "lenet5", "cnn-small"}  # adversarial training (11 passes per step) only here
FAST_MODELS = {"mlp", "lenet5"}  # steps of milliseconds: a long warm-up costs seconds


def variants(model_name: str, full: bool) -> dict[str, tuple[str, dict]]:
    """label -> (registry name, params); the distillation teacher is the same family at twice the width."""
    table = {"singular": ("singular", {}), "decorrelation": ("decorrelation", {})}
    if not full:
        return table
    table.update({"singular (logdet)": ("singular", {"measure": "logdet"}),
                  "orthogonality": ("orthogonality", {}), "spectral": ("spectral", {})})
    if model_name in SMALL_MODELS:
        teacher = build(model_name, width=2.0)
        table.update({"trades (10 steps)": ("trades", {"steps": 10}),
                      "pgd_at (10 steps)": ("pgd_at", {"steps": 10}),
                      "distill (cached teacher)": ("distill", {"teacher": teacher, "cache_teacher": True}),
                      "distill (no cache)": ("distill", {"teacher": teacher, "cache_teacher": False})})
    return table


def build(model_name: str, width: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(model_name, width=width).train()


def make_step(model, reg, batch):
    """One closure running a full training step; reg=None is ERM."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        outputs = model(batch["image"])  # (B, 10)
        replaced = reg is not None and reg.replaces_task_loss
        loss = outputs.new_zeros(()) if replaced else F.cross_entropy(outputs, batch["label"])
        if reg is not None:
            loss = loss + 0.1 * reg(model, batch, outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def block_seconds(step, steps: int) -> float:
    """Mean CPU seconds of this thread per step over a block of ``steps`` consecutive steps.

    CPU time, not wall time: on a shared machine other processes stretch wall time by whole time slices
    (at a load of 8 on 2 cores, by 3-4x and unevenly), while a thread's own CPU time barely moves.
    Torch runs one intra-op thread here, so this thread does all of the step's work.
    """
    start = time.thread_time()
    for _ in range(steps):
        step()
    return (time.thread_time() - start) / steps


def random_batch(model_name: str, batch_size: int) -> dict[str, torch.Tensor]:
    geometry = default_geometry(model_name)
    size, chans = geometry["img_size"], geometry["in_chans"]
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.rand(batch_size, chans, size, size, generator=generator),
            "label": torch.randint(0, 10, (batch_size,), generator=generator),
            "index": torch.arange(batch_size)}


def bench_variant(model_name: str, label: str, name: str, params: dict, batch: dict, repeats: int,
                  block: int, warmup: int) -> dict:
    erm_step = make_step(build(model_name), None, batch)
    reg = build_regularizer(name, **params)
    reg_step = make_step(reg.setup(build(model_name)), reg, batch)
    for _ in range(2):  # allocations, the singular tracker's first decomposition, teacher cache
        erm_step()
    for _ in range(max(2, warmup)):  # into the state training drives the regularized model to
        reg_step()
    erm_times, reg_times = [], []
    for _ in range(repeats):  # interleaved blocks
        erm_times.append(block_seconds(erm_step, block))
        reg_times.append(block_seconds(reg_step, block))
    erm, regularized = statistics.median(erm_times), statistics.median(reg_times)
    return {"model": model_name, "regularizer": label, "erm_ms": 1000 * erm, "reg_ms": 1000 * regularized,
            "ratio": regularized / erm, "target": TARGETS.get(label), "repeats": repeats}


def report(row: dict) -> str:
    target = row["target"]
    verdict = "" if target is None else (f"  (target <= {target:.2f}x) "
                                         + ("ok" if row["ratio"] <= target else "ABOVE TARGET"))
    return (f"{row['model']:15s} {row['regularizer']:26s} ERM {row['erm_ms']:9.1f} ms  "
            f"reg {row['reg_ms']:9.1f} ms  ratio {row['ratio']:5.2f}x  ({row['repeats']} blocks){verdict}")


def default_warmup(model_name: str) -> int:
    """Regularized steps before timing: 25 lazy periods where a step takes milliseconds, else 3."""
    return 200 if model_name in FAST_MODELS else 24


def default_repeats(model_name: str, quick: bool) -> int:
    """Timed blocks per side: 3 (quick) or 5, three times that where a block takes milliseconds (mlp,
    lenet5): there one block is a few dozen ms, which a shared machine's load moves by 10-20%."""
    return (3 if quick else 5) * (3 if model_name in FAST_MODELS else 1)


def default_block(model_name: str) -> int:
    """Steps per timed block: two lazy periods (16) on the small models, one (8) on the large ones."""
    return 16 if model_name in SMALL_MODELS else 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="mlp, lenet5, cnn-small; singular and "
                                                             "decorrelation only; 3 repeats (9 on mlp, lenet5)")
    parser.add_argument("--models", nargs="+", default=None, choices=list_models())
    parser.add_argument("--batch-size", type=int_range(1, 10**5), default=128)
    # the median of fewer than 3 is one noisy sample
    parser.add_argument("--repeats", type=int_range(3, 1000), default=None,
                        help="timed blocks per side (median; default 3 with --quick, else 5, x3 on mlp and lenet5)")
    parser.add_argument("--block", type=int_range(1, 10**5), default=None, help="steps per timed block")
    parser.add_argument("--only", nargs="*", default=None, help="run variants whose label contains a word")
    parser.add_argument("--warmup", type=int_range(0, 10**6), default=None,
                        help="regularized training steps before timing (default 200 on mlp and lenet5, else 24)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = args.models or (QUICK_MODELS if args.quick else list_models())
    print(f"batch {args.batch_size}, 1 thread, CPU ms per step, median of interleaved blocks, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    above = 0
    for model_name in models:
        batch = random_batch(model_name, args.batch_size)
        for label, (name, params) in variants(model_name, full=not args.quick).items():
            if args.only and not any(word in label for word in args.only):
                continue
            warmup = default_warmup(model_name) if args.warmup is None else args.warmup
            repeats = args.repeats or default_repeats(model_name, args.quick)
            row = bench_variant(model_name, label, name, params, batch, repeats,
                                args.block or default_block(model_name), warmup)
            above += row["target"] is not None and row["ratio"] > row["target"]
            print(report(row), flush=True)
    print(f"{above} ratio(s) above target", flush=True)


if __name__ == "__main__":
    main()
