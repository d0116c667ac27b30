"""The weight-spectrum audit: rank, nullity, nu and mu of every weight matrix of a model.

After Ozbulak, Gasparyan, Rao, De Neve, Van Messem, "Exact Feature Collisions in Neural Networks"
(arXiv:2205.15763, 2022), Table 1. For each weight matrix W (out x in, see ``regcollide.layers``):

- ``nullity(W) = in - rank(W)``, the input-patch directions the layer cannot see;
- ``structural nullity = max(0, in - out)``, forced by the shape alone;
- ``excess nullity = nullity - structural``, created by the values: by training, or by float noise.
  Random weights already show some in large square matrices (about (4/pi) n^2 eps(float32) singular
  values of an n x n matrix fall below the default tolerance), so every audit also reports nu and
  the excess at 0.1x, 1x, 10x and 100x the tolerance next to the count expected at random init
  (``regcollide.audit.noise``).

For the model: ``n_weights`` (n_theta), ``nu`` = #matrices with nullity >= 1, ``mu`` = #matrices with
out < in, their fractions, the nullity sums, and ``first_nullity`` = nullity(W1) for W1 the first weight
applied to the input in *forward* order (found with hooks; registration order only as a fallback, which
the result records in ``first_layer_source``).

Ranks are exactly those of ``torch.linalg.matrix_rank`` under the same tolerance (default
``sigma_max * max(out, in) * eps(float32)`` for float32 weights); see ``regcollide.audit.rank`` for the fast
engine and its numerical argument. Example::

    >>> import torchvision
    >>> result = audit(torchvision.models.alexnet(), input_shape=(3, 224, 224))
    >>> result.mu, result.first_nullity
    (7, 299)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from regcollide._tracing import first_weight_layer
from regcollide.audit.matrices import CONVENTIONS, iter_weight_layers, layer_matrix
from regcollide.audit.noise import SENSITIVITY_FACTORS, expected_random_count, tolerance_sensitivity
from regcollide.audit.rank import RankInfo, default_tolerance, rank_and_singular_values, ranks_of

__all__ = ["AuditResult", "LayerAudit", "audit", "default_tolerance", "rank_and_singular_values"]

_METHOD_ORDER = ("cholesky", "deflation", "gram", "svd")  # a layer reports the costliest path of its blocks
TOLERANCE_RULE = "tol = max(atol, rtol * sigma_max); default rtol = max(out, in) * eps(weight dtype)"


@dataclass
class LayerAudit:
    """Audit of one weight layer (summed over its blocks in the grouped convention)."""

    name: str
    kind: str
    out_dim: int
    in_dim: int
    rank: int
    nullity: int
    structural_nullity: int
    sigma_min: float
    sigma_max: float
    max_cosine: float | None
    max_abs_cosine: float | None
    tol: float  # tolerance used (the largest over blocks in the grouped convention)
    rtol: float  # effective rtol (the default depends on the block shape)
    atol: float
    blocks: int = 1
    method: str = "gram"  # the most expensive path of any block: "cholesky" < "gram" < "svd"
    nullity_at: list[int] = field(default_factory=list)  # nullity at each SENSITIVITY_FACTORS multiple of tol
    block_shapes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def expected_random_excess(self) -> float | None:
        """Excess nullity expected from random weights of these shapes at this tolerance (None: atol)."""
        if self.atol:
            return None
        return sum(expected_random_count(o, i, self.rtol) for o, i in self.block_shapes)

    @property
    def excess_nullity(self) -> int:
        return self.nullity - self.structural_nullity

    @property
    def wide(self) -> bool:
        """out < in per block: the paper's row(W) < col(W), counted by mu."""
        return self.out_dim < self.in_dim

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("block_shapes")
        expected = self.expected_random_excess
        return {**data, "excess_nullity": self.excess_nullity,
                "expected_random_excess": None if expected is None else round(expected, 4)}


