"""Float8 (e4m3) storage with one scale per block: the opt-in compact frontier.

A block's keys (or values) are divided by a scale that maps their largest magnitude to e4m3's largest
finite value (448), rounded to float8, and multiplied back when read. One float32 scale per block and
batch item keeps the relative error of every block about the same (e4m3 has 3 mantissa bits: half a
unit in the last place is 1/16, so each element is within 6.25% of itself, or within 2**-9 x scale
near zero where e4m3 is subnormal).
"""
from __future__ import annotations

import torch

FLOAT8 = torch.float8_e4m3fn
FLOAT8_MAX = torch.finfo(FLOAT8).max  # 448


def quantise(t: torch.Tensor, block_dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """t (..., T, h, d) -> (float8 tensor of t's shape, float32 scales of shape t.shape[:block_dims]).

    The first `block_dims` dimensions index blocks (e.g. slot and batch item); each gets its own scale."""
    flat = t.reshape(*t.shape[:block_dims], -1)
    amax = flat.abs().amax(-1).float()
    scale = torch.where(amax > 0, amax / FLOAT8_MAX, torch.ones_like(amax))
    view = scale.reshape(*scale.shape, *([1] * (t.dim() - block_dims)))
    return (t.float() / view).to(FLOAT8), scale


def dequantise(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of `quantise`, in `dtype`."""
    view = scale.reshape(*scale.shape, *([1] * (q.dim() - scale.dim())))
    return (q.float() * view).to(dtype)
