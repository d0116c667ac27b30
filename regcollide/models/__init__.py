"""Model registry: ``create_model(name, ...)`` and ``list_models()``.

``name`` is one of

- a registry name (``mlp``, ``lenet5``, ``cnn-small``, ``resnet18-cifar``, ``vit-tiny``);
- ``timm:<name>`` or ``hf-hub:<repo>`` (through timm), ``tv:<name>`` (torchvision);
- ``rb:<dataset>/<threat>/<name>``, a RobustBench model (e.g. ``rb:cifar10/Linf/Standard``);
- ``module:callable`` or ``path/to/file.py:callable``, the user's own ``nn.Module`` factory.

Models are built at random init; ``pretrained=True`` (or a torchvision weights enum name in ``weights``)
fetches the library's weights on request, and ``weights=<local file>`` loads any plain state dict.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from regcollide.models import interventions, resnet_cifar, small, vit  # noqa: F401  (registers the zoo)
from regcollide.models.external import (
    create_timm,
    create_torchvision,
    timm_default_geometry,
    torchvision_default_img_size,
)
from regcollide.models.normalize import Normalize, WithNormalize
from regcollide.models.rb import create_robustbench
from regcollide.models.rb import geometry as robustbench_geometry
from regcollide.models.registry import register_model, registered, registry_names
from regcollide.models.user import create_user_model, is_user_factory
from regcollide.models.weights import load_weights_file

__all__ = ["create_model", "list_models", "register_model", "default_geometry", "is_external",
           "load_weights_file", "Normalize", "WithNormalize"]

EXTERNAL_SCHEMES = ("timm:", "tv:", "rb:", "hf-hub:")


def list_models() -> list[str]:
    """Registry names (``timm:``, ``tv:``, ``rb:``, ``hf-hub:`` and ``module:callable`` resolve on demand)."""
    return registry_names()


def is_external(name: str) -> bool:
    """Models with their own fixed geometry (ImageNet, or the RobustBench dataset's), not the data's."""
    return name.startswith(EXTERNAL_SCHEMES)


def _timm_name(name: str) -> str:
    return name[5:] if name.startswith("timm:") else name  # hf-hub:<repo> goes to timm as it is


def default_geometry(name: str) -> dict:
    """Input geometry a model expects when none is given: MNIST for the zoo and user factories, ImageNet for
    timm/tv, the benchmark's dataset for RobustBench."""
    if name.startswith(("timm:", "hf-hub:")):
        chans, size = timm_default_geometry(_timm_name(name))
        return {"num_classes": None, "in_chans": chans, "img_size": size}
    if name.startswith("tv:"):
        return {"num_classes": None, "in_chans": 3, "img_size": torchvision_default_img_size(name[3:])}
    if name.startswith("rb:"):
        return robustbench_geometry(name[3:])
    if is_user_factory(name):
        return {"num_classes": 10, "in_chans": 1, "img_size": 28}
    registered(name)
    default_chans = 3 if name == "resnet18-cifar" else 1
    return {"num_classes": 10, "in_chans": default_chans, "img_size": 32 if default_chans == 3 else 28}


def _is_local_file(weights: str | os.PathLike | None) -> bool:
    return weights is not None and (isinstance(weights, Path) or Path(str(weights)).expanduser().is_file()
                                    or os.sep in str(weights) or str(weights).endswith((".safetensors", ".pt",
                                                                                       ".pth", ".bin")))


def _build(name: str, num_classes, in_chans, img_size, width, pretrained, enum, kwargs) -> nn.Module:
    if name.startswith(("timm:", "hf-hub:")):
        return create_timm(_timm_name(name), num_classes, in_chans, img_size, pretrained=pretrained, **kwargs)
    if name.startswith("tv:"):
        return create_torchvision(name[3:], num_classes, in_chans, img_size,
                                  weights=enum or ("DEFAULT" if pretrained else None), **kwargs)
    if name.startswith("rb:"):
        return create_robustbench(name[3:], pretrained=pretrained)
    if pretrained:
        raise ValueError(f"model '{name}' has no pretrained weights to download: pass --weights FILE.")
    if is_user_factory(name):
        return create_user_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                 width=width, **kwargs)
    geometry = default_geometry(name)
    return registered(name)(num_classes=num_classes or geometry["num_classes"],
                            in_chans=in_chans or geometry["in_chans"],
                            img_size=img_size or geometry["img_size"], width=width, **kwargs)


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 img_size: int | None = None, width: float = 1.0, pretrained: bool = False,
                 weights: str | os.PathLike | None = None, pretrained_file: str | None = None,
                 **kwargs) -> nn.Module:
    """Build a model that takes images in [0, 1] and returns logits (or the task's own outputs).

    Registry models default to MNIST geometry (10 classes, 1x28x28; ``resnet18-cifar``: 3x32x32);
    ``timm:``/``tv:`` models default to their own (ImageNet), ``rb:`` models to their benchmark's.
    ``width`` scales the zoo's channel and unit counts (external models ignore it).

    ``pretrained=True`` downloads the library's weights (timm's default tag, torchvision's ``DEFAULT``,
    RobustBench's checkpoint), failing within seconds offline. ``weights`` is a torchvision weights enum
    name (``"IMAGENET1K_V2"``) or a local file (safetensors or ``torch.save`` state dict in torchvision,
    timm, RobustBench or regcollide layout); ``pretrained_file`` is the same as a local ``weights`` file.
    """
    local = pretrained_file or (weights if _is_local_file(weights) else None)
    enum = None if local or weights is None else str(weights)
    if enum and not name.startswith("tv:"):
        raise ValueError(f"weights '{enum}' is neither a local file nor usable with '{name}' (weights enum "
                         "names are for tv: models).")
    model = _build(name, num_classes, in_chans, img_size, width, pretrained and not local, enum, kwargs)
    if local:
        load_weights_file(model, local)
    return model
