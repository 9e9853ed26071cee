"""`python -m infdit_core evaluate`: how much better than bicubic is a model, on images it never saw.

Each held-out HR image (cropped to a multiple of 4) is downscaled x4 with antialiased bicubic, then
brought back x4 by bicubic and by the model. Figures, on RGB in [0, 1] against the HR image:
- PSNR (dB) and SSIM (scikit-image, Gaussian-weighted as in Wang et al. 2004);
- sharpness: mean squared Laplacian of the luma relative to the HR image's (1.0 = as much fine
  detail as the truth, below = blurrier, above = more high frequencies than the truth, e.g. grain);
- detail correlation: correlation of the output's Laplacian with the HR image's (do the added high
  frequencies sit where the real ones are? grain scores near 0).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import default_image_paths, downscale, folder_image_paths, load_rgb
from ..sampling.pipeline import upsample

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    mse = F.mse_loss(out.double(), ref.double()).item()
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(out: torch.Tensor, ref: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    a = out[0].permute(1, 2, 0).double().numpy()
    b = ref[0].permute(1, 2, 0).double().numpy()
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def laplacian(img: torch.Tensor) -> torch.Tensor:
    luma = (img.double() * LUMA.double()).sum(1, keepdim=True)
    return F.conv2d(luma, LAPLACIAN.double())  # valid region only: no border artefacts


def sharpness(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (laplacian(out).pow(2).mean() / laplacian(ref).pow(2).mean()).item()


def detail_correlation(out: torch.Tensor, ref: torch.Tensor) -> float:
    a, b = laplacian(out).flatten(), laplacian(ref).flatten()
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm() + 1e-12)).item()


def measure(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {"psnr": psnr(out, ref), "ssim": ssim(out, ref), "sharpness": sharpness(out, ref), "detail": detail_correlation(out, ref)}


def held_out_images(folder=None, crop: int = 0) -> list[tuple[str, torch.Tensor]]:
    """(name, HR (1, 3, H, W) in [0, 1]) with H, W multiples of 4, optionally centre-cropped."""
    paths = folder_image_paths(folder) if folder else default_image_paths("heldout")
    images = []
    for path in paths:
        hr = load_rgb(path)[None]
        h, w = hr.shape[-2:]
        if crop:
            ch, cw = min(crop, h), min(crop, w)
            top, left = (h - ch) // 2, (w - cw) // 2
            hr = hr[:, :, top:top + ch, left:left + cw]
            h, w = ch, cw
        images.append((Path(path).stem, hr[:, :, : h - h % 4, : w - w % 4]))
    return images


def evaluate_model(model, images, steps: int, seed: int, save=None, log=None, **sample_kwargs) -> list[dict]:
    """Bicubic and (if a model is given) the model on each image; sample_kwargs go to upscale_image
    (sampler, color_fix, denoise, ...)."""
    from ..sampling.pipeline import upscale_image

    rows = []
    for name, hr in images:
        lr = downscale(hr, 4).clamp(0, 1)
        bicubic = upsample(lr, hr.shape[-2:]).clamp(0, 1)
        rows.append({"image": name, "method": "bicubic", **measure(bicubic, hr)})
        if model is not None:
            t0 = time.time()
            out = upscale_image(model, lr.movedim(1, -1), scale=4, steps=steps, seed=seed, **sample_kwargs).movedim(-1, 1)
            rows.append({"image": name, "method": "model", "seconds": time.time() - t0, **measure(out, hr)})
            if save:
                _save(save, name, lr, bicubic, out, hr)
        if log:
            log(f"{name}: done")
    return rows


def _save(folder, name, lr, bicubic, out, hr):
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for tag, img in (("lr", lr), ("bicubic", bicubic), ("model", out), ("hr", hr)):
        arr = (img[0].permute(1, 2, 0).double().numpy() * 255).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{name}_{tag}.png")


def format_table(rows: list[dict]) -> str:
    """A markdown table: one line per image and method, then the means per method."""
    lines = ["| image | method | PSNR dB | SSIM | sharpness vs HR | detail corr. |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['image']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['sharpness']:.3f} | {r['detail']:.3f} |")
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        mean = {k: sum(r[k] for r in sel) / len(sel) for k in ("psnr", "ssim", "sharpness", "detail")}
        lines.append(
            f"| **mean** | {method} | {mean['psnr']:.2f} | {mean['ssim']:.4f} | {mean['sharpness']:.3f} | {mean['detail']:.3f} |"
        )
    return "\n".join(lines)


def evaluate(args) -> int:
    from ..checkpoints.loader import DEMO_MODEL_PATH, load_inf_dit
    from ..sampling.solvers import DEFAULT_SOLVER, own_steps

    model_path = args.model or DEMO_MODEL_PATH
    if args.model is None:
        print(f"no --model given: evaluating the bundled demo model {DEMO_MODEL_PATH.name}", file=sys.stderr)
    model = load_inf_dit(model_path, dtype=getattr(args, "dtype", "auto"))
    images = held_out_images(args.images, args.crop)
    sampler, color_fix = getattr(args, "sampler", DEFAULT_SOLVER), getattr(args, "color_fix", "none")
    steps = own_steps(sampler, model.config.sampler_steps) if args.steps is None else args.steps
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows = evaluate_model(model, images, steps, args.seed, args.save, log, sampler=sampler, color_fix=color_fix)
    print(f"x4 from antialiased-bicubic /4, {len(images)} held-out images, model {Path(model_path).name}, "
          f"{str(model.dtype).removeprefix('torch.')}, {sampler} {steps} steps, colour fix {color_fix}, seed {args.seed}")
    print(format_table(rows))
    return 0
