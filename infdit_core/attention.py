"""Unidirectional block attention (UniBA) and the Nearby-LR cross-attention windows.

A query in block (r, c) reads the keys/values of four blocks, in this order:
self, top-left, left, top. Missing neighbours at the border are clamped into the image (QUIRK of the
release: the duplicated groups change the softmax, so they are kept).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .float8 import dequantise, quantise

Block = tuple[int, int]
KEY_GROUPS = ("self", "top_left", "left", "top")


def neighbour_blocks(row: int, col: int) -> tuple[Block, Block, Block, Block]:
    """The four key blocks of block (row, col), clamped at the top and left border."""
    up, left = max(row - 1, 0), max(col - 1, 0)
    return (row, col), (up, left), (row, left), (up, col)


def block_attention(q, k4, v4, group_embed):
    """Attention of n blocks over their four key groups.

    q: (B, n, T, h, d); k4, v4: (B, n, 4, T, h, d); group_embed: (4, h, d) added to every key of a
    group (after rotary), values get nothing. Returns (B, n, T, h*d).
    """
    b, n, t, h, d = q.shape
    k = k4 + group_embed[None, None, :, None].to(k4.dtype)
    q = q.reshape(b * n, t, h, d).transpose(1, 2)  # (Bn, h, T, d)
    k = k.reshape(b * n, 4 * t, h, d).transpose(1, 2)  # (Bn, h, 4T, d)
    v = v4.reshape(b * n, 4 * t, h, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), no mask
    return out.transpose(1, 2).reshape(b, n, t, h * d)


class KeyValueStore:
    """Keys/values of one network evaluation, per layer and per block.

    `gather` returns the four key groups of the blocks being computed, taking each neighbour from the
    blocks of the current group or from blocks stored by earlier groups. With `keep=True` the current
    group's keys/values are stored (on `storage_device`) for later groups; `release` drops blocks
    that no later block reads. The whole-image forward is one group with `keep=False`.
    """

    def __init__(self, layers: int, keep: bool = False, storage_device=None, float8: bool = False):
        self.layers = [dict() for _ in range(layers)]
        self.keep = keep
        self.storage_device = storage_device
        self.float8 = float8  # stored blocks as float8 e4m3 with one scale per block (float8.py)

    def gather(self, layer: int, blocks: list[Block], k: torch.Tensor, v: torch.Tensor):
        """k, v: (B, n, T, h, d) of `blocks` -> k4, v4: (B, n, 4, T, h, d)."""
        store = self.layers[layer]
        position = {blk: i for i, blk in enumerate(blocks)}
        stored: list[Block] = []
        index = []
        for blk in blocks:
            row = []
            for nb in neighbour_blocks(*blk):
                if nb not in position:
                    if nb not in store:
                        raise RuntimeError(f"block {blk} needs block {nb}, which is neither computed nor cached")
                    position[nb] = len(blocks) + len(stored)
                    stored.append(nb)
                row.append(position[nb])
            index.append(row)
        if stored:
            k_pool = torch.cat([k, torch.stack([self._read(store[nb][0], k) for nb in stored], 1)], dim=1)
            v_pool = torch.cat([v, torch.stack([self._read(store[nb][1], v) for nb in stored], 1)], dim=1)
        else:
            k_pool, v_pool = k, v
        if self.keep:
            dev = self.storage_device or k.device
            pin = torch.device(dev).type == "cpu" and k.is_cuda
            for i, blk in enumerate(blocks):
                store[blk] = (self._keep(k[:, i], dev, pin), self._keep(v[:, i], dev, pin))
        idx = torch.tensor(index, device=k.device)
        return k_pool[:, idx], v_pool[:, idx]

    def _keep(self, t: torch.Tensor, device, pin: bool):
        """One block's keys or values (B, T, h, d) on their way into the store."""
        if not self.float8:
            return _store(t, device, pin)
        q, scale = quantise(t, block_dims=1)  # on the compute device: half the bytes to move
        return _store(q, device, pin), _store(scale, device, pin)

    def _read(self, entry, like: torch.Tensor) -> torch.Tensor:
        """A stored block back on `like`'s device and dtype."""
        if not self.float8:
            return entry.to(like.device)
        q, scale = entry
        return dequantise(q.to(like.device), scale.to(like.device), like.dtype)

    def release(self, blocks) -> None:
        for store in self.layers:
            for blk in blocks:
                store.pop(blk, None)

    def clear(self) -> None:
        for store in self.layers:
            store.clear()

    def cached_blocks(self) -> int:
        return len(self.layers[0]) if self.layers else 0


def _store(t: torch.Tensor, device, pin: bool) -> torch.Tensor:
    if t.device == torch.device(device):
        return t.clone()  # a copy, so the group's big k/v tensor can be freed
    out = torch.empty(t.shape, dtype=t.dtype, device=device, pin_memory=pin)
    out.copy_(t, non_blocking=pin)
    return out


def lr_window(lr_features_fn, lr: torch.Tensor, row: int, col: int, lr_block: int) -> torch.Tensor:
    """The 48x48 LR-feature window of block (row, col): (B, C, 48, 48), zero features outside.

    The window covers LR feature rows [16r-16, 16r+32): LR pixel rows [32r-32, 32r+64) for lr_block=32.
    The features are computed from the pixels that exist and then zero-padded (the reference pads
    the conv output, so outside keys are key_value(0), not absent).
    """
    h, w = lr.shape[-2:]
    top, left = (row - 1) * lr_block, (col - 1) * lr_block
    span = 3 * lr_block
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + span, h), min(left + span, w)
    feats = lr_features_fn(lr[:, :, t0:t1, l0:l1])
    return F.pad(feats, ((l0 - left) // 2, (left + span - l1) // 2, (t0 - top) // 2, (top + span - t1) // 2))
