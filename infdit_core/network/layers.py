"""Small building blocks shared by the model: norms, embeddings, modulation, 2-D rotary, patches."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware.devices import has_antialiased_bicubic
from .config import BLOCK_TOKENS, TIME_FREQUENCIES

EPS = 1e-6  # every LayerNorm of the released model uses 1e-6, not torch's default 1e-5
ROTARY_PERIOD = 1024  # token positions are taken modulo 1024 (positions repeat every 4096 px)


def resize_bicubic(image: torch.Tensor, size) -> torch.Tensor:
    """Antialiased bicubic resize (B, C, H, W) -> size; on the CPU where the device has no such kernel
    (MPS before torch 2.8), then back."""
    if not has_antialiased_bicubic(image.device):
        return resize_bicubic(image.cpu(), size).to(image.device)
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters over the last dim."""
    return F.layer_norm(x, x.shape[-1:], eps=EPS)


def affine_norm(size: int) -> nn.LayerNorm:
    return nn.LayerNorm(size, eps=EPS)


def norm_affine(shift: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For one image, adaLN's (shift, scale) as the (bias, weight) = (shift, 1 + scale) of the affine it
    is, 1-D: made once per evaluation instead of in every block group (`modulate` and `modulated_norm`
    take either form)."""
    return shift[0], 1 + scale[0]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with shift/scale (B, C) broadcast over the token dims of x; or,
    1-D from `norm_affine`, x * weight + bias (the same operations)."""
    if scale.dim() == 1:
        return x * scale + shift
    while shift.dim() < x.dim():
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """modulate(layer_norm(x), shift, scale); for one image, one LayerNorm kernel with (1 + scale, shift) as
    its affine parameters instead of three passes over x (given ready-made by `norm_affine`, or made here)."""
    if scale.dim() == 1:
        return F.layer_norm(x, x.shape[-1:], weight=scale, bias=shift, eps=EPS)
    if shift.shape[0] == 1:
        return F.layer_norm(x, x.shape[-1:], weight=1 + scale[0], bias=shift[0], eps=EPS)
    return modulate(layer_norm(x), shift, scale)


def linear_gelu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """gelu(linear(x)) with the tanh approximation. On CUDA in 16-bit: one matmul whose epilogue applies the
    GELU (cuBLASLt, through torch._addmm_activation), so the 4C-wide hidden layer is written once and never
    read back for a separate GELU pass. cuBLASLt's GELU is the tanh form (torch's own CUDA fallback for this
    call applies gelu "tanh"; its CPU implementation uses erf, hence CUDA only), and in 16-bit the two forms
    differ (< 5e-4) by less than one rounding step; benchmarks/gpu.py checks it on the first GPU.
    Elsewhere the two ops (the release's numbers)."""
    if x.device.type != "cuda" or x.dtype == torch.float32:
        return F.gelu(linear(x), approximate="tanh")
    flat = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(linear.bias, flat, linear.weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], out.shape[-1])


