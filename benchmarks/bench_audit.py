"""Speed of the spectrum audit against the obvious per-layer ``torch.linalg.matrix_rank`` baseline.

Both run in the same process on the same weights (random init), so the ratio is fair even on a busy
machine. Our timing is the whole audit (forward pass for W1, ranks, singular values, max cosines) from a
cold cache; the baseline computes only the ranks. Every layer's rank must agree.

    python benchmarks/bench_audit.py                       # tv:vgg16 and timm:vit_base_patch16_224
    python benchmarks/bench_audit.py --models tv:alexnet --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from regcollide.audit import rank as rank_engine
from regcollide.audit.matrices import iter_weight_layers, layer_matrix
from regcollide.audit.spectrum import audit
from regcollide.models import create_model

DEFAULT_MODELS = ("tv:vgg16", "timm:vit_base_patch16_224")


def baseline_ranks(model: torch.nn.Module, verbose: bool = False) -> dict[str, int]:
    """What a user would write: one full-SVD matrix_rank per weight matrix."""
    ranks = {}
    with torch.no_grad():
        for layer in iter_weight_layers(model):
            start = time.perf_counter()
            matrix = layer_matrix(layer)
            ranks[layer.name] = int(torch.linalg.matrix_rank(matrix))
            if verbose:
                print(f"  baseline {layer.name} {tuple(matrix.shape)}: {time.perf_counter() - start:.1f} s", flush=True)
    return ranks


def bench(name: str) -> tuple[float, float, int]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000, in_chans=3, img_size=224).eval()
    rank_engine._CACHE.clear()  # cold cache: no credit for repeats across runs
    start = time.perf_counter()
    result = audit(model, input_shape=(3, 224, 224), name=name)
    ours = time.perf_counter() - start
    print(f"{name}: audit {ours:.1f} s ({result.n_weights} matrices); running the baseline ...", flush=True)
    start = time.perf_counter()
    reference = baseline_ranks(model, verbose=True)
    base = time.perf_counter() - start
    disagreements = [layer.name for layer in result.layers if layer.rank != reference[layer.name]]
    svd_layers = sum(layer.method == "svd" for layer in result.layers)
    print(f"{name}: {result.n_weights} matrices, audit {ours:.1f} s, matrix_rank baseline {base:.1f} s, "
          f"speed-up {base / ours:.1f}x, rank disagreements {len(disagreements)} {disagreements or ''}, "
          f"borderline layers sent to SVD {svd_layers}", flush=True)
    return ours, base, len(disagreements)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    total = [bench(name) for name in args.models]
    ours, base, bad = (sum(col) for col in zip(*total, strict=True))
    print(f"all: audit {ours:.1f} s, baseline {base:.1f} s, speed-up {base / ours:.1f}x, disagreements {bad}")


if __name__ == "__main__":
    main()
