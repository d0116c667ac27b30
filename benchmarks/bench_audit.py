"""Speed of the spectrum audit against the obvious per-layer ``torch.linalg.matrix_rank`` baseline.

Both run in the same process on the same weights (random init), interleaved (ours, baseline, ours,
baseline, ...) so that load from other processes hits both alike; each model reports the median of
``--repeats`` pairs and every repeat prints the load average it ran under. ``--threads N`` sets torch's
and scipy's BLAS thread counts (the engine's Grams go through scipy). The default, one thread, gives both
sides one core: the like-for-like comparison. With more threads the baseline's LAPACK calls use them all
while the engine keeps its small BLAS calls on one thread (two thread pools spinning on the same cores
cost more than they gain), and the baseline's own time then varies by a third from run to run;
``--threads 0`` leaves the libraries' own choice. "ours" is
``audit(..., cosines=False, sensitivity=False)`` from a cold cache: the ranks the baseline computes (plus
sigma_min/sigma_max and the forward pass that finds W1); "ours+extras" adds row cosines and the tolerance
sensitivity (once, not part of the ratio). Every layer's rank must agree with the baseline:
disagreements are printed and make the exit status 1.

    python benchmarks/bench_audit.py --quick               # tv:resnet18, timm:deit_tiny (< 1 minute idle)
    python benchmarks/bench_audit.py                       # VGG-16, ViT-B/16 and the Table 1 set
    python benchmarks/bench_audit.py --models tv:vgg16 --repeats 5 --threads 0   # the libraries' own threads
    python benchmarks/bench_audit.py --models tv:squeezenet1_1 --by-shape   # where the time goes

``--by-shape`` also times each group of equal-shape matrices on its own (ours from a cold cache against
the baseline's matrix_rank calls on the same matrices, median of ``--repeats`` interleaved pairs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from regcollide.audit import rank as rank_engine
from regcollide.audit.matrices import iter_weight_layers, layer_matrix
from regcollide.audit.spectrum import audit
from regcollide.models import create_model, default_geometry

METHODS = ("cholesky", "deflation", "gram", "svd")
QUICK_MODELS = ("tv:resnet18", "timm:deit_tiny_patch16_224")
FULL_MODELS = (
    "tv:vgg16", "timm:vit_base_patch16_224", "tv:alexnet", "tv:squeezenet1_1", "tv:resnet50", "tv:densenet121",
    "tv:inception_v3", "timm:vit_large_patch16_224", "timm:deit_tiny_patch16_224", "timm:deit_base_patch16_224",
    "tv:fcn_resnet50", "tv:lraspp_mobilenet_v3_large", "tv:fasterrcnn_mobilenet_v3_large_fpn",
    "tv:maskrcnn_resnet50_fpn", "tv:keypointrcnn_resnet50_fpn", "tv:retinanet_resnet50_fpn",
)


def baseline_ranks(model: torch.nn.Module) -> dict[str, int]:
    """What a user would write: one full-SVD matrix_rank per weight matrix."""
    with torch.no_grad():
        return {layer.name: int(torch.linalg.matrix_rank(layer_matrix(layer))) for layer in iter_weight_layers(model)}


def _ours(model: torch.nn.Module, shape: tuple[int, ...], extras: bool):
    rank_engine._CACHE.clear()  # cold cache: no credit for repeats across runs
    start = time.perf_counter()
    result = audit(model, input_shape=shape, cosines=extras, sensitivity=extras)
    return time.perf_counter() - start, result


def bench(name: str, repeats: int) -> dict:
    """Median of ``repeats`` interleaved (ours, baseline) timings on one random-init model."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = default_geometry(name)["img_size"] or 224
    shape = (3, size, size)
    ours, base = [], []
    for _ in range(repeats):
        seconds, result = _ours(model, shape, extras=False)
        ours.append(seconds)
        start = time.perf_counter()
        reference = baseline_ranks(model)
        base.append(time.perf_counter() - start)
        print(f"  {name} repeat {len(base)}: ours {_s(ours[-1])}, matrix_rank {_s(base[-1])}, "
              f"load average {_load()}", flush=True)
    extras_seconds, _ = _ours(model, shape, extras=True)
    wrong = [layer.name for layer in result.layers if layer.rank != reference[layer.name]]
    methods = {m: sum(layer.method == m for layer in result.layers) for m in METHODS}
    row = {"model": name, "ours": statistics.median(ours), "baseline": statistics.median(base),
           "extras": extras_seconds, "wrong": wrong, "methods": methods, "n": result.n_weights}
    print(f"{name}: {row['n']} matrices, ours {_s(row['ours'])} (runs {', '.join(_s(t) for t in ours)}), "
          f"matrix_rank {_s(row['baseline'])} (runs {', '.join(_s(t) for t in base)}), "
          f"speed-up {row['baseline'] / row['ours']:.2f}x, rank disagreements {len(wrong)} {wrong or ''}, "
          f"paths {methods}, ours+cosines+sensitivity {_s(extras_seconds)}", flush=True)
    return row


def by_shape(name: str, repeats: int) -> None:
    """Per group of equal-shape matrices: ours (one ranks_of call, cold cache) against matrix_rank."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    with torch.no_grad():
        for layer in iter_weight_layers(model):
            matrix = layer_matrix(layer)
            groups.setdefault(tuple(matrix.shape), []).append(matrix)
    total_ours = total_base = 0.0
    for shape, mats in sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1] * min(kv[0]) * len(kv[1])):
        ours, base = [], []
        for _ in range(repeats):
            rank_engine._CACHE.clear()
            start = time.perf_counter()
            infos = rank_engine.ranks_of(mats, cosines=False)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                for matrix in mats:
                    torch.linalg.matrix_rank(matrix)
            base.append(time.perf_counter() - start)
        o, b = statistics.median(ours), statistics.median(base)
        total_ours, total_base = total_ours + o, total_base + b
        paths = sorted({info.method for info in infos})
        print(f"  {name} {shape[0]}x{shape[1]} x{len(mats)}: ours {_s(o)}, matrix_rank {_s(b)}, "
              f"speed-up {b / o:.2f}x, path {'/'.join(paths)}")
    print(f"  {name} sum over shapes: ours {_s(total_ours)}, matrix_rank {_s(total_base)}", flush=True)


def _s(seconds: float) -> str:
    """Three significant digits: sub-second audits (SqueezeNet: 30 ms) need milliseconds."""
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def _load() -> str:
    """The 1-minute load average (the machine is shared: every number is quoted with it)."""
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: the full set (or --quick's)")
    parser.add_argument("--quick", action="store_true", help=f"small models only: {', '.join(QUICK_MODELS)}")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved (ours, baseline) pairs per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads (default 1: one core each; 0: the libraries' own choice)")
    parser.add_argument("--by-shape", action="store_true",
                        help="also time each group of equal-shape matrices on its own")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0 (0: the libraries' own choice)")
    if args.threads and os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        # scipy's OpenBLAS (the engine's syrk Grams) reads its thread count at import: restart with it set.
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or list(QUICK_MODELS if args.quick else FULL_MODELS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    rows = []
    for name in models:
        rows.append(bench(name, args.repeats))
        if args.by_shape:
            by_shape(name, args.repeats)
    worst = min(rows, key=lambda r: r["baseline"] / r["ours"])
    bad = sum(len(r["wrong"]) for r in rows)
    print(f"all: lowest speed-up {worst['baseline'] / worst['ours']:.2f}x ({worst['model']}), "
          f"rank disagreements {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
