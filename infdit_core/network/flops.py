"""FLOPs of one network evaluation, counted from the config and the block grid.

Counts what `torch.utils.flop_counter.FlopCounterMode` counts (2 FLOPs per multiply-add of every
matmul and convolution, and the two matmuls of each attention call), so the two can be compared
exactly; element-wise work (norms, rotary, adds) is not counted. The count does not depend on the
block batch: every block runs the same layers whatever group it is in. The CLIP tower runs once per
image, not per evaluation, and is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import BLOCK_TOKENS, LR_WINDOW, TIME_FREQUENCIES, InfDiTConfig


@dataclass(frozen=True)
class EvaluationFlops:
    linear: int  # every nn.Linear: conditioning, q/k/v, projections, MLPs, cross-attention, output
    conv: int  # the patch embedding and the LR-feature convolution of the cross-attention windows
    attention: int  # QK^T and AV of the block attention (4 key groups) and the LR cross-attention

    @property
    def total(self) -> int:
        return self.linear + self.conv + self.attention


def evaluation_flops(config: InfDiTConfig, rows: int, cols: int, batch: int = 1) -> EvaluationFlops:
    """FLOPs of D(x; sigma) for a grid of rows x cols blocks and `batch` images."""
    c, t, L = config.hidden, config.block_tokens, config.layers
    blocks = rows * cols * batch
    window = LR_WINDOW * LR_WINDOW

    def lin(tokens: int, n_in: int, n_out: int) -> int:
        return 2 * tokens * n_in * n_out

    cond = lin(batch, 2 * TIME_FREQUENCIES, c) + lin(batch, c, c) + L * lin(batch, c, 4 * c) + lin(batch, c, 2 * c)
    if config.vector_dim:
        cond += lin(batch, config.vector_dim, c) + lin(batch, c, c)
    per_layer = lin(t, c, 3 * c) + lin(t, c, c) + 2 * lin(t, c, config.mlp_ratio * c)
    cross = lin(t, c, c) + lin(window, c, 2 * c) + lin(t, c, c)  # query, key_value (2304 tokens), dense
    final = lin(t, c, config.patch_size**2 * config.out_channels)
    linear = cond + blocks * (L * per_layer + cross + final)

    patch = 2 * t * c * config.in_channels * config.patch_size**2
    # The LR convolution (3 -> C, kernel 2, stride 2) runs on the part of each block's 96x96 LR window
    # that lies inside the image, so border blocks cost less; the extents factor into rows x columns.
    lr_size = config.block_size // 4  # LR pixels per block side (the LR image is the output / 4)
    lr_pixels = _window_extent(rows, lr_size) * _window_extent(cols, lr_size)
    conv = blocks * patch + batch * 2 * (lr_pixels // 4) * c * 3 * 4

    # QK^T and AV over the four key groups, plus q.e_g of every query with the four group embeddings
    # (attention.attend_key_groups folds the key embedding into the groups' log-sum-exp)
    attention = blocks * (L * (2 * 2 * t * 4 * t * c + 2 * t * c * 4) + 2 * 2 * t * window * c)
    return EvaluationFlops(linear, conv, attention)


def _window_extent(n: int, lr_size: int) -> int:
    """Sum over n blocks along one axis of the LR pixels their windows cover inside the image.

    A window spans 3 x BLOCK_TOKENS LR pixels from one block before (see attention.lr_window)."""
    size, span = n * lr_size, BLOCK_TOKENS
    return sum(min(span * (i + 2), size) - max(span * (i - 1), 0) for i in range(n))


def torch_counted_flops(fn) -> int:
    """FLOPs of fn() by `torch.utils.flop_counter.FlopCounterMode`, which also counts torch's CPU flash
    attention here (its table only lists the CUDA attention kernels)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()
