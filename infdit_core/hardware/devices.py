"""What each kind of compute device can do: one small record per kind, asked by the rest of the core, and
the few calls whose name differs by backend (free memory, empty cache, streams, out-of-memory errors).

Kinds: "cpu", "cuda" (NVIDIA), "rocm" (AMD: torch.cuda over HIP), "mps" (Apple silicon) and "xpu" (Intel
Arc and data-centre GPUs). ComfyUI's comfy/model_management.py makes the same distinctions; inside ComfyUI
its own free memory, dtype and cache calls stand (nodes/comfy_adapter.py) and these records only describe
the kernels and memory rules.

Facts are from torch 2.13-2.14 and the upstream issues cited in ../shared/docs/device-review.md. What
holds only by emulation (no Mac, Arc or AMD card ran it) is listed in docs/performance.md, "Devices".
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

GIB = 1024**3


@dataclass(frozen=True)
class DeviceTraits:
    kind: str
    # F.scaled_dot_product_attention has a fused kernel here that never holds the score matrix. MPS answers
    # more than 8 queries with its unfused math path: float32 scores and their softmax (torch #178545).
    fused_attention: bool
    # torch's cuDNN attention kernel exists (NVIDIA builds only; HIP builds have none).
    cudnn_attention: bool
    # The block batch "auto" stops at (planning/memory.py says why for each), and with the frontier offloaded.
    block_batch_cap: int
    offloaded_block_batch_cap: int
    # Device memory is the host's RAM (CPU, Apple silicon): device and host needs are one budget.
    unified_memory: bool
    # Page-locked host memory with asynchronous copies and a side stream for them (CUDA, ROCm, XPU). Without
    # it every copy between host and device is a blocking one: a non-blocking copy to pageable memory is
    # unsafe on MPS (torch #189690).
    pinned_memory: bool
    float64: bool
    float8: bool
    # The largest tensor the backend can make (MPS aborts the process above 4 GiB: torch #149325), or None.
    max_tensor_bytes: int | None = None


CPU = DeviceTraits("cpu", fused_attention=True, cudnn_attention=False, block_batch_cap=1, offloaded_block_batch_cap=1,
                   unified_memory=True, pinned_memory=False, float64=True, float8=True)
CUDA = DeviceTraits("cuda", fused_attention=True, cudnn_attention=True, block_batch_cap=16, offloaded_block_batch_cap=64,
                    unified_memory=False, pinned_memory=True, float64=True, float8=True)
# AMD: fused attention (AOTriton's flash and memory-efficient kernels) only on CDNA2/3 and RDNA3 and newer;
# older cards run SDPA's math path (see `traits`).
ROCM = dataclasses.replace(CUDA, kind="rocm", cudnn_attention=False)
MPS = DeviceTraits("mps", fused_attention=False, cudnn_attention=False, block_batch_cap=4, offloaded_block_batch_cap=4,
                   unified_memory=True, pinned_memory=False, float64=False, float8=False, max_tensor_bytes=4 * GIB)
# Intel: oneDNN's fused SDPA; Arc A-series (Alchemist) has no float64 (its "fp64" aspect): read per device.
XPU = DeviceTraits("xpu", fused_attention=True, cudnn_attention=False, block_batch_cap=16, offloaded_block_batch_cap=64,
                   unified_memory=False, pinned_memory=True, float64=True, float8=True)
KINDS = {t.kind: t for t in (CPU, CUDA, ROCM, MPS, XPU)}
DEVICE_TYPES = ("cuda", "xpu", "mps", "cpu")  # what --device takes, in the order the default is picked

# AMD architectures with bf16 matrix units and AOTriton's fused attention: CDNA2 (gfx90a), CDNA3 (gfx94x),
# CDNA4 (gfx95x), RDNA3 (gfx11xx) and RDNA4 (gfx12xx). RDNA2 (gfx1030) and Vega/CDNA1 (gfx906, gfx908) are not.
_MODERN_AMD = re.compile(r"gfx(90a|94\d|95\d|11\d\d|12\d\d)")


def is_rocm() -> bool:
    """This torch drives AMD GPUs through HIP (its `torch.cuda` is ROCm)."""
    return getattr(torch.version, "hip", None) is not None


def rocm_arch(device) -> str | None:
    """The AMD architecture of this device ("gfx1100"), None when it cannot be read."""
    try:
        name = torch.cuda.get_device_properties(torch.device(device)).gcnArchName
    except (RuntimeError, AssertionError, AttributeError):
        return None
    return str(name).split(":")[0]


def modern_amd(device) -> bool:
    """bf16 matrix units and fused attention on this AMD device (unknown: assume a current card)."""
    arch = rocm_arch(device)
    return arch is None or bool(_MODERN_AMD.fullmatch(arch))


def xpu_has_float64(device) -> bool:
    try:
        return bool(torch.xpu.get_device_properties(torch.device(device)).has_fp64)
    except (RuntimeError, AssertionError, AttributeError):
        return False  # unknown: the safe answer (float64 is never needed on the device)


def traits(device) -> DeviceTraits:
    """The record for `device` (a torch.device or its name; None: the CPU)."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and is_rocm():
        return ROCM if modern_amd(device) else dataclasses.replace(ROCM, fused_attention=False)
    if device.type == "xpu":
        return dataclasses.replace(XPU, float64=xpu_has_float64(device))
    if device.type not in KINDS:
        return CPU  # meta and other kinds never compute here; planning treats them as a CPU
    return KINDS[device.type]


