"""Which float type a model runs in when the user says "auto": the one decision the CLI, the API and
the ComfyUI node share.

bf16 where the device multiplies it natively: a CUDA device of compute capability 8.0 or higher (its
own index: one machine may mix GPUs), an AMD card with bf16 matrix units (CDNA2/3, RDNA3 and newer, judged
by its gcnArchName: a HIP build reports a made-up capability), an Intel GPU that says it has bf16, or a CPU
with AMX or AVX512-BF16, where bf16 matmuls run 2-5x faster than float32. Older CUDA cards (T4, V100,
RTX 20xx), older AMD cards (RDNA2, Vega) and Apple GPUs get fp16, which every one of them multiplies
natively; the model was trained in bf16 and fp16 can overflow, so every pass checks its output
(`check_finite`). Elsewhere float32.
"""
from __future__ import annotations

import torch

from .devices import is_rocm, modern_amd

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # the names users give


def cpu_has_native_bf16() -> bool:
    """True when torch's CPU kernels can use bf16 instructions here (AMX tiles or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)  # private probes of torch >= 2.3; absent = not known
        if check is not None and check():
            return True
    return False


def capability(device) -> tuple[int, int] | None:
    """CUDA compute capability of this device (its own index), None when it cannot be read (no driver:
    planning for a GPU from a machine without one assumes a current card)."""
    try:
        return tuple(torch.cuda.get_device_capability(torch.device(device)))
    except (RuntimeError, AssertionError, AttributeError):
        return None


def native_bf16(device) -> bool:
    """bf16 multiplied natively on this GPU (CUDA: compute capability 8.0+; ROCm: by architecture; XPU: as
    it reports; MPS: no); unknown counts as yes."""
    device = torch.device(device)
    if device.type == "cuda":
        if is_rocm():
            return modern_amd(device)
        cap = capability(device)
        return cap is None or cap >= (8, 0)
    if device.type == "xpu":
        try:
            return bool(torch.xpu.is_bf16_supported())
        except (RuntimeError, AssertionError, AttributeError):
            return True
    return False


def auto_dtype(device) -> torch.dtype:
    device = torch.device(device)
    if device.type in ("cuda", "xpu"):
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype, device) -> torch.dtype:
    """"auto", a name from DTYPES, or a torch dtype -> a torch dtype (a clear ValueError otherwise)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(device)
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be 'auto', one of {', '.join(DTYPES)} or a torch dtype, got {dtype!r}")


class NonFiniteOutput(ValueError):
    """A pass produced NaN or infinite values: nothing is written."""


def check_finite(x: torch.Tensor, dtype: torch.dtype, what: str = "the result") -> None:
    """Stop with one line if x holds NaN or infinity (read in strips: no full-size temporary). One device
    read per call: call it once per pass, never inside the block loop."""
    ok = torch.ones((), dtype=torch.bool, device=x.device)
    for strip in x.split(256, dim=-2):
        ok &= torch.isfinite(strip).all()
    if bool(ok):
        return
    if dtype == torch.float16:
        raise NonFiniteOutput(f"Inf-DiT produced NaN/infinite values in {what}: fp16 overflow (the model was trained in "
                              "bf16 and its activations can exceed fp16's range): use fp32 (--dtype fp32, or "
                              "weight_dtype fp32 in Load Inf-DiT); nothing was written")
    raise NonFiniteOutput(f"Inf-DiT produced NaN/infinite values in {what} ({str(dtype).replace('torch.', '')}): "
                          "the weights or the input may be damaged; try fp32 and check the model file; "
                          "nothing was written")
