"""Weight matrices of a network, one per auditable layer, in registration and in forward order.

Every analysis in regcollide that reasons about "the matrix of a layer" (the spectrum audit, the
Null-space search, the singular-value regularizers) goes through this file, so that all of them agree on
which tensors count and how a convolution becomes a matrix. The conventions follow
``docs/design.md`` (Conventions), after Ozbulak et al., "Exact Feature Collisions in Neural Networks"
(arXiv 2022), Table 1:

- ``Linear``: ``weight``, shape (out, in).
- ``ConvNd`` (1d/2d/3d, any groups/dilation/stride): the **paper** convention is
  ``weight.reshape(out, -1)``, shape (out, in/g * prod(k)). The **grouped** convention gives one block
  per group, (out/g) x (in/g * prod(k)); nullities are summed over the blocks.
- ``ConvTransposeNd``: the map from one input position's channels to its output window. Its weight is
  (in, out/g, *k), so the matrix is ``weight.reshape(in, -1).T``, shape (out/g * prod(k), in) in the
  paper convention, and per group (out/g * prod(k)) x (in/g) in the grouped convention.
- ``nn.MultiheadAttention``: ``in_proj_weight`` (3E, E), or ``q_proj_weight``/``k_proj_weight``/
  ``v_proj_weight`` when key/value dims differ, plus ``out_proj`` (E, E). timm attention blocks use a
  plain ``nn.Linear`` for qkv, which is simply a Linear here.

All matrices are views/reshapes of the live parameters: no ``detach``, no ``.data``, so regularizers
can backpropagate through them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = [
    "CONVENTIONS",
    "LAYER_SETS",
    "WeightLayer",
    "iter_weight_layers",
    "layer_matrix",
    "layer_shape",
]

_CONV = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}
_CONV_T = {
    nn.ConvTranspose1d: "convtranspose1d",
    nn.ConvTranspose2d: "convtranspose2d",
    nn.ConvTranspose3d: "convtranspose3d",
}
_MHA_IN_KINDS = {"mha_in_proj": "in_proj_weight", "mha_q_proj": "q_proj_weight",
                 "mha_k_proj": "k_proj_weight", "mha_v_proj": "v_proj_weight"}
CONVENTIONS = ("paper", "grouped")
# "paper": the layer set of Ozbulak et al.'s Table 1, which leaves ConvTranspose layers out (Mask R-CNN
# n_theta 73, Keypoint R-CNN 76); "all": every auditable matrix.
LAYER_SETS = ("all", "paper")


@dataclass
class WeightLayer:
    """One auditable weight matrix. ``module`` is the owning module (the MHA module for its in-proj)."""

    name: str
    module: nn.Module
    kind: str


def _kind_of(module: nn.Module) -> str | None:
    for cls, kind in _CONV.items():
        if isinstance(module, cls):
            return kind
    for cls, kind in _CONV_T.items():
        if isinstance(module, cls):
            return kind
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _has_weight(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, Tensor) and not isinstance(weight, nn.parameter.UninitializedParameter)


def iter_weight_layers(model: nn.Module, layer_set: str = "all") -> list[WeightLayer]:
    """Every auditable weight matrix of ``model`` in module-registration order.

    An ``nn.MultiheadAttention`` contributes its input projection(s) followed by ``out_proj``.
    Modules seen twice (shared weights) are listed once, under their first name. ``layer_set="paper"``
    leaves out ConvTranspose layers, as Ozbulak et al.'s Table 1 does.
    """
    if layer_set not in LAYER_SETS:
        raise ValueError(f"Unknown layer set {layer_set!r}; choose one of {', '.join(LAYER_SETS)}.")
    layers = _all_weight_layers(model)
    if layer_set == "paper":
        return [layer for layer in layers if not layer.kind.startswith("convtranspose")]
    return layers


def _all_weight_layers(model: nn.Module) -> list[WeightLayer]:
    layers: list[WeightLayer] = []
    mha_out_projs: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=True):
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            if module._qkv_same_embed_dim:
                layers.append(WeightLayer(f"{prefix}in_proj", module, "mha_in_proj"))
            else:
                for kind in ("mha_q_proj", "mha_k_proj", "mha_v_proj"):
                    layers.append(WeightLayer(f"{prefix}{kind[4:]}", module, kind))
            mha_out_projs.add(id(module.out_proj))
            continue
        if id(module) in mha_out_projs:
            layers.append(WeightLayer(name, module, "mha_out_proj"))
            continue
        kind = _kind_of(module)
        if kind is not None and _has_weight(module):
            layers.append(WeightLayer(name, module, kind))
    return layers


def _resolve(layer_or_module: WeightLayer | nn.Module) -> tuple[nn.Module, str]:
    if isinstance(layer_or_module, WeightLayer):
        return layer_or_module.module, layer_or_module.kind
    if isinstance(layer_or_module, nn.MultiheadAttention):
        if not layer_or_module._qkv_same_embed_dim:
            raise ValueError(
                "This MultiheadAttention has separate q/k/v projections; pass the WeightLayer entries "
                "from iter_weight_layers(model) instead of the module."
            )
        return layer_or_module, "mha_in_proj"
    kind = _kind_of(layer_or_module)
    if kind is None:
        raise ValueError(
            f"{type(layer_or_module).__name__} has no auditable weight matrix; supported: Linear, "
            "Conv1d/2d/3d, ConvTranspose1d/2d/3d, MultiheadAttention."
        )
    return layer_or_module, kind


def layer_matrix(layer_or_module: WeightLayer | nn.Module, convention: str = "paper") -> Tensor | list[Tensor]:
    """The (out, in) matrix of a layer (``paper``), or its list of per-group blocks (``grouped``).

    For layers without groups the grouped convention returns a one-element list. The result shares
    storage and autograd history with the parameter.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}.")
    module, kind = _resolve(layer_or_module)
    if kind in _MHA_IN_KINDS:
        matrix = getattr(module, _MHA_IN_KINDS[kind])  # (3E, E) or (E, kdim/vdim)
        return matrix if convention == "paper" else [matrix]
    weight = module.weight
    if kind in ("linear", "mha_out_proj"):
        return weight if convention == "paper" else [weight]
    groups = getattr(module, "groups", 1)
    if kind.startswith("conv") and not kind.startswith("convtranspose"):
        out_channels = weight.shape[0]
        matrix = weight.reshape(out_channels, -1)  # (out, in/g * prod(k))
        if convention == "paper":
            return matrix
        return list(matrix.chunk(groups, dim=0))  # g x (out/g, in/g * prod(k))
    # ConvTranspose: weight (in, out/g, *k); one input position's channels -> its output window.
    in_channels = weight.shape[0]
    matrix = weight.reshape(in_channels, -1).transpose(0, 1)  # (out/g * prod(k), in)
    if convention == "paper":
        return matrix
    return list(matrix.chunk(groups, dim=1))  # g x (out/g * prod(k), in/g)


def layer_shape(layer_or_module: WeightLayer | nn.Module, convention: str = "paper") -> list[tuple[int, int]]:
    """(out, in) of each block ``layer_matrix`` would return, without touching the values."""
    blocks = layer_matrix(layer_or_module, convention)
    blocks = [blocks] if isinstance(blocks, Tensor) else blocks
    return [(int(b.shape[0]), int(b.shape[1])) for b in blocks]