def torch_version() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


def has_antialiased_bicubic(device) -> bool:
    """F.interpolate(mode="bicubic", antialias=True) runs on this device (MPS: from torch 2.8, PR #149378)."""
    return torch.device(device).type != "mps" or torch_version() >= (2, 8)


def check_float8_frontier(device, float8: bool) -> None:
    """Refuse a float8 frontier, before any work, on a device without float8 (MPS): quantising runs there
    even when the frontier is offloaded."""
    if float8 and not traits(device).float8:
        raise ValueError(f"the float8 frontier is not available on {torch.device(device).type} (Apple GPUs have no "
                         "float8 type): pick a frontier without float8 in Block Size Control, or leave out "
                         "--float8-frontier")


def default_device() -> torch.device:
    """Outside ComfyUI: the first of an NVIDIA or AMD GPU, an Intel GPU, an Apple GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(device) -> torch.device:
    """`device` as a torch.device, or a one-line ValueError naming what this machine has instead."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICE_TYPES)} (e.g. cuda:1)") from None
    present = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available,
               "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(), "cpu": lambda: True}
    if device.type not in present:
        raise ValueError(f"unknown device {str(device)!r}: use one of {', '.join(DEVICE_TYPES)}")
    if not present[device.type]():
        raise ValueError(f"this machine has no {device.type} device (torch {torch.__version__} sees none): "
                         f"use --device {default_device().type}, or leave --device out")
    return device


def _backend(device):
    """torch.cuda / torch.xpu / torch.mps for this device, None for the CPU."""
    return {"cuda": torch.cuda, "xpu": getattr(torch, "xpu", None), "mps": torch.mps}.get(torch.device(device).type)


def stream_backend(device):
    """The module with Stream, Event, current_stream and stream for side-stream copies, or None where the
    device has no copy stream (CPU, MPS)."""
    return _backend(device) if traits(device).pinned_memory else None


def empty_cache(device) -> None:
    """Hand the backend allocator's cached blocks back (after an out-of-memory error, after a run)."""
    backend = _backend(device)
    if backend is torch.cuda and not torch.cuda.is_initialized():
        return
    if backend is not None:
        backend.empty_cache()


# MPS raises a plain RuntimeError, "MPS backend out of memory (MPS allocated: ...)" (accelerate #4226);
# CUDA, ROCm and XPU raise torch.OutOfMemoryError.
_OOM_MESSAGE = re.compile(r"^(MPS backend|XPU) out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """An out-of-memory error of any backend (the recovery retries these; nothing else)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and bool(_OOM_MESSAGE.match(str(error)))


def host_free_memory() -> int:
    """Memory the OS can give this process now, bytes (psutil: Linux, Windows and macOS alike)."""
    import psutil

    return int(psutil.virtual_memory().available)


def free_memory(device) -> int:
    """Free memory on `device` in bytes, from the backend's own API (its reusable cache counted as free)."""
    device = torch.device(device)
    if device.type in ("cuda", "xpu"):
        backend = _backend(device)
        free, _ = backend.mem_get_info(device)
        return free + backend.memory_reserved(device) - backend.memory_allocated(device)
    if device.type == "mps":
        # Metal's working-set limit and the RAM the OS has left, whichever is lower: one pool for both.
        cached = torch.mps.driver_allocated_memory() - torch.mps.current_allocated_memory()
        working_set = torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
        return max(0, min(working_set, host_free_memory() + cached))
    return host_free_memory()
