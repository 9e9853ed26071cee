"""Training and evaluation images, and how LR inputs are made from them.

By default the images are the photos that ship inside scikit-image (no network needed), with a
fixed held-out split for evaluation. Any folder of images can be used instead.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# scikit-image's bundled photos (grayscale ones are replicated to RGB). Synthetic charts, logos and
# binary images are left out: they teach nothing about photographs.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)
HELD_OUT = ("astronaut.png", "coffee.png", "chelsea.png")  # never trained on; `evaluate` uses them
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError:
        raise SystemExit(
            "the default training images come from scikit-image: pip install scikit-image, or pass --images FOLDER"
        ) from None
    return Path(skimage.data.__file__).parent


def default_image_paths(split: str) -> list[Path]:
    """'train' or 'heldout' photos of scikit-image."""
    root = skimage_data_dir()
    names = HELD_OUT if split == "heldout" else [n for n in SKIMAGE_PHOTOS if n not in HELD_OUT]
    return [root / n for n in names]


def folder_image_paths(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


def load_rgb(path) -> torch.Tensor:
    """An image file as (3, H, W) float in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def downscale(hr: torch.Tensor, factor: int) -> torch.Tensor:
    """Antialiased bicubic downscaling of (B, 3, H, W) by an integer factor."""
    h, w = hr.shape[-2:]
    return F.interpolate(hr, size=(h // factor, w // factor), mode="bicubic", align_corners=False, antialias=True)


def degrade(lr: torch.Tensor, gen: torch.Generator, blur=0.0, noise=0.0, jpeg=0.0) -> torch.Tensor:
    """Mild optional degradations of an LR batch in [0, 1], each applied with probability 1/2."""
    out = []
    for img in lr:
        if blur and torch.rand((), generator=gen) < 0.5:
            s = float(torch.rand((), generator=gen)) * blur + 1e-3
            k = torch.arange(-2, 3, dtype=torch.float32)
            g = torch.exp(-(k**2) / (2 * s * s))
            g = g / g.sum()
            img = F.conv2d(F.pad(img[:, None], (2, 2, 2, 2), mode="replicate"), g.view(1, 1, 1, 5))
            img = F.conv2d(img, g.view(1, 1, 5, 1))[:, 0]
        if noise and torch.rand((), generator=gen) < 0.5:
            img = img + torch.randn(img.shape, generator=gen) * noise * float(torch.rand((), generator=gen))
        if jpeg and torch.rand((), generator=gen) < 0.5:
            quality = int(100 - float(torch.rand((), generator=gen)) * jpeg)
            img = _jpeg(img.clamp(0, 1), quality)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        back = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(back).permute(2, 0, 1)


class CropSampler:
    """Random HR crops (with flips) from a list of images, reproducible from a torch.Generator."""

    def __init__(self, images: list[torch.Tensor], crop: int):
        self.images = [im for im in images if min(im.shape[-2:]) >= crop]
        if not self.images:
            raise SystemExit(f"no training image is at least {crop}x{crop} pixels")
        self.crop = crop

    def batch(self, size: int, gen: torch.Generator) -> torch.Tensor:
        crops = []
        for _ in range(size):
            img = self.images[int(torch.randint(len(self.images), (), generator=gen))]
            h, w = img.shape[-2:]
            top = int(torch.randint(h - self.crop + 1, (), generator=gen))
            left = int(torch.randint(w - self.crop + 1, (), generator=gen))
            crop = img[:, top:top + self.crop, left:left + self.crop]
            if torch.rand((), generator=gen) < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)
