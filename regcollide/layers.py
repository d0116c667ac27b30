"""Weight matrices of a network, one per auditable layer, in registration and in forward order.

Every analysis in regcollide that reasons about "the matrix of a layer" (the spectrum audit, the
Null-space search, the singular-value regularizers) goes through this file, so that all of them agree on
which tensors count and how a convolution becomes a matrix. The conventions follow
``DESIGN.md`` (Conventions), after Ozbulak et al., "Exact Feature Collisions in Neural Networks"
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

import torch
from torch import Tensor, nn

from regcollide.modes import eval_mode

__all__ = [
    "WeightLayer",
    "example_inputs",
    "first_weight_layer",
    "forward_order",
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


def iter_weight_layers(model: nn.Module) -> list[WeightLayer]:
    """Every auditable weight matrix of ``model`` in module-registration order.

    An ``nn.MultiheadAttention`` contributes its input projection(s) followed by ``out_proj``.
    Modules seen twice (shared weights) are listed once, under their first name.
    """
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


def is_detection_model(model: nn.Module) -> bool:
    """torchvision detection models take a list of (C, H, W) images and return one dict per image."""
    from torchvision.models import detection

    kinds = tuple(
        cls for cls in (getattr(detection, n, None) for n in ("GeneralizedRCNN", "RetinaNet", "FCOS", "SSD"))
        if cls is not None
    )
    return any(isinstance(m, kinds) for m in model.modules())


def example_inputs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    """Positional arguments for one forward pass of ``model`` on a single random image in [0, 1]."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, *input_shape, generator=generator).to(device=device, dtype=dtype)  # (1, C, H, W)
    if is_detection_model(model):
        return ([image[0]],)
    return (image,)


class StopForward(Exception):
    """Raised from a hook to end a forward pass early once we know what we came for."""


def _check_input(module: nn.Module, x: Tensor) -> None:
    """The first weight layer stops the pass early, so check here that the input fits it."""
    if isinstance(module, nn.Linear):
        expected, got = module.in_features, x.shape[-1] if x.ndim else None
    elif isinstance(module, nn.MultiheadAttention):
        expected, got = module.embed_dim, x.shape[-1] if x.ndim else None
    elif hasattr(module, "in_channels") and x.ndim >= 2:
        expected, got = module.in_channels, x.shape[1]
    else:
        return
    if expected != got:
        raise ValueError(f"input of shape {tuple(x.shape)} reaches a layer expecting {expected} input features")


def _run_with_hooks(model: nn.Module, example_input, stop_after_first: bool) -> list[str]:
    layers = iter_weight_layers(model)
    order: list[str] = []
    seen: set[str] = set()

    def mark(names: list[str], module: nn.Module | None = None, args: tuple = ()) -> None:
        if module is not None and args and isinstance(args[0], Tensor):
            _check_input(module, args[0])
        for name in names:
            if name not in seen:
                seen.add(name)
                order.append(name)
        if stop_after_first and order:
            raise StopForward

    by_module: dict[int, list[WeightLayer]] = {}
    for layer in layers:
        by_module.setdefault(id(layer.module), []).append(layer)
    handles = []
    for layer_list in by_module.values():
        module = layer_list[0].module
        if isinstance(module, nn.MultiheadAttention):
            # MHA applies in_proj at its start and out_proj (without calling the submodule) at its end.
            ins = [entry.name for entry in layer_list if entry.kind != "mha_out_proj"]
            handles.append(module.register_forward_pre_hook(lambda m, a, names=ins: mark(names, m, a)))
            outs = [entry.name for entry in layers if entry.module is module.out_proj]
            handles.append(module.register_forward_hook(lambda m, a, o, names=outs: mark(names)))
        else:
            names = [entry.name for entry in layer_list]
            handles.append(module.register_forward_pre_hook(lambda m, a, names=names: mark(names, m, a)))
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with eval_mode(model), torch.no_grad():
            model(*args)
    except StopForward:
        pass
    except Exception as err:  # a wrong input shape surfaces deep inside the model: say what to fix
        raise ValueError(
            f"One forward pass of {type(model).__name__} failed ({type(err).__name__}: {err}); "
            "check the input shape (C, H, W) given for finding W1."
        ) from err
    finally:
        for handle in handles:
            handle.remove()
    return order


def forward_order(model: nn.Module, example_input) -> list[str]:
    """Weight-layer names in order of first execution during one forward pass (eval mode, no grad).

    ``example_input`` is a tensor, or a tuple of positional arguments (e.g. ``([image],)`` for
    torchvision detection models). Layers that never run are left out. The model's train/eval mode is
    restored afterwards.
    """
    return _run_with_hooks(model, example_input, stop_after_first=False)


def first_weight_layer(model: nn.Module, input_shape: tuple | None = None) -> tuple[WeightLayer, str]:
    """W1: the first weight applied to the input, and how it was found.

    With ``input_shape`` (C, H, W) one forward pass with hooks finds it ("forward"); the pass stops at
    the first weight layer, so it is cheap even for detection models. Without a shape we fall back to
    module-registration order ("registration"), which can be wrong (e.g. heads registered before stems).
    """
    layers = iter_weight_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear, Conv or MultiheadAttention weights to audit.")
    if input_shape is None:
        return layers[0], "registration"
    order = _run_with_hooks(model, example_inputs(model, tuple(input_shape)), stop_after_first=True)
    if not order:
        raise ValueError(
            f"No weight layer ran during a forward pass with input shape {tuple(input_shape)}; "
            "check the input shape (C, H, W)."
        )
    by_name = {layer.name: layer for layer in layers}
    return by_name[order[0]], "forward"
