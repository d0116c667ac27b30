"""Model registry: ``create_model(name, ...)`` and ``list_models()``.

``name`` is a registry name (``mlp``, ``lenet5``, ``cnn-small``, ``resnet18-cifar``, ``vit-tiny``), or
``timm:<name>`` / ``tv:<name>`` for any timm or torchvision model at random init.
"""

from __future__ import annotations

from torch import nn

from regcollide.models import resnet_cifar, small, vit  # noqa: F401  (registers the zoo)
from regcollide.models.external import (
    create_timm,
    create_torchvision,
    timm_default_geometry,
    torchvision_default_img_size,
)
from regcollide.models.normalize import Normalize, WithNormalize
from regcollide.models.registry import register_model, registered, registry_names

__all__ = ["create_model", "list_models", "register_model", "default_geometry", "is_external",
           "Normalize", "WithNormalize"]


def list_models() -> list[str]:
    """Registry names (``timm:`` and ``tv:`` models are resolved on demand)."""
    return registry_names()


def is_external(name: str) -> bool:
    return name.startswith(("timm:", "tv:"))


def default_geometry(name: str) -> dict:
    """Input geometry a model expects when none is given: MNIST for the zoo, ImageNet for timm/tv."""
    if name.startswith("timm:"):
        chans, size = timm_default_geometry(name[5:])
        return {"num_classes": None, "in_chans": chans, "img_size": size}
    if name.startswith("tv:"):
        return {"num_classes": None, "in_chans": 3, "img_size": torchvision_default_img_size(name[3:])}
    registered(name)
    default_chans = 3 if name == "resnet18-cifar" else 1
    return {"num_classes": 10, "in_chans": default_chans, "img_size": 32 if default_chans == 3 else 28}


def _load_local_weights(model: nn.Module, path: str) -> None:
    from regcollide.io import load_state_dict_checked, read_state_dict

    state = read_state_dict(path)
    # A file saved from the bare timm/torchvision network has no "net." prefix: load it into the net.
    target = model.net if isinstance(model, WithNormalize) and not any(k.startswith("net.") for k in state) \
        else model
    load_state_dict_checked(target, state, source=str(path))


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 img_size: int | None = None, width: float = 1.0, pretrained_file: str | None = None,
                 **kwargs) -> nn.Module:
    """Build a model that takes images in [0, 1] and returns logits (or the task's own outputs).

    Registry models default to MNIST geometry (10 classes, 1x28x28; ``resnet18-cifar``: 3x32x32);
    ``timm:``/``tv:`` models default to their own (ImageNet). ``width`` scales the zoo's channel and unit
    counts (timm/tv models ignore it). ``pretrained_file`` is a local safetensors or ``torch.save`` file.
    """
    if name.startswith("timm:"):
        model = create_timm(name[5:], num_classes, in_chans, img_size, **kwargs)
    elif name.startswith("tv:"):
        model = create_torchvision(name[3:], num_classes, in_chans, img_size, **kwargs)
    else:
        geometry = default_geometry(name)
        model = registered(name)(num_classes=num_classes or geometry["num_classes"],
                                 in_chans=in_chans or geometry["in_chans"],
                                 img_size=img_size or geometry["img_size"], width=width, **kwargs)
    if pretrained_file:
        _load_local_weights(model, pretrained_file)
    return model
