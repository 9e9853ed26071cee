"""The frontier: the keys/values of blocks that later block groups still read, kept in one ring per layer
(on the device or offloaded to pinned host memory), written once and read in place."""
from __future__ import annotations

import contextlib

import torch

from ..hardware import host
from ..hardware.devices import stream_backend, traits
from .attention import Block, attend_concatenated, attend_key_groups, neighbour_blocks, reader_blocks, resolve_variant
from .float8 import FLOAT8, dequantise, quantise


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
    `storage_device` other than the compute device offloads the ring (pinned memory where the device has
    it: CUDA, ROCm, XPU): blocks go out, and each span of slots a group reads comes back once per layer,
    with non-blocking copies on a side stream; the next layer's spans are fetched while this one computes
    and the compute stream waits only for that fetch (an event). Without pinned memory (MPS) every copy
    is a blocking one: a non-blocking copy to pageable memory is unsafe there. `release` drops blocks no
    later group reads. The whole-image forward is one group with `keep=False`.

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
        self._stream = None  # offloaded with pinned memory: the side stream of all copies
        self._async = False  # copies to and from the ring are non-blocking (the ring is pinned)
        self._streams = None  # offloaded to pinned memory: torch.cuda or torch.xpu, for the side stream

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
            self._streams.current_stream(self._compute_device).wait_event(event)  # this fetch only, not the writes
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
                event = self._streams.Event()
                event.record(self._stream)
        return self._views(read, where), event

    def _bring(self, layer, which, s, length) -> torch.Tensor:
        t = self.ring[layer][which][s:s + length]
        out = torch.empty(t.shape, dtype=t.dtype, device=self._compute_device)
        out.copy_(t, non_blocking=self._async)
        scale = None
        if self.float8:
            scale = self.scales[layer][which][s:s + length].to(self._compute_device, non_blocking=self._async)
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
                        ring[s:s + m].copy_(t if whole else t[g0:g0 + m], non_blocking=self._async)
                else:
                    for which, (ring, t) in enumerate(((ring_k, k), (ring_v, v))):
                        block, scale = self._encode(t[:, g0:g0 + m].transpose(0, 1))
                        ring[s:s + m].copy_(block, non_blocking=self._async)
                        if scale is not None:
                            self.scales[layer][which][s:s + m].copy_(scale, non_blocking=self._async)
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
        pin = device.type == "cpu" and k.device.type != "cpu" and traits(k.device).pinned_memory
        self._async = pin or device.type != "cpu"  # on the device, or pinned: never pageable host memory
        self._streams = stream_backend(k.device) if pin else None
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
        """Offloaded to pinned memory: run copies on the side stream (ordered after the compute so far when
        `after_compute`), keeping their sources alive until done; otherwise plain copies."""
        backend = self._streams if self.offloaded else None
        if backend is None:
            yield
            return
        if self._stream is None:
            self._stream = backend.Stream(self._compute_device)
        if after_compute:
            self._stream.wait_stream(backend.current_stream(self._compute_device))
        with backend.stream(self._stream):
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
