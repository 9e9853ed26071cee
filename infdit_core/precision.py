"""Which float type a model runs in when the user says "auto": the one decision the CLI, the API and
the ComfyUI node share.

bf16 where the device multiplies it natively (CUDA with bf16 support; CPUs with AMX or AVX512-BF16,
where bf16 matmuls run 2-5x faster than float32), else float32. fp16 is never chosen: the model was
trained in bf16 and fp16 may overflow.
"""
from __future__ import annotations

import torch

from .checkpoint import DTYPES


def cpu_has_native_bf16() -> bool:
    """True when torch's CPU kernels can use bf16 instructions here (AMX tiles or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)  # private probes of torch >= 2.3; absent = not known
        if check is not None and check():
            return True
    return False


def auto_dtype(device) -> torch.dtype:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
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
