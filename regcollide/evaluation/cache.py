"""Hashes that key the eval cache, and the package versions an entry records.

A finished part of an eval entry is reused only when the weights (the bytes of ``model.safetensors``),
the dataset and the settings that part reads (its registry ``cache_key``) are all unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

from regcollide.evaluation.registry import PartOutcome, get_part
from regcollide.evaluation.settings import EvalSettings


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(path: str | Path) -> str:
    """SHA-256 of the weight file bytes (streamed; weight files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def settings_hash(settings: EvalSettings) -> str:
    """Hash of the settings that can change a number (not which parts run, batching or threads)."""
    d = settings.to_dict()
    for speed_only in ("parts", "batch_size", "num_threads"):
        d.pop(speed_only)
    return _digest(d)


def part_hash(part: str, settings: EvalSettings, weights: str, data_spec: str) -> str:
    """Cache key of one part: weights + dataset + exactly the settings that part reads."""
    return _digest({"part": part, "weights": weights, "data": data_spec,
                    "settings": get_part(part).cache_key(settings)})


def reuse_cached(previous: dict | None, hashes: dict[str, str]) -> dict[str, PartOutcome]:
    """The parts of a previous entry whose hash is unchanged, as cached outcomes."""
    if not isinstance(previous, dict):
        return {}
    old_hashes = previous.get("part_hashes")
    skipped, timings = previous.get("skipped"), previous.get("timings")
    if not all(isinstance(d, dict) for d in (old_hashes, skipped, timings)):
        return {}  # a foreign or damaged entry is simply not a cache
    reused = {}
    for part, h in hashes.items():
        value, reason = previous.get(get_part(part).entry_key), skipped.get(part)
        if old_hashes.get(part) != h or (value is None and reason is None):
            continue  # changed, or recorded as not selected: nothing to reuse
        seconds = timings.get(part)
        reused[part] = PartOutcome(value=value, reason=reason, cached=True,
                                   seconds=seconds if isinstance(seconds, (int, float)) else 0.0)
    return reused


_VERSIONED = ("regcollide", "torch", "torchvision", "timm", "accelerate", "datasets", "pyautoattack",
              "scipy", "numpy", "safetensors")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
