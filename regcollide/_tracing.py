"""Forward-order tracing: which weight layer the input meets first, found by hooks on one forward pass.

The spectrum audit's nullity(W1) and the Null-space search (Ozbulak et al., "Exact Feature Collisions in
Neural Networks", 2022, Definition 4) both need W1, the first weight applied to the input. Registration
order is unreliable (heads are often registered before stems), so we run one forward pass in eval mode
with pre-hooks on every auditable layer (``regcollide.audit.matrices``) and stop it at the first one.
torchvision detection models take a list of images; ``example_inputs`` builds the right call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from regcollide._modes import eval_mode

__all__ = [
    "example_inputs",
    "first_weight_layer",
    "forward_order",
]

from regcollide.audit.matrices import WeightLayer, iter_weight_layers


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


def _run_with_hooks(model: nn.Module, example_input, stop_after_first: bool, layers: list[WeightLayer]) -> list[str]:
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
    return _run_with_hooks(model, example_input, stop_after_first=False, layers=iter_weight_layers(model))


def first_weight_layer(model: nn.Module, input_shape: tuple | None = None, layer_set: str = "all",
                       layers: list[WeightLayer] | None = None) -> tuple[WeightLayer, str]:
    """W1: the first weight applied to the input, and how it was found.

    With ``input_shape`` (C, H, W) one forward pass with hooks finds it ("forward"); the pass stops at
    the first weight layer, so it is cheap even for detection models. Without a shape we fall back to
    module-registration order ("registration"), which can be wrong (e.g. heads registered before stems).
    ``layer_set`` is that of ``iter_weight_layers``; ``layers``, when given, is its result for this model
    and layer set (the audit has it already, and listing a large model's layers is not free).
    """
    layers = iter_weight_layers(model, layer_set) if layers is None else layers
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear, Conv or MultiheadAttention weights to audit.")
    if input_shape is None:
        return layers[0], "registration"
    order = _run_with_hooks(model, example_inputs(model, tuple(input_shape)), stop_after_first=True, layers=layers)
    if not order:
        raise ValueError(
            f"No weight layer ran during a forward pass with input shape {tuple(input_shape)}; "
            "check the input shape (C, H, W)."
        )
    by_name = {layer.name: layer for layer in layers}
    return by_name[order[0]], "forward"
