"""Adapters for ``timm:<name>`` and ``tv:<name>`` models, always at random init.

Pretrained weights load only from a local file (``pretrained_file``): nothing is downloaded. Each network
gets its normalization prepended as a :class:`Normalize` module, so it takes [0, 1] images. torchvision
detection models normalize inside their own ``GeneralizedRCNNTransform``, so they are returned as they are.
"""

from __future__ import annotations

import difflib

from torch import nn

from regcollide.models.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize, WithNormalize


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    hint = difflib.get_close_matches(name, known, n=3)
    suggestion = f" Close matches: {', '.join(hint)}." if hint else ""
    return ValueError(f"unknown {kind} model '{name}'.{suggestion} See `regcollide models --all`.")


def timm_default_geometry(name: str) -> tuple[int, int]:
    """(in_chans, img_size) from timm's pretrained config, falling back to (3, 224)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) or (3, 224, 224)
    return int(size[0]), int(size[-1])


def create_timm(name: str, num_classes: int | None, in_chans: int | None, img_size: int | None,
                **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    default_chans, default_size = timm_default_geometry(name)
    kw = dict(pretrained=False, **kwargs)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if in_chans is not None:
        kw["in_chans"] = in_chans
    if img_size is not None and img_size != default_size:
        kw["img_size"] = img_size  # ViT-style models need it; CNNs are size-agnostic and reject it
    try:
        net = timm.create_model(name, **kw)
    except TypeError:
        kw.pop("img_size", None)
        net = timm.create_model(name, **kw)
    cfg = net.pretrained_cfg or {}
    chans = in_chans or default_chans
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if len(mean) != chans:
        mean, std = (sum(mean) / len(mean),) * chans, (sum(std) / len(std),) * chans
    return WithNormalize(Normalize(mean, std), net)


def is_detection(name: str) -> bool:
    from torchvision.models import detection, list_models

    return name in list_models(module=detection)


def is_segmentation(name: str) -> bool:
    from torchvision.models import list_models, segmentation

    return name in list_models(module=segmentation)


def create_torchvision(name: str, num_classes: int | None, in_chans: int | None, img_size: int | None,
                       **kwargs) -> nn.Module:
    from torchvision.models import get_model, list_models

    if name not in list_models():
        raise _unknown("torchvision", name, list_models())
    if in_chans not in (None, 3):
        raise ValueError(f"torchvision model '{name}' takes 3-channel images, not {in_chans}: "
                         "grey data is replicated to RGB by regcollide.data.adapt_images.")
    kw = dict(weights=None, **kwargs)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if is_detection(name) or is_segmentation(name):
        kw.setdefault("weights_backbone", None)  # the default would download ImageNet backbone weights
    if name in ("inception_v3", "googlenet"):
        kw.setdefault("aux_logits", False)
        kw.setdefault("init_weights", True)
    net = get_model(name, **kw)
    if is_detection(name):
        return net
    return WithNormalize(Normalize(IMAGENET_MEAN, IMAGENET_STD), net)


def torchvision_default_img_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224
