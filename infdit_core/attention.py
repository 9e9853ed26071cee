"""Unidirectional block attention (UniBA) and the Nearby-LR cross-attention windows.

A query in block (r, c) reads the keys/values of four blocks, in this order:
self, top-left, left, top. Missing neighbours at the border are clamped into the image (QUIRK of the
release: the duplicated groups change the softmax, so they are kept).

The four key groups can be attended in three ways, equal up to rounding (`ATTENTION_VARIANTS`):
- "lse_merge": one fused call per group, each returning its log-sum-exp, merged by those (no copy of
  a key; the CPU default, bit for bit the release's);
- "concat": the four groups copied side by side (with their group embedding added) and one fused call
  over 4T keys (the fewest bytes moved on a GPU: see benchmarks/gpu_model.py; the CUDA default);
- "cudnn": like "lse_merge" with cuDNN's attention kernel where torch has it.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from . import host
from .float8 import FLOAT8, dequantise, quantise
from .precision import capability, native_bf16

Block = tuple[int, int]
KEY_GROUPS = ("self", "top_left", "left", "top")
ATTENTION_VARIANTS = ("auto", "lse_merge", "concat", "cudnn")
_variant = "auto"


def neighbour_blocks(row: int, col: int) -> tuple[Block, Block, Block, Block]:
    """The four key blocks of block (row, col), clamped at the top and left border."""
    up, left = max(row - 1, 0), max(col - 1, 0)
    return (row, col), (up, left), (row, left), (up, col)


def reader_blocks(row: int, col: int, rows: int, cols: int) -> tuple[Block, ...]:
    """The later blocks whose key groups include (row, col): right, below, below-right (inside the grid).
    With the border clamp these are all: a block's other readers are itself."""
    return tuple((r, c) for r, c in ((row, col + 1), (row + 1, col), (row + 1, col + 1)) if r < rows and c < cols)


def default_variant(device) -> str:
    """"lse_merge" on the CPU (the release's numbers), "concat" on CUDA (fewest bytes, one longer call)."""
    return "concat" if torch.device(device).type == "cuda" else "lse_merge"


def resolve_variant(variant: str | None, device) -> str:
    variant = _variant if variant is None else variant
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"attention variant must be one of {', '.join(ATTENTION_VARIANTS)}, got {variant!r}")
    return default_variant(device) if variant == "auto" else variant


@contextlib.contextmanager
def attention_variant(variant: str):
    """Run the block attention with `variant` inside the block (benchmarks/gpu.py A/Bs them)."""
    global _variant
    resolve_variant(variant, "cpu")
    before, _variant = _variant, variant
    try:
        yield
    finally:
        _variant = before


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
    """Attention of m blocks over four key groups given as separate tensors.

    q: (m, T, h, d); keys, values: four (m, T, h, d) tensors (any strides with a contiguous last dim,
    e.g. views into the frontier ring); group_embed: (4, h, d), added to every key of its group.
    Returns (m, T, h, d) (the "concat" variant: a view of (m, h, T, d) memory is avoided, it is
    laid out as (m, T, h, d)). With "lse_merge"/"cudnn" each group is attended on its own, returning
    its log-sum-exp; the embedding adds q.e_g to every score of group g, so it only shifts that group's
    log-sum-exp, and the softmax over all 4T keys is the lse-weighted sum of the four partial results.
    """
    # Training: the fused kernels give no gradient through the log-sum-exp, so the groups are copied.
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, *keys, *values, group_embed))
    if training:
        k = torch.cat([kg + e.to(kg.dtype) for kg, e in zip(keys, group_embed)], dim=1)
        v = torch.cat(list(values), dim=1)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    variant = resolve_variant(None, q.device)
    if variant == "concat":
        return _attend_concatenated(q, keys, values, group_embed)
    d = q.shape[-1]
    scale = d**-0.5
    qt = q.transpose(1, 2)  # (m, h, T, d)
    outs, lses = [], []
    for g in range(4):
        out, lse = attention_with_lse(qt, keys[g].transpose(1, 2), values[g].transpose(1, 2), scale,
                                      cudnn=variant == "cudnn")
        if out is None:  # no kernel on this device returns the log-sum-exp: one call over the copied groups
            return _attend_concatenated(q, keys, values, group_embed)
        outs.append(out)
        lses.append(lse)
    # q.e_g for every query and group: (m, h, T, 4)
    embed = group_embed if group_embed.dtype == q.dtype else group_embed.to(q.dtype)
    shift = torch.matmul(qt, embed.permute(1, 2, 0)[None]).float() * scale
    lses = torch.stack(lses).add_(shift.permute(3, 0, 1, 2))
    weights = torch.softmax(lses, dim=0).unsqueeze(-1).unbind(0)  # 4 x (m, h, T, 1), float32
    acc = outs[0].float().mul_(weights[0]) if q.dtype != torch.float32 else outs[0].mul_(weights[0])
    for g in range(1, 4):
        acc.addcmul_(outs[g], weights[g])
    return acc.transpose(1, 2)  # (m, T, h, d), converted to q's dtype by the caller's copy