def noise_features(c_noise: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 192): [cos(c_noise * f), sin(c_noise * f)] with f_k = 10000^(-k/96)."""
    k = torch.arange(TIME_FREQUENCIES, dtype=torch.float32, device=c_noise.device)
    freqs = torch.exp(-math.log(10000.0) * k / TIME_FREQUENCIES)
    args = c_noise.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def axis_angles(positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotary angles of one axis: (N,) integer positions -> (N, head_dim // 2), float32.

    Written exactly as the reference builds its table so cos/sin are bit-equal to the stored one.
    """
    half = head_dim // 2
    w = 1.0 / (10000 ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    angle = positions.float()[:, None] * w
    return angle.repeat_interleave(2, dim=-1)


def rotary_table(head_dim: int, size: int = ROTARY_PERIOD) -> tuple[torch.Tensor, torch.Tensor]:
    """The (size, size, head_dim) cos/sin table of the checkpoint, indexed [row, col]."""
    ang = axis_angles(torch.arange(size), head_dim)
    grid = torch.cat(
        [ang[:, None, :].expand(size, size, -1), ang[None, :, :].expand(size, size, -1)], dim=-1
    )
    return grid.cos(), grid.sin()


def block_rotary(block_rows: torch.Tensor, block_cols: torch.Tensor, head_dim: int):
    """cos/sin (n, T, head_dim) for the tokens of n blocks given their block coordinates (n,)."""
    r = torch.arange(BLOCK_TOKENS, device=block_rows.device)
    rows = (block_rows[:, None] * BLOCK_TOKENS + r[None]) % ROTARY_PERIOD  # (n, 32)
    cols = (block_cols[:, None] * BLOCK_TOKENS + r[None]) % ROTARY_PERIOD
    row_ang = axis_angles(rows.reshape(-1), head_dim).view(len(rows), BLOCK_TOKENS, 1, -1)
    col_ang = axis_angles(cols.reshape(-1), head_dim).view(len(cols), 1, BLOCK_TOKENS, -1)
    n = len(rows)
    ang = torch.cat(
        [row_ang.expand(n, BLOCK_TOKENS, BLOCK_TOKENS, -1), col_ang.expand(n, BLOCK_TOKENS, BLOCK_TOKENS, -1)],
        dim=-1,
    )  # (n, 32, 32, d), tokens row-major inside the block
    ang = ang.reshape(n, BLOCK_TOKENS * BLOCK_TOKENS, head_dim)
    return ang.cos(), ang.sin()


def signed_rotary(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin * (-1, +1, -1, ...) in `dtype`, made once per block group for `apply_signed_rotary`."""
    # -1, +1, -1, ... made on the device (a tensor from a Python list would be a host-to-device copy)
    sign = torch.arange(sin.shape[-1], device=sin.device).remainder_(2).mul_(2).sub_(1).to(sin.dtype)
    return cos.to(dtype), (sin * sign).to(dtype)


def pair_swap_index(head_dim: int, device) -> torch.Tensor:
    """[1, 0, 3, 2, ...]: the index that swaps each interleaved pair (one gather instead of view, flip, view)."""
    return torch.arange(head_dim, device=device).view(-1, 2).flip(-1).reshape(-1)


def apply_signed_rotary(t: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, swap=None) -> torch.Tensor:
    """Rotary on interleaved pairs, t * cos + rotate_half(t) * sin with rotate_half (a, b) -> (-b, a), in three
    passes instead of six: rotate_half(t) * sin = swap_pairs(t) * signed_sin, exactly
    (negating is exact in floating point), and the product is added in the same kernel. `swap`: a
    `pair_swap_index` made once (then the pairs are swapped by one gather), or None."""
    swapped = t.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) if swap is None else t.index_select(-1, swap)
    return torch.addcmul(t * cos, swapped, signed_sin)


def patchify_blocks(image: torch.Tensor, blocks, block_size: int) -> torch.Tensor:
    """Cut blocks out of an image: (B, C, H, W), blocks [(row, col)] -> (B, n, C, block, block)."""
    crops = [
        image[:, :, r * block_size:(r + 1) * block_size, c * block_size:(c + 1) * block_size]
        for r, c in blocks
    ]
    return torch.stack(crops, dim=1)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """(B, n, T, patch*patch*channels) -> (B, n, channels, 32*patch, 32*patch).

    Each token vector is laid out as (p_row, p_col, channel).
    """
    b, n = tokens.shape[:2]
    x = tokens.view(b, n, BLOCK_TOKENS, BLOCK_TOKENS, patch, patch, channels)
    x = x.permute(0, 1, 6, 2, 4, 3, 5)  # (B, n, C, rows, p_row, cols, p_col)
    return x.reshape(b, n, channels, BLOCK_TOKENS * patch, BLOCK_TOKENS * patch)
