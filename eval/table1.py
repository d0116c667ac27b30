"""Table 1 of Ozbulak et al., "Exact Feature Collisions in Neural Networks" (arXiv:2205.15763, 2022),
recomputed with ``regcollide.audit.spectrum.audit`` for classification, segmentation and detection models.

Models are built at random init unless asked otherwise (nothing is downloaded by default):
``--weights MODEL=FILE`` loads a local weights file (safetensors or a ``torch.save`` state dict, read
without unpickling), ``--pretrained`` asks the libraries' own loaders (torchvision ``DEFAULT`` weights,
timm's default tag) for every model, which needs a network or a filled cache and fails within seconds
offline with one line. The table marks which rows are trained. The layer set defaults to the paper's
(``--layers paper``: auxiliary heads of Inception-V3 and FCN built and counted, ConvTranspose left out).

    python eval/table1.py                                   # writes docs/table1.md (random init)
    python eval/table1.py --models tv:alexnet timm:deit_tiny_patch16_224 --out /tmp/t1.md
    python eval/table1.py --weights tv:alexnet=alexnet-owt.pth
    python eval/table1.py --pretrained --out /tmp/table1-pretrained.md   # needs a network
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from regcollide.audit.spectrum import audit
from regcollide.models import create_model, default_geometry

# The paper's Table 1 counts the auxiliary classifiers; torchvision builds them only on request.
PAPER_BUILD = {"tv:inception_v3": {"aux_logits": True}, "tv:fcn_resnet50": {"aux_loss": True}}

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
           "excess", "excess expected at random init", "ν at 0.1× / 10× tol", "nullity(W1)", "W1",
           "paper (where checked)")
PAPER_LABELS = {"n_weights": "n_θ", "mu": "μ", "total_nullity": "Σ nullity", "first_nullity": "nullity(W1)"}
# Table 1 numbers quoted from the paper that this table is checked against (tests/audit/test_table1.py).
PAPER = {  # name -> {column: paper value}
    "tv:inception_v3": {"n_weights": 98, "mu": 95},
    "tv:fcn_resnet50": {"n_weights": 57, "mu": 36},
    "tv:maskrcnn_resnet50_fpn": {"n_weights": 73},
    "tv:keypointrcnn_resnet50_fpn": {"n_weights": 76, "mu": 53, "total_nullity": 97230},
    "tv:retinanet_resnet50_fpn": {"first_nullity": 72},
}
DIFFERENCES = """\
## Where this table and the paper's differ

The layer set here is the paper's (`--layers paper`): ConvTranspose layers are left out and the
auxiliary heads of Inception-V3 and FCN-ResNet50 are built and counted. With it, n_θ and μ match the
paper values we check (Inception-V3 98/95, FCN-ResNet50 57/36, Mask R-CNN n_θ 73, Keypoint R-CNN 76/53).
`--layers all` adds the ConvTranspose layers (Mask R-CNN 74, Keypoint R-CNN 77/54); without the
auxiliary heads Inception-V3 has 95/93 and FCN-ResNet50 55/34.

Remaining differences, all on the paper's side:

- **RetinaNet nullity(W1) = 72 in the paper** is impossible for its first layer: ResNet-50's stem is a
  64 × (3·7·7) = 64 × 147 matrix, so its nullity is at least 147 − 64 = 83 whatever the weights. We
  report 83 (structural) plus any excess of the weights audited.
- **Keypoint R-CNN Σ nullity = 97,230 in the paper** is below the structural floor of the network with
  its ConvTranspose layers (97,450 with `--layers all`), so the paper left them out. Without them the
  floor is 97,210, and the paper's 97,230 is consistent with it (20 excess from its trained weights).
- **ν and the excess depend on the weights and on the tolerance.** At random init ν is already above μ
  wherever a large square matrix sits (VGG-16, AlexNet, ViT-L): about (4/π)·n²·eps(float32) singular
  values of a random n × n matrix fall below the default tolerance (2.5 for 4096 × 4096), which the
  column "excess expected at random init" gives for every shape. Compare a pretrained row's excess with
  that column, and with ν at 0.1× the tolerance, before reading rank deficiency into it.

These structural numbers are the ones this repository can check without a network; the paper's ν
column needs its trained weights (see below).

## The paper's ν column: pretrained weights

```bash
.venv/bin/python eval/table1.py --pretrained --out table1-pretrained.md --json table1-pretrained.json
.venv/bin/python eval/table1.py --models tv:alexnet --weights tv:alexnet=alexnet.safetensors --out t.md
```

`--pretrained` loads each library's default weights (torchvision `DEFAULT`, timm's default tag): it
needs a network (or a filled torch/timm cache) and, offline, stops within seconds with one line naming
`--weights MODEL=FILE`. With trained weights n_θ, μ, the structural nullity and nullity(W1) stay as
above (they depend on shapes only); ν and the excess change. Expect ν ≥ μ (every wide matrix has
nullity) with the difference made of square or tall matrices whose smallest singular values fall under
σ_max·max(out, in)·eps(float32); read it next to the random-init expectation and the 0.1×/10× columns.
"""


def _parse_weights(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--weights expects MODEL=FILE, got {item!r}")
        if not Path(path).is_file():
            parser.error(f"--weights {item}: no such file {path}")
        weights[name] = path
    return weights


def build(name: str, layer_set: str, weights: str | None, pretrained: bool):
    """The model as Table 1 audits it: random init, a local file, or the library's pretrained weights."""
    extra = PAPER_BUILD.get(name, {}) if layer_set == "paper" else {}
    return create_model(name, pretrained=pretrained, weights=weights, **extra).eval()


