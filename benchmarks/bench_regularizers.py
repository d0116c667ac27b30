"""Cost of one training step with each regularizer, as a ratio to a plain ERM step measured in the same run.

Models: ``cnn-small`` on 1×28×28 and ``resnet18-cifar`` on 3×32×32, random images in [0, 1]. Each step is
forward + loss + backward + SGD update on the same batch. ERM and regularized steps are interleaved and
the fastest of the repeats is reported for each side (like ``timeit``: background load only ever adds
time, so the minimum is the least noisy estimate of a step's own cost).

Targets (issue 7): singular ≤ 1.30× ERM, decorrelation ≤ 1.15× ERM. Adversarial training and
distillation are reported without a target; distillation with and without cached teacher outputs.
Adversarial training is timed on cnn-small only unless ``--adversarial`` is given.

    python benchmarks/bench_regularizers.py                    # both models
    python benchmarks/bench_regularizers.py --models cnn-small --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from regcollide.models import create_model
from regcollide.regularizers import build_regularizer

TARGETS = {"singular": 1.30, "decorrelation": 1.15}
GEOMETRY = {"cnn-small": (1, 28), "resnet18-cifar": (3, 32)}


def variants(model_name: str, in_chans: int, img_size: int) -> dict[str, tuple[str, dict]]:
    """label -> (registry name, params); the teacher is the same family at twice the width."""
    teacher = create_model(model_name, num_classes=10, in_chans=in_chans, img_size=img_size, width=2.0)
    return {
        "singular": ("singular", {}),
        "singular (refresh 10)": ("singular", {"refresh_every": 10}),
        "singular (logdet)": ("singular", {"measure": "logdet"}),
        "decorrelation": ("decorrelation", {}),
        "orthogonality": ("orthogonality", {}),
        "spectral": ("spectral", {}),
        "trades (10 steps)": ("trades", {"steps": 10}),
        "pgd_at (10 steps)": ("pgd_at", {"steps": 10}),
        "distill (cached teacher)": ("distill", {"teacher": teacher, "cache_teacher": True}),
        "distill (no cache)": ("distill", {"teacher": teacher, "cache_teacher": False}),
    }


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


def seconds(step, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def bench_model(model_name: str, batch_size: int, repeats: int, only: list[str] | None,
                skip: list[str]) -> list[dict]:
    in_chans, img_size = GEOMETRY[model_name]
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(batch_size, in_chans, img_size, img_size, generator=generator),
             "label": torch.randint(0, 10, (batch_size,), generator=generator),
             "index": torch.arange(batch_size)}
    rows = []
    for label, (name, params) in variants(model_name, in_chans, img_size).items():
        if (only and not any(word in label for word in only)) or any(word in label for word in skip):
            continue
        torch.manual_seed(0)
        erm_model = create_model(model_name, num_classes=10, in_chans=in_chans, img_size=img_size).train()
        torch.manual_seed(0)
        reg = build_regularizer(name, **params)
        reg_model = reg.setup(create_model(model_name, num_classes=10, in_chans=in_chans,
                                           img_size=img_size).train())
        erm_step, reg_step = make_step(erm_model, None, batch), make_step(reg_model, reg, batch)
        erm_step(), reg_step()  # warm-up (allocations, first teacher pass fills the cache)
        erm_times, reg_times = [], []
        for _ in range(repeats):  # interleaved, so load drifts hit both sides
            erm_times += seconds(erm_step, 1)
            reg_times += seconds(reg_step, 1)
        erm, regularized = min(erm_times), min(reg_times)
        target = TARGETS.get(label)
        rows.append({"model": model_name, "regularizer": label, "erm_ms": 1000 * erm,
                     "reg_ms": 1000 * regularized, "ratio": regularized / erm, "target": target})
        verdict = "" if target is None else ("  ok" if regularized / erm <= target else "  ABOVE TARGET")
        print(f"{model_name:15s} {label:26s} ERM {1000 * erm:8.1f} ms  reg {1000 * regularized:8.1f} ms  "
              f"ratio {regularized / erm:6.2f}x" + (f"  (target <= {target:.2f}x){verdict}" if target else ""),
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(GEOMETRY), choices=list(GEOMETRY))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--adversarial", action="store_true",
                        help="also time PGD-AT and TRADES on resnet18-cifar (11 passes per step: slow on CPU)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per side (fastest reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", nargs="*", default=None, help="run variants whose label contains a word")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for model_name in args.models:
        skip = [] if args.adversarial or model_name == "cnn-small" else ["trades", "pgd_at"]
        bench_model(model_name, args.batch_size, args.repeats, args.only, skip)


if __name__ == "__main__":
    main()
