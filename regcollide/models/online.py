"""Pretrained weights on request, through the libraries' own loaders, failing fast and clearly offline.

A download is attempted only when the user asks for pretrained weights. Before it, a bounded probe (a few
seconds) checks that the weights' host answers; a file already in the library's local cache is used
without any network (``HF_HUB_OFFLINE`` is honoured). Offline, the error is one line naming the local-file
alternative, ``--weights FILE``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from regcollide.io import CheckpointError

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


class OfflineError(CheckpointError):
    """Pretrained weights were requested, are not cached locally, and their host cannot be reached."""


def offline_error(model: str, reason: str) -> OfflineError:
    """One line: why the download cannot happen, and the local-file alternative."""
    return OfflineError(f"cannot download pretrained weights for '{model}': {reason}, and they are not in the "
                        "local cache. Download them where there is a network and pass --weights FILE "
                        "(a safetensors file or a torch.save state dict).")


def hf_cached(repo_id: str, files: tuple[str, ...] = HF_WEIGHT_FILES) -> bool:
    """True when one of ``files`` of hub repo ``repo_id`` (``name@revision`` allowed) is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    return any(isinstance(try_to_load_from_cache(repo, name, revision=revision or None), str) for name in files)


@contextlib.contextmanager
def hub_offline_mode(active: bool) -> Iterator[None]:
    """Tell huggingface_hub to read only its cache (it would otherwise wait on timeouts when offline)."""
    if not active:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def require_hub(model: str, repo_id: str, files: tuple[str, ...] = HF_WEIGHT_FILES) -> bool:
    """Check hub weights can be had; returns True when they must be read from the cache alone."""
    # regcollide.data imports `datasets` (seconds): only when a download is actually requested.
    from regcollide.data.network import hub_offline, hub_reachable

    cached = hf_cached(repo_id, files)
    if hub_offline():
        if not cached:
            raise offline_error(model, "HF_HUB_OFFLINE=1 is set")
        return True
    if hub_reachable():
        return False
    if cached:
        return True
    raise offline_error(model, "the Hugging Face hub cannot be reached")


def url_cached(url: str) -> Path | None:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url``, if the file is already there."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return path if path.is_file() else None


def require_url(model: str, url: str) -> None:
    """Check a weights URL can be downloaded (or is cached)."""
    from regcollide.data.network import reachable

    if url_cached(url) is None and not reachable(url):
        raise offline_error(model, f"the host of {os.path.basename(urlparse(url).path)} cannot be reached")