def _attend_concatenated(q, keys, values, group_embed) -> torch.Tensor:
    """The four groups copied side by side, then one attention call over all 4T keys."""
    return attend_concatenated(q, [(0, q.shape[0], keys, values)], group_embed)


def attend_concatenated(q, parts, group_embed) -> torch.Tensor:
    """Attention of m blocks q (m, T, h, d) over their four key groups, written side by side into one
    (m, 4T, h, d) key and value buffer (the group embedding added on the way) and attended in one call.
    parts: [(start, length, keys, values)]: the four key and value groups of blocks start..start+length
    (views anywhere: the group's own k/v, the ring). Returns (m, T, h, d)."""
    m, t, h, d = q.shape
    k = q.new_empty(m, 4, t, h, d)
    k_groups = k.unbind(1)
    embeds = (group_embed if group_embed.dtype == q.dtype else group_embed.to(q.dtype)).unbind(0)
    single = len(parts) == 1
    if single:  # one run: the values are one concatenation (one call instead of four copies)
        v = torch.cat(parts[0][3], dim=1)
    else:
        v = q.new_empty(m, 4, t, h, d)
        v_groups = v.unbind(1)
    for start, length, keys, values in parts:
        for g in range(4):
            torch.add(keys[g], embeds[g], out=k_groups[g] if single else k_groups[g][start:start + length])
            if not single:
                v_groups[g][start:start + length].copy_(values[g])
    return _one_call(q, k.view(m, 4 * t, h, d), v.view(m, 4 * t, h, d))


# Per (device with its index, dtype): "cudnn" while cuDNN's kernel takes the one call over 4T keys, "sdpa"
# once it refused (then torch's own choice, flash first).
_ONE_CALL: dict = {}


def _one_call(q, k, v) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (m, T, h, d) q and (m, 4T, h, d) k, v -> (m, T, h, d). On Hopper and
    newer cuDNN's kernel first: torch ranks it after flash, but on those cards it runs head dim 80
    unpadded and is the faster one (torch 2.5's release measured up to 75% over FA2 on H100;
    benchmarks/gpu.py measures it here); a refusal falls back to F.scaled_dot_product_attention."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    key = (str(q.device), q.dtype)
    if q.device.type == "cuda" and q.dtype != torch.float32 and _ONE_CALL.get(key) != "sdpa":
        cap = capability(q.device)
        if cap is not None and cap >= (9, 0):
            try:
                out = torch.ops.aten._scaled_dot_product_cudnn_attention(qt, kt, vt, None, False)[0]
                _ONE_CALL[key] = "cudnn"
                return out.transpose(1, 2)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, AttributeError, NotImplementedError) as e:
                warnings.warn(f"cuDNN attention unavailable for {key}; using torch's choice ({e})")
                _ONE_CALL[key] = "sdpa"
    return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


# Per (device with its index, dtype): the first log-sum-exp kernel that ran, or "concat" when none did.
# A kernel that refuses is not tried again on that device and dtype; other GPUs of the machine keep theirs.
_CHOSEN: dict = {}


def lse_kernels(device, dtype, cudnn: bool = False) -> tuple[str, ...]:
    """The log-sum-exp kernels worth trying, best first. CUDA: flash (fp16/bf16 on sm80+), then the
    memory-efficient kernel (fp16/fp32 on sm50+, bf16 on sm80+); "cudnn" first where asked for."""
    device = torch.device(device)
    if device.type == "cpu":
        return ("flash_cpu",)
    if device.type != "cuda":
        return ()
    native = native_bf16(device)
    kernels = ["cudnn"] if cudnn and native and dtype != torch.float32 else []
    if dtype == torch.float16 or (dtype == torch.bfloat16 and native):
        if native:
            kernels.append("flash")
        kernels.append("efficient")
    elif dtype == torch.float32:
        kernels.append("efficient")
    return tuple(kernels)


