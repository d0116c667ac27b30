"""Decoding one image at a time: encoded bytes, paths, PIL images or arrays -> float32 (C, H, W) in [0, 1].

Every failure a hostile or broken file can cause (not an image, truncated or corrupt bytes, a
decompression bomb, a column of strings) becomes one :class:`DataError` line naming the sample.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


class DataError(ValueError):
    """A dataset spec or sample that cannot be used; the message says what to do."""


def _open(value: dict, where: str) -> Image.Image:
    """Open and fully decode an encoded ``{"bytes", "path"}`` struct, refusing bombs and corrupt files."""
    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if not source:
        raise DataError(f"{where}: image has neither bytes nor a path.")
    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; a warning here is a bomb all the same.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{where}: refused a decompression bomb ({err}); remove the file.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: not a readable image ({type(err).__name__}: {err}); "
                        "remove or replace the file.") from err
    return image


def to_chw(value, where: str = "image", chans: int | None = None) -> np.ndarray:
    """A PIL image, an encoded struct (parquet without HF metadata) or an array -> float32 (C, H, W).

    ``chans`` (1 or 3) converts the colour mode, so a folder mixing grey and RGB files decodes to one shape.
    """
    if isinstance(value, (str, bytes)):
        raise DataError(f"{where}: the image column holds {type(value).__name__} values, not images; "
                        "expected encoded images ({'bytes': PNG/JPEG, 'path': ...}) or pixel arrays.")
    if isinstance(value, dict):
        value = _open(value, where)
    if isinstance(value, Image.Image):
        mode = {1: "L", 3: "RGB"}.get(chans) or (value.mode if value.mode in ("L", "RGB") else "RGB")
        value = value.convert(mode) if value.mode != mode else value
        arr = np.asarray(value)
        arr = arr[None] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))  # (H, W, C) -> (C, H, W)
        return arr.astype(np.float32) / 255.0
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.isfinite(arr).all():
        raise DataError(f"{where}: expected a finite (C, H, W) pixel array, got shape {arr.shape}.")
    return arr


def fit_size(image: torch.Tensor, size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """Resize the shorter side to ``ceil(size / crop_pct)`` and center-crop ``size x size``.

    The ImageNet evaluation protocol (resize 256, crop 224) is ``crop_pct = 0.875``; ``1.0`` keeps the whole
    shorter side, so a square image is just resized. ``image``: (C, H, W) in [0, 1].
    """
    if not 0.0 < crop_pct <= 1.0:
        raise DataError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    _, h, w = image.shape
    short = math.ceil(size / crop_pct)
    if min(h, w) != short:
        scale = short / min(h, w)
        new = (max(short, round(h * scale)), max(short, round(w * scale)))
        image = F.interpolate(image[None], size=new, mode="bilinear", align_corners=False,
                              antialias=scale < 1.0)[0].clamp_(0.0, 1.0)
        h, w = new
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top:top + size, left:left + size].contiguous()