@dataclass
class AuditResult:
    """Model-level audit; ``to_dict()`` gives the audit contract of docs/design.md plus extras."""

    model: str
    convention: str
    rtol: float | None  # as requested (None: the default rule, see tolerance_rule)
    atol: float | None
    layers: list[LayerAudit]
    first_layer: str
    first_layer_source: str  # "forward" (hooks on one forward pass) or "registration" (fallback)
    input_shape: list[int] | None = None
    tolerance_rule: str = field(default=TOLERANCE_RULE)
    layer_set: str = "all"

    @property
    def n_weights(self) -> int:
        return len(self.layers)

    @property
    def nu(self) -> int:
        return sum(layer.nullity >= 1 for layer in self.layers)

    @property
    def mu(self) -> int:
        return sum(layer.wide for layer in self.layers)

    @property
    def nu_frac(self) -> float:
        return self.nu / max(self.n_weights, 1)

    @property
    def mu_frac(self) -> float:
        return self.mu / max(self.n_weights, 1)

    @property
    def total_nullity(self) -> int:
        return sum(layer.nullity for layer in self.layers)

    @property
    def structural_nullity(self) -> int:
        return sum(layer.structural_nullity for layer in self.layers)

    @property
    def excess_nullity(self) -> int:
        return self.total_nullity - self.structural_nullity

    @property
    def first(self) -> LayerAudit:
        return next(layer for layer in self.layers if layer.name == self.first_layer)

    @property
    def first_nullity(self) -> int:
        return self.first.nullity

    def to_dict(self) -> dict:
        totals = {
            key: getattr(self, key)
            for key in ("n_weights", "nu", "mu", "nu_frac", "mu_frac", "total_nullity", "structural_nullity",
                        "excess_nullity", "first_nullity")
        }
        return {
            "model": self.model,
            "convention": self.convention,
            "rtol": self.rtol,
            "atol": self.atol,
            "tolerance_rule": self.tolerance_rule,
            **totals,
            "first_layer": self.first_layer,
            "first_layer_source": self.first_layer_source,
            "first_excess_nullity": self.first.excess_nullity,
            "input_shape": self.input_shape,
            "layer_set": self.layer_set,
            "tolerance_sensitivity": tolerance_sensitivity(self.layers, SENSITIVITY_FACTORS)
            if self.layers and self.layers[0].nullity_at else [],
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _combine(name: str, kind: str, blocks: list[Tensor], infos: list[RankInfo]) -> LayerAudit:
    shapes = [(int(b.shape[0]), int(b.shape[1])) for b in blocks]
    cosines = [info.max_cosine for info in infos if info.max_cosine is not None]
    abs_cosines = [info.max_abs_cosine for info in infos if info.max_abs_cosine is not None]
    rank = sum(info.rank for info in infos)
    return LayerAudit(
        name=name,
        kind=kind,
        out_dim=sum(s[0] for s in shapes),
        in_dim=sum(s[1] for s in shapes),
        rank=rank,
        nullity=sum(s[1] - info.rank for s, info in zip(shapes, infos, strict=True)),
        structural_nullity=sum(max(0, s[1] - s[0]) for s in shapes),
        sigma_min=min(info.sigma_min for info in infos),
        sigma_max=max(info.sigma_max for info in infos),
        max_cosine=max(cosines) if cosines else None,
        max_abs_cosine=max(abs_cosines) if abs_cosines else None,
        tol=max(info.tol for info in infos),
        rtol=max(info.rtol for info in infos),
        atol=infos[0].atol,
        blocks=len(blocks),
        nullity_at=[sum(s[1] - r for s, r in zip(shapes, ranks, strict=True))
                    for ranks in zip(*(info.ranks_at for info in infos), strict=True)],
        block_shapes=shapes,
        method=max((info.method for info in infos), key=_METHOD_ORDER.index),
    )


def audit(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    convention: str = "paper",
    rtol: float | None = None,
    atol: float | None = None,
    progress: bool = False,
    name: str | None = None,
    layer_set: str = "all",
    cosines: bool = True,
    sensitivity: bool = True,
) -> AuditResult:
    """Audit every weight matrix of ``model`` (Ozbulak et al. 2022, Table 1).

    Args:
        model: any ``nn.Module`` (registry, timm, torchvision classification/segmentation/detection).
        input_shape: (C, H, W) of one input image, used to find W1 by a forward pass with hooks.
            ``None`` falls back to registration order (recorded as ``first_layer_source``).
        convention: ``"paper"`` (ConvNd as ``weight.reshape(out, -1)``) or ``"grouped"`` (one block per
            group, nullities summed).
        rtol, atol: rank tolerance, as in ``torch.linalg.matrix_rank``; default
            ``rtol = max(out, in) * eps(float32)`` per matrix.
        progress: show a tqdm bar over layer shapes.
        name: model name recorded in the result (default: the class name).
        layer_set: ``"all"`` (every Linear, Conv, ConvTranspose and attention matrix) or ``"paper"``
            (Ozbulak et al.'s Table 1 set: ConvTranspose layers excluded).
        cosines: compute the largest cosine between two rows of each matrix (free for wide matrices,
            an m x m product for tall ones); ``False`` reports ``None``.
        sensitivity: also rank at 0.1x, 10x and 100x the tolerance (``tolerance_sensitivity``).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}.")
    layers = iter_weight_layers(model, layer_set)
    first, source = first_weight_layer(model, input_shape, layer_set, layers)  # clear error if there are none
    per_layer_blocks: list[list[Tensor]] = []
    with torch.no_grad():
        for layer in layers:
            matrix = layer_matrix(layer, convention)
            per_layer_blocks.append([matrix] if isinstance(matrix, Tensor) else list(matrix))
    flat = [block for blocks in per_layer_blocks for block in blocks]
    factors = SENSITIVITY_FACTORS if sensitivity else ()
    infos = _ranks_with_progress(flat, dict(rtol=rtol, atol=atol, cosines=cosines, factors=factors), progress)
    results, cursor = [], 0
    for layer, blocks in zip(layers, per_layer_blocks, strict=True):
        results.append(_combine(layer.name, layer.kind, blocks, infos[cursor : cursor + len(blocks)]))
        cursor += len(blocks)
    return AuditResult(
        model=name or type(model).__name__,
        convention=convention,
        rtol=rtol,
        atol=atol,
        layers=results,
        first_layer=first.name,
        first_layer_source=source,
        input_shape=list(input_shape) if input_shape is not None else None,
        layer_set=layer_set,
    )


def _ranks_with_progress(matrices: list[Tensor], options: dict, progress: bool) -> list[RankInfo]:
    """ranks_of over shape groups, largest first, with an optional progress bar."""
    by_shape: dict[tuple, list[int]] = {}
    for i, mat in enumerate(matrices):
        by_shape.setdefault((tuple(mat.shape), mat.dtype), []).append(i)
    order = sorted(by_shape.values(), key=lambda idx: -matrices[idx[0]].numel() * len(idx))
    out: list[RankInfo | None] = [None] * len(matrices)
    bar = tqdm(total=len(matrices), desc="audit", unit="matrix", disable=not progress, leave=False)
    for idx in order:
        for i, info in zip(idx, ranks_of([matrices[i] for i in idx], **options), strict=True):
            out[i] = info
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]