def chosen_kernel(device, dtype, cudnn: bool = False) -> str:
    """The kernel the attention uses (or will first try) on this device and dtype, "concat" if none."""
    key = (str(torch.device(device)), dtype, cudnn)
    if key in _CHOSEN:
        return _CHOSEN[key]
    kernels = lse_kernels(device, dtype, cudnn)
    return kernels[0] if kernels else "concat"


def _run_kernel(name, q, k, v, scale):
    if name == "flash_cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    if name == "flash":
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)
    elif name == "efficient":  # its log-sum-exp is padded to a multiple of 32 queries
        res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)
    else:  # cudnn
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, scale=scale)
    lse = res[1]
    if lse.dim() == 4:  # cuDNN: (N, h, Tq, 1)
        lse = lse.squeeze(-1)
    return res[0], lse if lse.shape[-1] == q.shape[-2] else lse[..., : q.shape[-2]]


def attention_with_lse(q, k, v, scale, cudnn: bool = False):
    """Scaled dot-product attention that also returns the log-sum-exp of the scores, or (None, None).

    q: (N, h, Tq, d), k, v: (N, h, Tk, d) -> (N, h, Tq, d), (N, h, Tq) float32. Uses the fused kernels
    behind F.scaled_dot_product_attention (never the Tq x Tk score matrix), one step down at a time
    (`lse_kernels`): a kernel that fails is noted once and the next is tried; (None, None) when none
    is left (the caller then copies the groups and makes one call)."""
    key = (str(q.device), q.dtype, cudnn)
    chosen = _CHOSEN.get(key)
    if chosen == "concat":
        return None, None
    if chosen is not None:  # the usual call: the kernel that ran before, no device query
        try:
            out, lse = _run_kernel(chosen, q, k, v, scale)
            return out, lse if lse.dtype == torch.float32 else lse.float()
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AttributeError, NotImplementedError) as e:
            warnings.warn(f"attention kernel {chosen} failed for {key[:2]}; trying the next ({e})")
    kernels = lse_kernels(q.device, q.dtype, cudnn)
    if chosen is not None:
        kernels = kernels[kernels.index(chosen) + 1:] if chosen in kernels else ()
    for name in kernels:
        try:
            out, lse = _run_kernel(name, q, k, v, scale)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AttributeError, NotImplementedError) as e:
            warnings.warn(f"attention kernel {name} unavailable for {key[:2]}; trying the next ({e})")
            continue
        _CHOSEN[key] = name
        return out, lse if lse.dtype == torch.float32 else lse.float()
    _CHOSEN[key] = "concat"
    return None, None


