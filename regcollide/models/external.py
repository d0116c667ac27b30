"""Adapters for ``timm:<name>``, ``hf-hub:<repo>`` and ``tv:<name>`` models, at random init or pretrained.

Pretrained weights come through the libraries' own loaders, only on request (``pretrained=True`` for timm,
a weights enum name such as ``"IMAGENET1K_V2"`` or ``"DEFAULT"`` for torchvision); offline they fail within
seconds naming ``--weights FILE`` (see :mod:`regcollide.models.online`). Each network gets its weights'
normalization prepended as a :class:`Normalize` module, so it takes [0, 1] images. torchvision detection
models normalize inside their own ``GeneralizedRCNNTransform``, so they are returned as they are.
"""

from __future__ import annotations

import difflib
from urllib.error import URLError

from torch import nn

from regcollide.io import CheckpointError
from regcollide.models.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize, WithNormalize
from regcollide.models.online import hub_offline_mode, require_hub, require_url

HF_HUB = "hf-hub:"


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    hint = difflib.get_close_matches(name, known, n=3)
    suggestion = f" Close matches: {', '.join(hint)}." if hint else ""
    return ValueError(f"unknown {kind} model '{name}'.{suggestion} See `regcollide models --all`.")


def _fetch_failed(model: str, err: BaseException) -> CheckpointError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return CheckpointError(f"could not load pretrained weights for '{model}': {first}. Offline, pass a local "
                           "file with --weights FILE.")


def timm_default_geometry(name: str) -> tuple[int, int]:
    """(in_chans, img_size) from timm's pretrained config, falling back to (3, 224) (``hf-hub:`` ids)."""
    import timm

    if name.startswith(HF_HUB):
        return 3, 224
    cfg = timm.models.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) or (3, 224, 224)
    return int(size[0]), int(size[-1])


def _timm_cache_only(name: str, pretrained: bool) -> bool:
    """Check the weights (and an ``hf-hub:`` model's config) can be had; True: read the hub cache only."""
    import timm

    label = name if name.startswith(HF_HUB) else f"timm:{name}"
    if name.startswith(HF_HUB):
        repo = name[len(HF_HUB):]
        cache_only = require_hub(label, repo, ("config.json",))  # the architecture itself comes from the hub
        return (require_hub(label, repo) or cache_only) if pretrained else cache_only
    if not pretrained:
        return False
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise CheckpointError(f"timm has no pretrained weights for '{name}': pass --weights FILE.")
    if cfg.hf_hub_id:
        return require_hub(label, cfg.hf_hub_id)
    if cfg.url:
        require_url(label, cfg.url)
        return False
    raise CheckpointError(f"timm has no pretrained weights for '{name}': pass --weights FILE.")


def create_timm(name: str, num_classes: int | None, in_chans: int | None, img_size: int | None,
                pretrained: bool = False, **kwargs) -> nn.Module:
    import timm

    if not name.startswith(HF_HUB) and not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    default_chans, default_size = timm_default_geometry(name)
    kw = dict(pretrained=pretrained, **kwargs)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if in_chans is not None:
        kw["in_chans"] = in_chans
    if img_size is not None and img_size != default_size:
        kw["img_size"] = img_size  # ViT-style models need it; CNNs are size-agnostic and reject it
    with hub_offline_mode(_timm_cache_only(name, pretrained)):
        net = _timm_build(name, kw)
    cfg = net.pretrained_cfg or {}
    chans = in_chans or default_chans
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if len(mean) != chans:
        mean, std = (sum(mean) / len(mean),) * chans, (sum(std) / len(std),) * chans
    return WithNormalize(Normalize(mean, std), net)


def _timm_build(name: str, kw: dict) -> nn.Module:
    import timm
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        try:
            return timm.create_model(name, **kw)
        except TypeError:
            kw.pop("img_size", None)
            return timm.create_model(name, **kw)
    except (LocalEntryNotFoundError, HfHubHTTPError, URLError, OSError, RuntimeError) as err:
        raise _fetch_failed(f"timm:{name}", err) from err


def is_detection(name: str) -> bool:
    from torchvision.models import detection, list_models

    return name in list_models(module=detection)


def is_segmentation(name: str) -> bool:
    from torchvision.models import list_models, segmentation

    return name in list_models(module=segmentation)


def torchvision_weights(name: str, weights: str):
    """The weights enum member ``weights`` (``"DEFAULT"``, ``"IMAGENET1K_V2"``...) of torchvision model ``name``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    names = [member.name for member in enum]
    if weights == "DEFAULT":
        return enum.DEFAULT
    if weights not in names:
        raise ValueError(f"torchvision model '{name}' has no weights '{weights}': use DEFAULT or one of "
                         f"{', '.join(names)}.")
    return enum[weights]


def create_torchvision(name: str, num_classes: int | None, in_chans: int | None, img_size: int | None,
                       weights: str | None = None, **kwargs) -> nn.Module:
    from torchvision.models import get_model, list_models

    if name not in list_models():
        raise _unknown("torchvision", name, list_models())
    if in_chans not in (None, 3):
        raise ValueError(f"torchvision model '{name}' takes 3-channel images, not {in_chans}: "
                         "grey data is replicated to RGB by regcollide.data.adapt_images.")
    member = torchvision_weights(name, weights) if weights else None
    kw = dict(weights=member, **kwargs)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if is_detection(name) or is_segmentation(name):
        kw.setdefault("weights_backbone", None)  # the default would download ImageNet backbone weights
    if name in ("inception_v3", "googlenet"):
        kw.setdefault("aux_logits", member is not None)
        kw.setdefault("init_weights", member is None)
    if member is not None:
        require_url(f"tv:{name}", member.url)
    try:
        net = get_model(name, **kw)
    except (URLError, OSError, RuntimeError) as err:
        raise _fetch_failed(f"tv:{name}", err) from err
    if is_detection(name):
        return net
    preset = member.transforms() if member is not None else None
    mean, std = getattr(preset, "mean", IMAGENET_MEAN), getattr(preset, "std", IMAGENET_STD)
    return WithNormalize(Normalize(tuple(mean), tuple(std)), net)


def torchvision_default_img_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224
