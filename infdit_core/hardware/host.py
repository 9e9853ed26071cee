"""Page-locked (pinned) host memory for a GPU run (CUDA, ROCm, XPU: `devices.traits(...).pinned_memory`):
allocated so that a failure is an out-of-memory error, counted as torch's caching host allocator really
takes it, handed back after a run, and used only for small reusable staging buffers and the offloaded
frontier, never for a full-size image.

torch's CachingHostAllocator rounds every pinned request up to a power of two and keeps the block for
the process (ATen/core/CachingHostAllocator.h: `PowerOf2Ceil`, no threshold by default), so
`pinned_bytes` is what a pinned tensor really costs, and `release_host_cache` returns the cached blocks
to the system once a run is over.
"""
from __future__ import annotations

import torch

from .devices import stream_backend


def pinned_bytes(nbytes: int) -> int:
    """Bytes the caching host allocator reserves for a pinned request of `nbytes` (the next power of two)."""
    return 0 if nbytes <= 0 else 1 << (int(nbytes) - 1).bit_length()


def pinned_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An empty pinned CPU tensor; a failed page-locked allocation is raised as torch.OutOfMemoryError, so
    the out-of-memory recovery applies to it as to the device (it is a plain RuntimeError in torch)."""
    try:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        raise torch.OutOfMemoryError(f"could not page-lock {pinned_bytes(nbytes) / 2**20:.0f} MiB of host memory "
                                     f"for the offloaded frontier or staging: {str(e).splitlines()[0] if str(e) else e}") from e


def release_host_cache() -> None:
    """Hand torch's cached pinned blocks back to the system (a no-op without CUDA or on an older torch)."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None and torch.cuda.is_initialized():
        empty()


class PinnedStaging:
    """Moves the blocks of each group between host-held images and a GPU with pinned memory through small
    pinned buffers that are reused: `to_device` copies a host tensor in and sends it with a non-blocking copy;
    `to_host` brings a device tensor back with a non-blocking copy and runs `write(host_tensor)` once the
    copy is done - at the start of the group that reuses the buffer (two groups later) or at `flush`.
    The host waits only for that earlier group's copies (an event), never for a device value."""

    BUFFERS = 2  # a group's copies run while the next group is being queued

    def __init__(self, device):
        self.device = torch.device(device)
        self.streams = stream_backend(self.device)  # torch.cuda or torch.xpu: its Event
        self.buffers: list = [None] * self.BUFFERS  # pinned uint8
        self.events: list = [None] * self.BUFFERS
        self.pending: list = [[] for _ in range(self.BUFFERS)]  # (host view, write) to run once copied
        self.current, self.used = 0, 0

    def next_group(self) -> None:
        """Start a group: the buffer of two groups ago is reused once its copies are done."""
        if self.events[self.current] is not None:
            self.events[self.current].record()
        self.current = (self.current + 1) % self.BUFFERS
        self._settle(self.current)
        self.used = 0

    def _settle(self, i: int) -> None:
        if self.events[i] is not None:
            self.events[i].synchronize()
            self.events[i] = None
        for view, write in self.pending[i]:
            write(view)
        self.pending[i].clear()

    def _region(self, shape, dtype) -> torch.Tensor:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        end = self.used + nbytes
        buf = self.buffers[self.current]
        if buf is None or buf.numel() < end:  # grow; views of the old buffer keep it until their copies are done
            size = pinned_bytes(max(nbytes, 2 * (buf.numel() if buf is not None else 0)))
            self.buffers[self.current] = buf = pinned_empty((size,), torch.uint8)
            self.used, end = 0, nbytes
        view = buf[self.used:end].view(dtype).view(shape)
        self.used = -(-end // 64) * 64  # keep every region 64-byte aligned
        if self.events[self.current] is None:
            self.events[self.current] = self.streams.Event()
        return view

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        view = self._region(t.shape, t.dtype)
        view.copy_(t)
        return view.to(self.device, non_blocking=True)

    def to_host(self, t: torch.Tensor, write) -> None:
        view = self._region(t.shape, t.dtype)
        view.copy_(t, non_blocking=True)
        self.pending[self.current].append((view, write))

    def flush(self) -> None:
        """Wait for every copy and run every pending write (the end of an evaluation)."""
        if self.events[self.current] is not None:
            self.events[self.current].record()
        for i in range(self.BUFFERS):
            self._settle((self.current + 1 + i) % self.BUFFERS)
        self.used = 0
