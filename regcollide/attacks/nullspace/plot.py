"""PNG grid of Null-space collisions in the style of Ozbulak et al. (arXiv 2022), Figures 1-3.

One row per example: original x, perturbation P (rescaled to [0, 1] around grey, so 0 is mid-grey), the
colliding image x̂ (values outside [0, 1] shown clipped, the stored image is not), each titled with the
model's top prediction; segmentation models get their predicted masks as extra columns.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from regcollide.attacks.nullspace.outputs import prediction_of


def _show(image: Tensor):
    """(C, H, W) -> what imshow takes: (H, W) grey or (H, W, 3) RGB, clipped to [0, 1] for display."""
    image = image.detach().cpu().float().clamp(0, 1)
    return image[0].numpy() if image.shape[0] != 3 else image.permute(1, 2, 0).numpy()


def describe(sample: dict[str, Tensor]) -> str:
    """Short text for one output: top class and probability, detection count, or the mask's main class."""
    if "labels" in sample:
        labels = sample["labels"].tolist()
        return f"{len(labels)} detections" + (f": {labels[:3]}" if labels else "")
    pred = prediction_of(sample)
    if pred is None:
        return ""
    key, value = pred
    if value.dim() == 0:
        probs = torch.softmax(sample[key].double(), dim=0)
        return f"class {int(value)} (p={probs[int(value)].item():.2f})"
    classes, counts = value.unique(return_counts=True)
    return f"mask: mostly class {int(classes[counts.argmax()])}"


def save_grid(path: str | Path, originals: Tensor, colliding: Tensor, reference_outputs: list[dict],
              colliding_outputs: list[dict], collisions: int = 1, exact: bool = False, rows: int = 4) -> Path:
    """Write the grid; ``colliding`` and ``colliding_outputs`` are sample-major with ``collisions`` per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(originals), len(reference_outputs))
    first = prediction_of(reference_outputs[0]) if reference_outputs else None
    segmentation = first is not None and first[1].dim() >= 2
    cols = 5 if segmentation else 3
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    verdict = "exact collision" if exact else "approximate (not exact) collision"
    for r in range(rows):
        j = r * collisions  # first collision of image r
        delta = (colliding[j] - originals[r]).double()
        scale = delta.abs().max().clamp_min(1e-12)
        panels = [(_show(originals[r]), f"x: {describe(reference_outputs[r])}"),
                  (_show(0.5 + 0.5 * delta / scale), f"P (‖P‖∞={scale.item():.3f})"),
                  (_show(colliding[j]), f"x̂: {describe(colliding_outputs[j])}")]
        if segmentation:
            panels.insert(1, (prediction_of(reference_outputs[r])[1].numpy(), "mask(x)"))
            panels.append((prediction_of(colliding_outputs[j])[1].numpy(), "mask(x̂)"))
        for ax, (picture, title) in zip(axes[r], panels):
            is_mask = picture.ndim == 2 and title.startswith("mask")
            ax.imshow(picture, cmap="tab20" if is_mask else "gray", vmin=None if is_mask else 0,
                      vmax=None if is_mask else 1, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"Null-space search (Ozbulak et al.): {verdict}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