class KeyValueStore:
    """Keys/values of one network evaluation: written once, read in place by every later group.

    `attend(layer, blocks, q, k, v, group_embed)` is the block attention of one group of blocks.
    Its blocks are cut into runs whose four key groups (self, top-left, left, top) are each one
    strided view, into the group's own k/v or into the frontier ring (blocks stored by earlier
    groups).

    With `keep=True`, after a group's attention in a layer, its blocks that a later group reads (a
    reader right, below or below-right of it outside the group) are written into the ring: per layer a
    preallocated (slots, B, T, h, d) tensor, the block at scan position p in slot p % slots. Reading
    before writing lets a block take the slot of one this group read for the last time, so `slots`
    (the plan's `frontier_span()`) only has to separate the blocks kept after each group. A
    `storage_device` other than the compute device offloads the ring (pinned memory when computing on
    CUDA): blocks go out, and each span of slots a group reads comes back once per layer, with
    non-blocking copies on a side stream; the next layer's spans are fetched while this one computes
    and the compute stream waits only for that fetch (an event). `release` drops blocks no later group
    reads. The whole-image forward is one group with `keep=False`.

    `storage_dtype` is the ring's dtype (default: the keys'); `_encode`/`_decode` are the one place
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
        self.done: set[int] = set()  # scan positions of every group computed so far (and the current one)
        self.ring: list = [None] * layers  # per layer: (keys, values), each (slots, B, T, h, d)
        self._rings_of_one: list = [None] * layers  # the same, first image: (slots, T, h, d) views
        self._group = None  # (blocks, {position: index in group}, runs, [(position, index) to write]) of the group
        self._compute_device = None
        self._staged: dict = {}  # offloaded: layer -> (fetched spans per run, event)
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
        kept = []
        if self.keep:
            rows, cols = self.grid
            self.done.update(index)
            kept = sorted(((self._position(blk), i) for i, blk in enumerate(blocks)
                           if any(self._position(rd) not in self.done for rd in reader_blocks(*blk, rows, cols))),
                          key=lambda item: item[1])
        self._group = (blocks, index, runs, kept)
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
        b, n, t, h, d = q.shape
        one = b == 1  # one image: the batch dimension is dropped once, not per key group
        runs = self._runs(blocks)
        cached = self._cached_runs(layer, runs, one)
        if self.offloaded and layer + 1 < self.layers:
            self._staged[layer + 1] = self._fetch(layer + 1, runs, one)  # in flight while this layer computes
        concat = resolve_variant(None, q.device) == "concat" and not torch.is_grad_enabled()
        out = None if concat and one else q.new_empty(b, n, t, h * d)
        for bi in range(b):
            kb, vb = k[bi], v[bi]
            parts = []
            for ri, (start, length, sources) in enumerate(runs):
                keys, values = [], []
                for g, (source, first) in enumerate(sources):
                    if source == "group":
                        whole = first == 0 and length == n
                        keys.append(kb if whole else kb[first:first + length])
                        values.append(vb if whole else vb[first:first + length])
                    else:
                        ks, vs = cached[ri][g]
                        keys.append(ks if one else ks[:, bi])
                        values.append(vs if one else vs[:, bi])
                if concat:  # every run's groups into one buffer: one attention call for the whole group
                    parts.append((start, length, keys, values))
                    continue
                merged = attend_key_groups(q[bi, start:start + length], keys, values, group_embed)
                out[bi, start:start + length].view(length, t, h, d).copy_(merged)
            if concat:
                merged = attend_concatenated(q[bi], parts, group_embed)
                if out is None:
                    out = merged.reshape(1, n, t, h * d)  # a view where the kernel wrote (n, T, h, d)
                else:
                    out[bi].view(n, t, h, d).copy_(merged)
        if self.keep:  # after the reads: a block may take the slot of one read for the last time
            self._write(layer, k, v, (kb, vb) if one else None)
        return out

    def _spans(self, runs):
        """The ring slots a group reads, as merged spans [(first slot, length)], and for every run and
        key group from the ring: (span index, offset in it, length)."""
        wanted = sorted({(s, length) for _, length, sources in runs for source, s in sources if source == "ring"})
        spans: list[list[int]] = []
        for s, length in wanted:
            if spans and s <= spans[-1][0] + spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], s + length - spans[-1][0])
            else:
                spans.append([s, length])
        where = []
        for _, length, sources in runs:
            per_group = {}
            for g, (source, s) in enumerate(sources):
                if source == "ring":
                    i = next(j for j, (a, m) in enumerate(spans) if a <= s and s + length <= a + m)
                    per_group[g] = (i, s - spans[i][0], length)
            where.append(per_group)
        return spans, where

    def _cached_runs(self, layer: int, runs, one: bool = False):
        """Per run and key group from the ring: (keys, values) (length, B, T, h, d) on the compute device,
        (length, T, h, d) for `one` image."""
        if not self.offloaded:
            if self.ring[layer] is None:
                return [{} for _ in runs]
            rings = self._rings_of_one[layer] if one else self.ring[layer]
            return [{g: tuple(self._load(layer, which, rings[which], s, length) for which in (0, 1))
                     for g, (source, s) in enumerate(sources) if source == "ring"}
                    for _, length, sources in runs]  # views into the ring (float8: dequantised)
        staged = self._staged.pop(layer, None)
        if staged is None:
            staged = self._fetch(layer, runs, one)
        fetched, event = staged
        if event is not None:
            torch.cuda.current_stream(self._compute_device).wait_event(event)  # this fetch only, not the writes
        return fetched

    @staticmethod
    def _views(read, where):
        return [{g: tuple(t[off:off + length] for t in read[i]) for g, (i, off, length) in per_group.items()}
                for per_group in where]

    def _fetch(self, layer: int, runs, one: bool = False):
        """Copy each span of ring slots the group reads to the compute device once (non-blocking, on the side
        stream); returns (views per run and key group, the event the compute waits for, or None)."""
        if self.ring[layer] is None:  # the first group: nothing cached yet
            return [{} for _ in runs], None
        spans, where = self._spans(runs)
        event = None
        with self._copy_stream():
            read = [tuple(self._bring(layer, which, a, m) for which in (0, 1)) for a, m in spans]
            if one:
                read = [(kr[:, 0], vr[:, 0]) for kr, vr in read]
            if self._stream is not None:
                event = torch.cuda.Event()
                event.record(self._stream)
        return self._views(read, where), event

    def _bring(self, layer, which, s, length) -> torch.Tensor:
        t = self.ring[layer][which][s:s + length]
        out = torch.empty(t.shape, dtype=t.dtype, device=self._compute_device)
        out.copy_(t, non_blocking=True)
        scale = None
        if self.float8:
            scale = self.scales[layer][which][s:s + length].to(self._compute_device, non_blocking=True)
        return self._decode(out, scale)

    def _write(self, layer: int, k, v, of_one=None) -> None:
        """Store the group's blocks that later groups read (B, n, T, h, d) in their ring slots: contiguous
        runs, one copy each. The rest is never written. of_one: (k, v) of the one image (n, T, h, d)."""
        _, _, _, kept = self._group
        if not kept:
            return
        if self.ring[layer] is None:
            self._allocate(layer, k)
        if layer == 0:
            self._claim([p for p, _ in kept])
        ring_k, ring_v = self.ring[layer]
        i = 0
        while i < len(kept):
            j = i
            while j + 1 < len(kept) and kept[j + 1][0] % self.slots == kept[j][0] % self.slots + 1 \
                    and kept[j + 1][1] == kept[j][1] + 1:
                j += 1
            s, g0, m = kept[i][0] % self.slots, kept[i][1], j - i + 1
            with self._copy_stream(after_compute=True, sources=(k, v)):
                if of_one is not None and not self.float8:  # one image: plain slices, no batch transpose
                    whole = g0 == 0 and m == of_one[0].shape[0]
                    for ring, t in zip(self._rings_of_one[layer], of_one):
                        ring[s:s + m].copy_(t if whole else t[g0:g0 + m], non_blocking=True)
                else:
                    for which, (ring, t) in enumerate(((ring_k, k), (ring_v, v))):
                        block, scale = self._encode(t[:, g0:g0 + m].transpose(0, 1))
                        ring[s:s + m].copy_(block, non_blocking=True)
                        if scale is not None:
                            self.scales[layer][which][s:s + m].copy_(scale, non_blocking=True)
            i = j + 1

    def _claim(self, positions) -> None:
        """Mark `positions` live; they must not share a slot with a block some later group still reads."""
        rows, cols = self.grid
        blocks = {self._position(b): b for b in self._group[0]}
        still_read = {p for p in self.live if any(self._position(rd) not in self.done for rd in
                                                  reader_blocks(*self._block_at(p), rows, cols))}
        taken = {p % self.slots: p for p in still_read}
        for p in positions:
            other = taken.get(p % self.slots)
            if other is not None and other != p:
                raise RuntimeError(f"frontier ring of {self.slots} slots is too small: block {blocks.get(p)} "
                                   f"would overwrite {self._block_at(other)}")
            taken[p % self.slots] = p
        self.live.update(positions)

    def _block_at(self, p: int) -> Block:
        rows, cols = self.grid
        return divmod(p, cols) if self.scan == "rows" else tuple(reversed(divmod(p, rows)))

    def _allocate(self, layer: int, k) -> None:
        if self.slots is None:
            rows, cols = self.grid
            self.slots = rows * cols
        device = self.storage_device or k.device
        pin = device.type == "cpu" and k.is_cuda
        shape = (self.slots, k.shape[0], *k.shape[2:])
        dtype = FLOAT8 if self.float8 else (self.storage_dtype or k.dtype)

        def empty(size, dt):
            return host.pinned_empty(size, dt) if pin else torch.empty(size, dtype=dt, device=device)

        self.ring[layer] = (empty(shape, dtype), empty(shape, dtype))
        self._rings_of_one[layer] = tuple(r[:, 0] for r in self.ring[layer])  # (slots, T, h, d) for one image
        if self.float8:
            self.scales[layer] = (empty(shape[:2], torch.float32), empty(shape[:2], torch.float32))
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
        self.done.clear()
        self.ring = [None] * self.layers
        self._rings_of_one = [None] * self.layers
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
