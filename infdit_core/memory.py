"""Peak-memory estimate of sampling with the block scheduler, and the block batch that fits a budget.

Counts what is alive at the peak of one network evaluation: the weights, the frontier of cached
keys/values (2 tensors of T x C per block and layer), the activations of one group (dominated by the
four gathered key/value groups of the attention and the LR-window cross-attention), and the
full-size image buffers of the Heun sampler (kept in float32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LR_WINDOW, InfDiTConfig
from .scheduler import plan_blocks

# Tensors of size (B, n, T, C) alive at the attention peak of one layer: the layer input, q/k/v,
# the four gathered key and value groups, the keys with their group embedding, the transposed key and
# value copies handed to attention, and its output.
_ATTENTION_TENSORS = 1 + 3 + 8 + 4 + 8 + 2
_CROSS_WINDOW_TENSORS = 1 + 2 + 2 + 2  # window features, key/value, normed keys, transposed copies
_IMAGE_BUFFERS = 8  # x, u, noise, D, d, x', out, and a temporary, float32, whole padded output size
CLIP_VISUAL_PARAMS = 303_966_976  # open_clip ViT-L-14 image tower


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    frontier: int
    activations: int
    images: int

    @property
    def total(self) -> int:
        return self.weights + self.frontier + self.activations + self.images

    def __str__(self) -> str:
        gb = 1024**3
        return (
            f"{self.total / gb:.2f} GiB (weights {self.weights / gb:.2f}, frontier {self.frontier / gb:.2f}, "
            f"activations {self.activations / gb:.2f}, images {self.images / gb:.2f})"
        )


def dit_parameters(cfg: InfDiTConfig) -> int:
    c, h, d, L = cfg.hidden, cfg.heads, cfg.head_dim, cfg.layers
    p2 = cfg.patch_size**2
    per_layer = (c * 4 * c + 4 * c) + (c * 3 * c + 3 * c) + (c * c + c) + 2 * (cfg.mlp_ratio * c * c) + cfg.mlp_ratio * c + c + 2 * d
    embed = cfg.in_channels * p2 * c + c + 192 * c + c + c * c + c
    vector = (cfg.vector_dim * c + c + c * c + c) if cfg.vector_dim else 0
    cross = 3 * 4 * c + c + (c * c + c) * 2 + (2 * c * c + 2 * c) + 4 * d + (1024 + LR_WINDOW**2) * c + 2 * c
    final = c * 2 * c + 2 * c + c * p2 * cfg.out_channels + p2 * cfg.out_channels
    return L * per_layer + L * 4 * c + embed + vector + cross + final


def estimate_peak_bytes(
    config: InfDiTConfig,
    out_height: int,
    out_width: int,
    block_batch: int,
    dtype: torch.dtype = torch.bfloat16,
    offload_frontier: bool = False,
    batch: int = 1,
    scan: str = "auto",
    include_clip: bool = True,
) -> MemoryEstimate:
    """Predicted peak bytes on the compute device for sampling an output of this size."""
    el = torch.finfo(dtype).bits // 8
    bs = config.block_size
    rows, cols = -(-out_height // bs), -(-out_width // bs)
    plan = plan_blocks(rows, cols, max(1, min(block_batch, rows * cols)), scan)
    n = plan.block_batch
    t, c = config.block_tokens, config.hidden
    clip = CLIP_VISUAL_PARAMS if (include_clip and config.vector_dim) else 0
    weights = (dit_parameters(config) + clip) * el
    per_block_kv = 2 * config.layers * t * c * el * batch
    frontier = 0 if offload_frontier or len(plan.groups) == 1 else plan.peak_cached_blocks() * per_block_kv
    unit = batch * n * t * c * el
    attention = _ATTENTION_TENSORS * unit
    mlp = (2 + 2 * config.mlp_ratio) * unit
    cross = _CROSS_WINDOW_TENSORS * batch * n * LR_WINDOW**2 * c * el + 4 * unit
    scores = batch * n * config.heads * t * 4 * t * el  # attention may materialise scores on some backends
    activations = max(attention + scores, mlp, cross)
    images = _IMAGE_BUFFERS * batch * 3 * rows * bs * cols * bs * 4
    return MemoryEstimate(weights, frontier, activations, images)


def choose_block_batch(
    config: InfDiTConfig,
    out_height: int,
    out_width: int,
    budget_bytes: int,
    dtype: torch.dtype = torch.bfloat16,
    offload_frontier: bool = False,
    batch: int = 1,
    scan: str = "auto",
    include_clip: bool = True,
) -> int:
    """The largest block batch whose estimate fits `budget_bytes` (1 if none does).

    The estimate grows with the block batch, so a binary search over 1..all blocks finds it.
    """
    bs = config.block_size
    lo, hi = 1, -(-out_height // bs) * -(-out_width // bs)

    def fits(n: int) -> bool:
        est = estimate_peak_bytes(config, out_height, out_width, n, dtype, offload_frontier, batch, scan, include_clip)
        return est.total <= budget_bytes

    if not fits(lo):
        return 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def free_device_memory(device) -> int:
    """Free memory on `device` in bytes (CUDA: free + torch's reusable cache; CPU: MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3  # unknown platform: assume a modest machine


def default_budget(device) -> int:
    """Free memory minus a margin of 10% (at least 512 MiB) for other tensors and fragmentation."""
    free = free_device_memory(device)
    return max(free - max(free // 10, 512 * 1024**2), 0)
