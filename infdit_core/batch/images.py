"""Image files in and out for the command line: grayscale and alpha kept, writes atomic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoints.atomic import atomic_write

# What a folder or a glob contributes (files named one by one are always tried, whatever their suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
LOSSLESS_SUFFIXES = (".png", ".tif", ".tiff", ".webp", ".bmp")


class ImageReadError(ValueError):
    """An input that is missing, not an image, or corrupt; the message says which and why."""


def read_image(path) -> torch.Tensor:
    """An image file as (1, H, W, C) in [0, 1], keeping grayscale and alpha (fully decoded, so a
    truncated file fails here and not half-way through sampling)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"input image not found: {path}")
    try:
        with Image.open(path) as im:
            transparent_palette = im.mode == "P" and "transparency" in im.info
            mode = {"L": "L", "LA": "LA", "RGBA": "RGBA"}.get(im.mode, "RGBA" if transparent_palette else "RGB")
            arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read {path} as an image: {e}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr)[None]


def image_size(path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    if not Path(path).is_file():
        raise ImageReadError(f"input image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read {path} as an image: {e}") from None


def is_complete_image(path) -> bool:
    """True if `path` exists and opens as an image: outputs are written atomically, so a file under
    the final name is a finished one unless something else put it there."""
    try:
        image_size(path)
        return True
    except ImageReadError:
        return False


def save_image(image: torch.Tensor, path) -> Path:
    """(H, W, C) float in [0, 1] -> 8-bit file, truncating like the reference writer; atomic, with the
    format taken from the suffix (.png, .tif, .webp lossless, .bmp)."""
    path = Path(path)
    arr = np.clip(image.double().numpy() * 255.0, 0, 255).astype(np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[-1]]
    pil = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    options = {"lossless": True} if fmt == "WEBP" else {}
    return atomic_write(path, lambda tmp: pil.save(tmp, format=fmt, **options))
