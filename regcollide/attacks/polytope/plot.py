"""Picture of polytope-search results laid out like Table 1 of Li, Zhang & Malik (NeurIPS 2019).

One row per target: the target, its K vertices, then a few interpolated samples (random convex
combinations of the vertices), each titled with the model's predicted class and probability.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

MAX_ROWS = 4


def _show(ax, image: Tensor, title: str) -> None:
    picture = image.detach().cpu().float()
    if picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(picture[:3].permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_polytope(result, path: str | Path, class_names: list[str] | None = None) -> Path:
    """Write the Table-1-style PNG for a :class:`~regcollide.attacks.polytope.evaluate.PolytopeResult`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = result.examples[:MAX_ROWS]
    if not examples:
        raise ValueError("the result holds no examples to plot")

    def name(c: int) -> str:
        return class_names[c] if class_names and c < len(class_names) else str(c)

    k, m = len(examples[0]["vertices"]), len(examples[0]["samples"])
    cols = 1 + k + m
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.25 * cols, 1.45 * len(examples) + 0.4),
                             squeeze=False)
    for row, ex in zip(axes, examples):
        _show(row[0], ex["target"], f"target\n{name(ex['target_pred'])} ({ex['target_prob']:.2f})")
        for i in range(k):
            _show(row[1 + i], ex["vertices"][i], f"vertex {i + 1}\n{name(ex['vertex_pred'][i])} "
                                                  f"({ex['vertex_prob'][i]:.2f})")
        for i in range(m):
            _show(row[1 + k + i], ex["samples"][i], f"sample {i + 1}\n{name(ex['sample_pred'][i])} "
                                                     f"({ex['sample_prob'][i]:.2f})")
    d = result.to_dict()
    ratio = "n/a (no converged collision)" if d["distance_ratio"] is None else f"{d['distance_ratio']:.2f}"
    fig.suptitle(f"Polytope search at layer {d['layer']!r} ({d['loss']}, init={d['init']}): "
                 f"success {d['success_rate']:.1%}, distance ratio {ratio}, "
                 f"max residual {d['max_rel_feature_residual']:.2%}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
