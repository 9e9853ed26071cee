"""Unidirectional block attention (UniBA) and the Nearby-LR cross-attention windows.

A query in block (r, c) reads the keys/values of four blocks, in this order:
self, top-left, left, top. Missing neighbours at the border are clamped into the image (QUIRK of the
release: the duplicated groups change the softmax, so they are kept).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from .float8 import FLOAT8, dequantise, quantise

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


def attend_key_groups(q, keys, values, group_embed) -> torch.Tensor:
    """Attention of m blocks over four key groups given as separate tensors, none of them copied.

    q: (m, T, h, d); keys, values: four (m, T, h, d) tensors (any strides with a contiguous last dim,
    e.g. views into the frontier ring); group_embed: (4, h, d), added to every key of its group.
    Returns (m, T, h, d) in q's dtype. Each group is attended on its own, returning its log-sum-exp;
    the embedding adds q.e_g to every score of group g, so it only shifts that group's log-sum-exp,
    and the softmax over all 4T keys is the lse-weighted sum of the four partial results.
    """
    d = q.shape[-1]
    scale = d**-0.5
    qt = q.transpose(1, 2)  # (m, h, T, d)
    # q.e_g for every query and group: (m, h, T, 4)
    shift = torch.matmul(qt, group_embed.to(q.dtype).permute(1, 2, 0)[None]).float() * scale
    # Training: the fused kernels give no gradient through the log-sum-exp, so the groups are copied.
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, *keys, *values, group_embed))
    outs, lses = [], []
    for g in range(4):
        out, lse = (None, None) if training else attention_with_lse(qt, keys[g].transpose(1, 2), values[g].transpose(1, 2), scale)
        if out is None:  # no kernel that returns the log-sum-exp (or training): materialise the groups
            k = torch.cat([kg + e.to(kg.dtype) for kg, e in zip(keys, group_embed)], dim=1)
            v = torch.cat(list(values), dim=1)
            return F.scaled_dot_product_attention(qt, k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        outs.append(out)
        lses.append(lse + shift[..., g])
    weights = torch.softmax(torch.stack(lses), dim=0).unsqueeze(-1)  # (4, m, h, T, 1), float32
    acc = outs[0].float().mul_(weights[0]) if q.dtype != torch.float32 else outs[0].mul_(weights[0])
    for g in range(1, 4):
        acc.addcmul_(outs[g], weights[g])
    return acc.transpose(1, 2)  # (m, T, h, d), converted to q's dtype by the caller's copy


_NO_LSE: set = set()  # (device type, dtype) pairs whose attention returned no log-sum-exp


def attention_with_lse(q, k, v, scale):
    """Scaled dot-product attention that also returns the log-sum-exp of the scores, or (None, None).

    q: (N, h, Tq, d), k, v: (N, h, Tk, d) -> (N, h, Tq, d), (N, h, Tq) float32. Uses the fused
    kernels behind F.scaled_dot_product_attention (never the Tq x Tk score matrix); they are
    private torch ops, so any device or version without them falls back (once noted) to None.
    """
    key = (q.device.type, q.dtype)
    if key in _NO_LSE:
        return None, None
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
            return out, lse.float()
        if q.device.type == "cuda":
            if q.dtype in (torch.float16, torch.bfloat16):
                res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)
            else:  # flash has no float32 kernel: the memory-efficient one (its lse may be padded)
                res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)
            return res[0], res[1][..., : q.shape[-2]].float()
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        warnings.warn(f"no log-sum-exp attention kernel for {key}: the four key groups are copied ({e})")
    _NO_LSE.add(key)
    return None, None


class KeyValueStore:
    """Keys/values of one network evaluation: written once, read in place by every later group.

    `attend(layer, blocks, q, k, v, group_embed)` is the block attention of one group of blocks.
    Its blocks are cut into runs whose four key groups (self, top-left, left, top) are each one
    strided view, into the group's own k/v or into the frontier ring (blocks stored by earlier
    groups); `attend_key_groups` attends over them without stacking, concatenating or indexing.

    With `keep=True` every group's keys/values are written into the ring: per layer a preallocated
    (slots, B, T, h, d) tensor, the block at scan position p in slot p % slots; `slots` (the plan's
    `frontier_span()`) is large enough that no block still read is overwritten. A `storage_device`
    other than the compute device offloads the ring (pinned memory when computing on CUDA): blocks go
    out and the cached runs a group reads come back with non-blocking copies on a side stream, the
    next layer's fetched while this one computes. `release` drops blocks no later group reads (they
    stop counting; their slots are reused). The whole-image forward is one group with `keep=False`.

    `storage_dtype` is the ring's dtype (default: the keys'); `_store`/`_load` are the one place
    where blocks are converted on the way in and out.
    """

    def __init__(self, layers: int, keep: bool = False, storage_device=None, grid=None, scan: str = "rows",
                 slots: int | None = None, storage_dtype: torch.dtype | None = None, float8: bool = False):
        self.layers = layers
        self.keep = keep
        self.storage_device = None if storage_device is None else torch.device(storage_device)
        self.grid, self.scan, self.slots = grid, scan, slots
        self.storage_dtype = storage_dtype
        self.float8 = float8  # ring as float8 e4m3 with one scale per slot and batch item (float8.py)
        self.scales: list = [None] * layers  # float8: per layer (key scales, value scales), (slots, B)
        self.live: set[int] = set()  # scan positions written and not yet released
        self.ring: list = [None] * layers  # per layer: (keys, values), each (slots, B, T, h, d)
        self._group = None  # (blocks, {position: index in group}, runs) of the group being computed
        self._compute_device = None
        self._staged: dict = {}  # offloaded: layer -> fetched cached runs
        self._stream = None  # offloaded on CUDA: the side stream of all copies

    # --- where blocks are --------------------------------------------------------------------------
    def _position(self, blk: Block) -> int:
        """Index of the block along the scan: consecutive blocks of a group, consecutive positions."""
        rows, cols = self.grid
        r, c = blk
        return r * cols + c if self.scan == "rows" else c * rows + r

    def _runs(self, blocks: list[Block]):
        """[(start, length, [(source, first) per key group])], source "group" or "ring" (a slot)."""
        if self._group is not None and self._group[0] == blocks:
            return self._group[2]
        if self.grid is None:  # the whole-image forward: the blocks given, scanned by rows
            self.grid = (max(r for r, _ in blocks) + 1, max(c for _, c in blocks) + 1)
        index = {self._position(blk): i for i, blk in enumerate(blocks)}
        runs = []
        for i, blk in enumerate(blocks):
            sources = []
            for nb in neighbour_blocks(*blk):
                p = self._position(nb)
                if p in index:
                    sources.append(("group", index[p]))
                elif p in self.live:
                    sources.append(("ring", p % self.slots))
                else:
                    raise RuntimeError(f"block {blk} needs block {nb}, which is neither computed nor cached")
            if runs:
                start, length, first = runs[-1]
                if all(s == f and i0 + length == i1 for (s, i1), (f, i0) in zip(sources, first)):
                    runs[-1] = (start, length + 1, first)  # every key group continues in one stride
                    continue
            runs.append((i, 1, sources))
        self._group = (blocks, index, runs)
        self._staged.clear()
        return runs

    @property
    def offloaded(self) -> bool:
        """Cached runs are copied to the compute device (on a CPU-only machine: the CPU twin of it)."""
        return self.keep and self.storage_device is not None

    # --- one group in one layer --------------------------------------------------------------------
    def attend(self, layer: int, blocks, q, k, v, group_embed) -> torch.Tensor:
        """q, k, v: (B, n, T, h, d) of `blocks` (after rotary) -> attention output (B, n, T, h*d)."""
        blocks = list(blocks)
        self._compute_device = q.device
        runs = self._runs(blocks)
        if self.keep:
            self._write(layer, k, v)
        cached = self._cached_runs(layer, runs)
        if self.offloaded and layer + 1 < self.layers:
            self._staged[layer + 1] = self._fetch(layer + 1, runs)  # in flight while this layer computes
        b, n, t, h, d = q.shape
        out = q.new_empty(b, n, t, h * d)
        for bi in range(b):
            for ri, (start, length, sources) in enumerate(runs):
                keys, values = [], []
                for g, (source, first) in enumerate(sources):
                    if source == "group":
                        keys.append(k[bi, first:first + length])
                        values.append(v[bi, first:first + length])
                    else:
                        ks, vs = cached[ri][g]
                        keys.append(ks[:, bi])
                        values.append(vs[:, bi])
                merged = attend_key_groups(q[bi, start:start + length], keys, values, group_embed)
                out[bi, start:start + length].view(length, t, h, d).copy_(merged)
        return out

    def _cached_runs(self, layer: int, runs):
        """Per run and key group from the ring: (keys, values) (length, B, T, h, d) on the compute device."""
        if not self.offloaded:
            ring_k, ring_v = self.ring[layer] if self.ring[layer] is not None else (None, None)
            return [
                {g: (self._load(layer, 0, ring_k, s, length), self._load(layer, 1, ring_v, s, length))
                 for g, (source, s) in enumerate(sources) if source == "ring"}
                for _, length, sources in runs
            ]
        staged = self._staged.pop(layer, None)
        if staged is None:
            staged = self._fetch(layer, runs)
        if self._stream is not None:
            torch.cuda.current_stream(self._compute_device).wait_stream(self._stream)
        return staged

    def _fetch(self, layer: int, runs):
        """Copy the ring slots a group reads to the compute device (non-blocking, on the side stream)."""
        if self.ring[layer] is None:  # the first group: nothing cached yet
            return [{} for _ in runs]
        ring_k, ring_v = self.ring[layer]
        fetched = []
        with self._copy_stream():
            for _, length, sources in runs:
                per_group = {}
                for g, (source, s) in enumerate(sources):
                    if source == "ring":
                        per_group[g] = (self._bring(layer, 0, ring_k, s, length), self._bring(layer, 1, ring_v, s, length))
                fetched.append(per_group)
        return fetched

    def _bring(self, layer, which, ring, s, length) -> torch.Tensor:
        t = ring[s:s + length]
        out = torch.empty(t.shape, dtype=t.dtype, device=self._compute_device)
        out.copy_(t, non_blocking=True)
        scale = None
        if self.float8:
            scale = self.scales[layer][which][s:s + length].to(self._compute_device, non_blocking=True)
        return self._decode(out, scale)

    def _write(self, layer: int, k, v) -> None:
        """Store the group's keys/values (B, n, T, h, d) in their ring slots: contiguous runs, one copy."""
        blocks, index, _ = self._group
        if self.ring[layer] is None:
            self._allocate(layer, k)
        if layer == 0:
            self._claim(index)
        ring_k, ring_v = self.ring[layer]
        order = sorted(index.items(), key=lambda item: item[1])  # (position, group index) by index
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and order[j + 1][0] % self.slots == order[j][0] % self.slots + 1 \
                    and order[j + 1][1] == order[j][1] + 1:
                j += 1
            s, g0, m = order[i][0] % self.slots, order[i][1], j - i + 1
            with self._copy_stream(after_compute=True, sources=(k, v)):
                for which, (ring, t) in enumerate(((ring_k, k), (ring_v, v))):
                    block, scale = self._encode(t[:, g0:g0 + m].transpose(0, 1))
                    ring[s:s + m].copy_(block, non_blocking=True)
                    if scale is not None:
                        self.scales[layer][which][s:s + m].copy_(scale, non_blocking=True)
            i = j + 1

    def _claim(self, index) -> None:
        for p in index:
            for other in self.live:
                if other != p and other % self.slots == p % self.slots:
                    raise RuntimeError(f"frontier ring of {self.slots} slots is too small: block {p} would overwrite {other}")
        self.live.update(index)

    def _allocate(self, layer: int, k) -> None:
        if self.slots is None:
            rows, cols = self.grid
            self.slots = rows * cols
        device = self.storage_device or k.device
        pin = device.type == "cpu" and k.is_cuda
        shape = (self.slots, k.shape[0], *k.shape[2:])
        dtype = FLOAT8 if self.float8 else (self.storage_dtype or k.dtype)
        self.ring[layer] = tuple(torch.empty(shape, dtype=dtype, device=device, pin_memory=pin) for _ in range(2))
        if self.float8:
            self.scales[layer] = tuple(torch.empty(shape[:2], device=device, pin_memory=pin) for _ in range(2))
        self._read_dtype = k.dtype

    def _encode(self, t: torch.Tensor):
        """Blocks (m, B, T, h, d) on their way into the ring: (stored form, scales or None)."""
        if not self.float8:
            return t, None
        return quantise(t, block_dims=2)  # on the compute device: half the bytes to move

    def _decode(self, t: torch.Tensor, scale) -> torch.Tensor:
        """Ring slots on their way to the attention: a view, or dequantised (float8: a copy)."""
        return t if scale is None else dequantise(t, scale, self._read_dtype)

    def _load(self, layer, which, ring, s, length) -> torch.Tensor:
        scale = self.scales[layer][which][s:s + length] if self.float8 else None
        return self._decode(ring[s:s + length], scale)

    @contextlib.contextmanager
    def _copy_stream(self, after_compute: bool = False, sources=()):
        """Offloaded on CUDA: run copies on the side stream (ordered after the compute so far when
        `after_compute`), keeping their sources alive until done; otherwise plain copies."""
        if not (self.offloaded and self._compute_device.type == "cuda"):
            yield
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(self._compute_device)
        if after_compute:
            self._stream.wait_stream(torch.cuda.current_stream(self._compute_device))
        with torch.cuda.stream(self._stream):
            yield
        for t in sources:
            t.record_stream(self._stream)

    def release(self, blocks) -> None:
        if self.grid is None:
            return
        for blk in blocks:
            self.live.discard(self._position(blk))

    def clear(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self.live.clear()
        self.ring = [None] * self.layers
        self.scales = [None] * self.layers
        self._staged.clear()
        self._group = None

    def cached_blocks(self) -> int:
        return len(self.live) if self.keep else 0


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
