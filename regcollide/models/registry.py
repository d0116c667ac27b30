"""The model registry: ``@register_model(name)`` in the style of timm, plus ``timm:``/``tv:`` adapters."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory ``fn(num_classes, in_chans, img_size, width, **kw) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice.")
        _REGISTRY[name] = fn
        return fn

    return wrap


def registered(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        raise ValueError(f"unknown model '{name}'.{suggestion} Registry models: {', '.join(sorted(_REGISTRY))}; "
                         "or use 'timm:<name>' / 'tv:<name>'.")
    return _REGISTRY[name]


def registry_names() -> list[str]:
    return sorted(_REGISTRY)
