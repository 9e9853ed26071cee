"""Colour correction of an upscaled image against the bicubic-upscaled input (diffusion upscalers
drift in colour; the bicubic image has the input's colours by construction).

All functions take RGB tensors (B, 3, H, W) of the same shape, in any range (the pipeline uses
[-1, 1]), work in float and return the corrected output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("none", "wavelet", "adain", "lab")
WAVELET_LEVELS = 5  # low-pass of a 5-level a-trous wavelet: detail finer than ~2^5 px is "high"


def check_color_fix(name) -> str:
    if name not in COLOR_FIXES:
        raise ValueError(f"unknown color_fix {name!r}: choose one of {', '.join(COLOR_FIXES)}")
    return name


def wavelet_lowpass(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """Low-frequency residue of an a-trous (stationary) wavelet decomposition: `levels` passes of the
    3x3 binomial kernel, dilated 1, 2, 4, ... pixels, with replicated borders."""
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(image.shape[1], 1, 3, 3)
    low = image
    for level in range(levels):
        d = 2**level
        low = F.conv2d(F.pad(low, (d, d, d, d), mode="replicate"), kernel, dilation=d, groups=image.shape[1])
    return low


def wavelet_fix(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The output's high frequencies on the reference's low frequencies."""
    return out - wavelet_lowpass(out) + wavelet_lowpass(reference)


def adain_fix(out: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel, move the output's mean and standard deviation onto the reference's."""
    return _adain_with(out, reference, eps)(out, reference)


# sRGB (D65) <-> CIELAB, on images in [0, 1].
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def _srgb_to_linear(c):
    return torch.where(c > 0.04045, ((c.clamp(min=0) + 0.055) / 1.055) ** 2.4, c / 12.92)


def _linear_to_srgb(c):
    return torch.where(c > 0.0031308, 1.055 * c.clamp(min=0) ** (1 / 2.4) - 0.055, 12.92 * c)


def _f(t):
    return torch.where(t > (6 / 29) ** 3, t.clamp(min=0) ** (1 / 3), t / (3 * (6 / 29) ** 2) + 4 / 29)


def _f_inv(t):
    return torch.where(t > 6 / 29, t**3, 3 * (6 / 29) ** 2 * (t - 4 / 29))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    m, white = _RGB_TO_XYZ.to(rgb), _WHITE.to(rgb).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", m, _srgb_to_linear(rgb)) / white
    fx, fy, fz = _f(xyz).unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    m_inv, white = torch.linalg.inv(_RGB_TO_XYZ.double()).to(lab), _WHITE.to(lab).view(1, 3, 1, 1)
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    xyz = _f_inv(f) * white
    return _linear_to_srgb(torch.einsum("ij,bjhw->bihw", m_inv, xyz))


def lab_fix(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Keep the output's lightness (L), take the colour (a, b) from the reference, in CIELAB; images in
    [-1, 1]. Keeps all the output's detail (which lives mostly in L) and drops its colour noise.
    Both are clamped to [-1, 1] first: CIELAB is defined for displayable colours only."""
    lab_out, lab_ref = (rgb_to_lab(((x + 1) / 2).clamp(0, 1)) for x in (out, reference))
    fixed = torch.cat([lab_out[:, :1], lab_ref[:, 1:]], 1)
    return lab_to_rgb(fixed) * 2 - 1


STRIP_ROWS = 256  # lab and adain are per pixel: done in strips of rows, so no full-size temporaries


def apply_color_fix(name: str, out: torch.Tensor, reference: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """`out` corrected against `reference` (same shape) with the named method, in float32.

    in_place=True: a float32 `out` is overwritten, and lab and adain then need no full-size
    temporary (they work strip by strip), so a huge output costs no more memory than sampling it."""
    check_color_fix(name)
    if name == "none":
        return out
    dtype = out.dtype
    if not (in_place and out.dtype == torch.float32):
        out = out.float().clone()
    reference = reference.float()
    if name == "wavelet":
        fixed = wavelet_fix(out, reference)
    else:
        fix = lab_fix if name == "lab" else _adain_with(out, reference)
        for r in range(0, out.shape[2], STRIP_ROWS):
            strip = slice(r, r + STRIP_ROWS)
            out[:, :, strip] = fix(out[:, :, strip], reference[:, :, strip])
        fixed = out
    return fixed.to(dtype)


def _adain_with(out: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5):
    """adain_fix as a per-pixel map with the whole images' statistics, for use on strips."""
    mean_o, std_o = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True)
    mean_r, std_r = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return lambda o, r: (o - mean_o) / (std_o + eps) * std_r + mean_r