def audit_row(name: str, convention: str, weights: str | None, layer_set: str = "paper",
              pretrained: bool = False) -> dict:
    geometry = default_geometry(name)
    size = geometry["img_size"] or 224
    model = build(name, layer_set, weights, pretrained)
    # W1 is found by a forward pass that stops at the first weight layer, so even detection models
    # (which resize to min_size 800 internally) stay cheap here.
    shape = (3, size, size)
    load = os.getloadavg()[0]  # the machine may be shared: every time is quoted with the load it ran under
    start = time.perf_counter()
    result = audit(model, input_shape=shape, convention=convention, name=name, layer_set=layer_set, cosines=False)
    task, display = ARCHITECTURES.get(name, ("", name))
    first = result.first
    trained = "pretrained" if pretrained else "trained" if weights else "random init"
    return {
        "name": name, "display": display, "task": task, "weights": trained,
        "seconds": round(time.perf_counter() - start, 1), "load_average": round(load, 1),
        "first_layer_name": first.name,
        "first_shape": f"{first.out_dim}×{first.in_dim}",
        **{k: v for k, v in result.to_dict().items() if k != "layers"},
    }


def _sensitivity(row: dict) -> tuple[str, str]:
    by_factor = {entry["factor"]: entry for entry in row["tolerance_sensitivity"]}
    expected = by_factor[1.0]["expected_random_excess"]
    return (f"{expected:.1f}" if expected is not None else "-", f"{by_factor[0.1]['nu']} / {by_factor[10.0]['nu']}")


def _paper_cell(name: str) -> str:
    """The Table 1 values of the paper this row is checked against (tests/audit/test_table1.py)."""
    values = PAPER.get(name, {})
    return ", ".join(f"{PAPER_LABELS[key]} {value:,}" for key, value in values.items())


def markdown(rows: list[dict], convention: str, layer_set: str) -> str:
    lines = [
        "# Table 1: weight-spectrum audit",
        "",
        "Recomputed after Ozbulak et al., \"Exact Feature Collisions in Neural Networks\" (2022), Table 1, with "
        f"`.venv/bin/python eval/table1.py` (convention `{convention}`, layer set `{layer_set}`, default tolerance "
        "σ_max · max(out, in) · eps(float32), W1 found by a forward pass with hooks).",
        "",
        "ν = matrices with nullity ≥ 1, μ = matrices with out < in, n_θ = weight matrices (Linear, Conv, "
        "attention projections). Σ nullity splits into structural (max(0, in − out), forced by shape) and "
        "excess (created by the weight values, or by float noise: compare it with the count expected from "
        "random weights of the same shapes, and with ν at 0.1× and 10× the tolerance).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(COLUMNS) - 5) + ["---"] * 2) + "|",
    ]
    for r in rows:
        expected, nu_range = _sensitivity(r)
        cells = [r["display"], r["task"], r["weights"], f"{r['n_weights']}", f"{r['nu']}", f"{r['nu_frac']:.2f}",
                 f"{r['mu']}", f"{r['mu_frac']:.2f}", f"{r['total_nullity']:,}", f"{r['structural_nullity']:,}",
                 f"{r['excess_nullity']:,}", expected, nu_range, f"{r['first_nullity']:,}",
                 f"`{r['first_layer_name']}` ({r['first_shape']})", _paper_cell(r["name"])]
        lines.append("| " + " | ".join(cells) + " |")
    seconds, loads = sum(r["seconds"] for r in rows), [r["load_average"] for r in rows]
    lines += ["", f"torch {torch.__version__}; the audits above took {seconds:.0f} s in all (wall clock, at load "
              f"averages {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores; `--json FILE` writes every row, "
              "with its time and load, as JSON).", "", DIFFERENCES]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Table-1-style audit of a list of architectures.")
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), help="timm:/tv:/registry names")
    parser.add_argument("--convention", choices=["paper", "grouped"], default="paper")
    parser.add_argument("--layers", choices=["paper", "all"], default="paper",
                        help="paper: Table 1's layer set (aux heads, no ConvTranspose); all: every matrix")
    parser.add_argument("--weights", nargs="*", default=[], metavar="MODEL=FILE",
                        help="local weights files for some models (trained rows)")
    parser.add_argument("--pretrained", action="store_true",
                        help="the libraries' pretrained weights for every model without --weights (needs a network)")
    parser.add_argument("--out", default="docs/table1.md")
    parser.add_argument("--json", default=None, help="also write the rows (with timings) to this JSON file")
    args = parser.parse_args()
    weights = _parse_weights(parser, args.weights)
    for target in filter(None, (args.out, args.json)):
        if not Path(target).parent.is_dir():
            parser.error(f"{target}: its folder does not exist")
    rows = []
    for name in tqdm(args.models, desc="table1", unit="model"):
        torch.manual_seed(0)
        try:
            rows.append(audit_row(name, args.convention, weights.get(name), args.layers,
                                  args.pretrained and name not in weights))
        except (ValueError, OSError, RuntimeError) as err:  # offline download, bad file: one line, no traceback
            parser.exit(1, f"table1: {name}: {err.args[0] if err.args else err} (here: --weights {name}=FILE)\n")
        tqdm.write(f"{name}: nu {rows[-1]['nu']}, mu {rows[-1]['mu']}, first_nullity {rows[-1]['first_nullity']}"
                   f" ({rows[-1]['seconds']} s)")
    Path(args.out).write_text(markdown(rows, args.convention, args.layers))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
