"""Opt-in `torch.compile` of the model's per-layer stages, with one fallback to eager.

What is compiled: the tensor-only stages of a layer (`model.LayerStages`: adaLN + q/k/v + q/k norm +
rotary; projection + residuals + norm + MLP), where the many small element-wise ops of the profile
(norms, modulate, rotary, residual adds, GELU) fuse into a few kernels around the matmuls. The
key/value gathering of the frontier cache and the attention call stay eager between them: they are
Python bookkeeping over block lists and one fused kernel already.

One compiled function per stage serves every layer (the layer is an argument) and every model, so a
process compiles each stage once per shape: block groups have at most two sizes in a run (the block
batch and a smaller last group), and torch marks the group dimension dynamic at the second size, so
later runs and image sizes reuse the same code.

Where compiling is not possible (no C++ compiler for the CPU backend, no Triton for CUDA, an
unsupported Python or platform, an inductor failure), the first failure is reported with ONE warning
per process and everything runs eagerly from then on; the result is the same up to float rounding.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from ..hardware.devices import is_out_of_memory
from .model import EAGER_STAGES, LayerStages

# Run-time failures that must reach the caller, not read as "compile unavailable" (AcceleratorError: torch >= 2.8).
_RUNTIME_ERRORS = tuple(e for e in (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", None)) if e is not None)
_BACKEND = "inductor"  # torch's default; tests swap in a failing one to simulate a machine without a compiler
_compiled: LayerStages | None = None
_unavailable: str | None = None  # why compiling failed in this process; then eager only, no more warnings


def _fallback_warning(reason: str) -> None:
    global _unavailable
    if _unavailable is None:
        _unavailable = reason
        warnings.warn(f"Inf-DiT: torch.compile is unavailable here ({reason}); running eagerly instead "
                      "(same results, without the fused kernels)", RuntimeWarning, stacklevel=3)


def _reason(error: BaseException) -> str:
    """The root cause in one short line (torch wraps backend failures in BackendCompilerFailed)."""
    while (inner := getattr(error, "inner_exception", None) or error.__cause__) is not None:
        error = inner
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _guarded(compiled_fn, eager_fn):
    """compiled_fn, or eager_fn once compiling has failed (the failing call is rerun eagerly)."""

    def run(*args):
        if _unavailable is not None:
            return eager_fn(*args)
        try:
            return compiled_fn(*args)
        except _RUNTIME_ERRORS:
            raise  # out of memory, a sticky CUDA error: the caller's handling applies
        except Exception as e:  # compile-time failures surface at the first call; a real error recurs eagerly
            if "CUDA error" in str(e) or is_out_of_memory(e):  # an older torch's CUDA error; MPS's out of memory
                raise
            result = eager_fn(*args)  # an error of the input or the model raises here: compile stays on
            _fallback_warning(_reason(e))
            return result

    return run


def compiled_stages() -> LayerStages:
    """The compiled twins of `EAGER_STAGES` (created once per process, compiled lazily at first call)."""
    global _compiled
    if _unavailable is not None:
        return EAGER_STAGES
    if _compiled is None:
        try:
            fns = [torch.compile(fn, backend=_BACKEND) for fn in EAGER_STAGES]
        except Exception as e:  # e.g. torch.compile refuses this Python version
            _fallback_warning(_reason(e))
            return EAGER_STAGES
        _compiled = LayerStages(*(_guarded(c, e) for c, e in zip(fns, EAGER_STAGES)))
    return _compiled


@contextmanager
def compiled(model, enabled: bool = True):
    """Run `model` with its compiled stages inside the block (no-op when not enabled)."""
    if not enabled:
        yield model
        return
    before = model.stages
    model.stages = compiled_stages()
    try:
        yield model
    finally:
        model.stages = before


def compile_unavailable_reason() -> str | None:
    """None while compiling works (or was not tried), else why this process runs eagerly."""
    return _unavailable
