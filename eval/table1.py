"""Table 1 of Ozbulak et al., "Exact Feature Collisions in Neural Networks" (arXiv:2205.15763, 2022),
recomputed with ``regcollide.audit.spectrum.audit`` for classification, segmentation and detection models.

Models are built at random init (nothing is downloaded). With ``--weights MODEL=FILE`` a local weights
file (safetensors or ``torch.save`` state dict) is loaded instead; the table marks which rows are trained.
At random init the nullity is structural: excess nullity, and therefore nu, needs trained weights.

    python eval/table1.py                                   # writes docs/table1.md
    python eval/table1.py --models tv:alexnet timm:deit_tiny_patch16_224 --out /tmp/t1.md
    python eval/table1.py --weights tv:alexnet=alexnet-owt.pth
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from regcollide.audit.spectrum import audit
from regcollide.models import create_model, default_geometry

ARCHITECTURES = {  # name -> (task, display name)
    "tv:alexnet": ("classification", "AlexNet"),
    "tv:squeezenet1_1": ("classification", "SqueezeNet 1.1"),
    "tv:vgg16": ("classification", "VGG-16"),
    "tv:resnet50": ("classification", "ResNet-50"),
    "tv:densenet121": ("classification", "DenseNet-121"),
    "tv:inception_v3": ("classification", "Inception-V3"),
    "timm:vit_base_patch16_224": ("classification", "ViT-B/16"),
    "timm:vit_large_patch16_224": ("classification", "ViT-L/16"),
    "timm:deit_tiny_patch16_224": ("classification", "DeiT-Tiny"),
    "timm:deit_base_patch16_224": ("classification", "DeiT-Base"),
    "tv:fcn_resnet50": ("segmentation", "FCN-ResNet50"),
    "tv:lraspp_mobilenet_v3_large": ("segmentation", "LR-ASPP MobileNetV3"),
    "tv:fasterrcnn_mobilenet_v3_large_fpn": ("detection", "Faster R-CNN MobileNetV3-FPN"),
    "tv:maskrcnn_resnet50_fpn": ("detection", "Mask R-CNN ResNet50-FPN"),
    "tv:keypointrcnn_resnet50_fpn": ("detection", "Keypoint R-CNN ResNet50-FPN"),
    "tv:retinanet_resnet50_fpn": ("detection", "RetinaNet ResNet50-FPN"),
}
COLUMNS = ("Model", "Task", "Weights", "n_θ", "ν", "ν/n_θ", "μ", "μ/n_θ", "Σ nullity", "structural",
           "excess", "nullity(W1)", "W1")


def audit_row(name: str, convention: str, weights: str | None) -> dict:
    geometry = default_geometry(name)
    size = geometry["img_size"] or 224
    model = create_model(name, pretrained_file=weights).eval()
    # W1 is found by a forward pass that stops at the first weight layer, so even detection models
    # (which resize to min_size 800 internally) stay cheap here.
    shape = (3, size, size)
    start = time.perf_counter()
    result = audit(model, input_shape=shape, convention=convention, name=name)
    task, display = ARCHITECTURES.get(name, ("", name))
    first = result.first
    return {
        "name": name, "display": display, "task": task, "weights": "trained" if weights else "random init",
        "seconds": round(time.perf_counter() - start, 1), "first_layer_name": first.name,
        "first_shape": f"{first.out_dim}×{first.in_dim}",
        **{k: v for k, v in result.to_dict().items() if k != "layers"},
    }


def markdown(rows: list[dict], convention: str) -> str:
    lines = [
        "# Table 1: weight-spectrum audit",
        "",
        "Recomputed after Ozbulak et al., \"Exact Feature Collisions in Neural Networks\" (2022), Table 1, with "
        f"`python eval/table1.py` (convention `{convention}`, default tolerance "
        "σ_max · max(out, in) · eps(float32), W1 found by a forward pass with hooks).",
        "",
        "ν = matrices with nullity ≥ 1, μ = matrices with out < in, n_θ = weight matrices (Linear, Conv, "
        "attention projections). Σ nullity splits into structural (max(0, in − out), forced by shape) and "
        "excess (created by the weight values). **At random init the excess is (almost) zero, so ν ≈ μ here: "
        "excess nullity, and therefore ν, needs trained weights** (pass `--weights MODEL=FILE`).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(COLUMNS) - 4) + ["---"]) + "|",
    ]
    for r in rows:
        cells = [r["display"], r["task"], r["weights"], f"{r['n_weights']}", f"{r['nu']}", f"{r['nu_frac']:.2f}",
                 f"{r['mu']}", f"{r['mu_frac']:.2f}", f"{r['total_nullity']:,}", f"{r['structural_nullity']:,}",
                 f"{r['excess_nullity']:,}", f"{r['first_nullity']:,}",
                 f"`{r['first_layer_name']}` ({r['first_shape']})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Models built at random init with torch {torch.__version__}; "
              "`--json FILE` also writes every row (with audit time per model) as JSON.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Table-1-style audit of a list of architectures.")
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), help="timm:/tv:/registry names")
    parser.add_argument("--convention", choices=["paper", "grouped"], default="paper")
    parser.add_argument("--weights", nargs="*", default=[], metavar="MODEL=FILE",
                        help="local weights files for some models (trained rows)")
    parser.add_argument("--out", default="docs/table1.md")
    parser.add_argument("--json", default=None, help="also write the rows (with timings) to this JSON file")
    args = parser.parse_args()
    weights = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--weights expects MODEL=FILE, got {item!r}")
        weights[name] = path
    rows = []
    for name in tqdm(args.models, desc="table1", unit="model"):
        torch.manual_seed(0)
        rows.append(audit_row(name, args.convention, weights.get(name)))
        tqdm.write(f"{name}: nu {rows[-1]['nu']}, mu {rows[-1]['mu']}, first_nullity {rows[-1]['first_nullity']}"
                   f" ({rows[-1]['seconds']} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(rows, args.convention))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
