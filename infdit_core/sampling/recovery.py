"""The one out-of-memory recovery of a run, shared by the ComfyUI node, the single-image CLI and the batch
runner: on an out-of-memory error, empty the device cache, halve the block batch (again and again down to
1), then offload the frontier; when nothing smaller is left, stop with a message that names settings
that would fit, with no torch traceback chained to it."""
from __future__ import annotations

import logging

import torch

from ..planning.options import BlockOptions
from ..planning.plan import GIB, RunPlan, fallback, smallest_fitting
from .options import SamplingOptions
from ..hardware import devices
from ..hardware.precision import auto_dtype

log = logging.getLogger("inf_dit")


class InfDiTOutOfMemory(RuntimeError):
    """Out of memory even at the smallest settings tried; the message says which settings would fit."""


def empty_device_cache(device) -> None:
    devices.empty_cache(device)


def run_with_recovery(run, plan: RunPlan, config, dtype, include_clip: bool, device, *, free_memory=None,
                      empty_cache=None, oom_errors=(), on_retry=None):
    """run(plan) -> result, retried with `plan.fallback` steps after out-of-memory errors: every backend's
    (`devices.is_out_of_memory`: MPS raises a plain RuntimeError) and any of `oom_errors` (ComfyUI's).

    Returns (result, the plan that ran). free_memory(device) -> bytes and empty_cache() default to torch's
    (the node passes ComfyUI's). on_retry(old_plan, new_plan) is told of each retry."""
    from ..planning.memory import free_device_memory

    free_memory = free_memory or free_device_memory
    empty_cache = empty_cache or (lambda: empty_device_cache(device))
    while True:
        try:
            return run(plan), plan
        except Exception as e:
            if not (devices.is_out_of_memory(e) or isinstance(e, tuple(oom_errors))):
                raise
        # here, out of the except block, the traceback's tensors can be freed
        empty_cache()
        retry = fallback(plan, config, dtype, include_clip)
        if retry is None:
            raise InfDiTOutOfMemory(oom_message(plan, config, dtype, include_clip, device, free_memory(device)))
        log.warning("Inf-DiT: out of memory at block batch %d%s; retrying with block batch %d%s", plan.block_batch,
                    ", frontier offloaded" if plan.offload_frontier else "", retry.block_batch,
                    ", frontier offloaded" if retry.offload_frontier else "")
        if on_retry is not None:
            on_retry(plan, retry)
        plan = retry


def oom_message(plan: RunPlan, config, dtype, include_clip: bool, device, free: int) -> str:
    """What ran out, and the settings that would fit (never a precision the card only emulates)."""
    (h, w), (out_h, out_w) = plan.in_size, plan.out_size
    fits, smallest = smallest_fitting(plan, config, free, dtype, include_clip)
    tried = f"block batch {plan.block_batch}, frontier {'offloaded' if plan.offload_frontier else 'on device'}"
    if smallest <= free:
        hint = (f"block batch {fits} with the frontier offloaded should fit (Block Size Control: block batch {fits}, "
                f"frontier 'offloaded to CPU'; command line: --block-batch {fits} --offload-frontier)")
    else:
        smaller = _smaller_precision(dtype, device)
        hint = (f"even block batch 1 with the frontier offloaded needs about {smallest / GIB:.1f} GiB; "
                + (f"load the model in {smaller}, " if smaller else "") + "use a smaller scale or a smaller input image")
    return f"Inf-DiT ran out of memory upscaling {w}x{h} -> {out_w}x{out_h} ({tried}; {free / GIB:.1f} GiB free on " \
           f"{device}): {hint}."


def _smaller_precision(dtype, device) -> str | None:
    """A 16-bit precision this device multiplies natively, if the model is not in one already."""
    if dtype != torch.float32:
        return None
    native = auto_dtype(device)
    return "fp16" if native == torch.float16 else "bf16"  # a CPU without bf16 units: still half the memory


def upscale_with_recovery(model, image: torch.Tensor, target: dict | None = None, blocks: BlockOptions = BlockOptions(),
                          sampling: SamplingOptions = SamplingOptions(), callback=None) -> torch.Tensor:
    """`upscale_image` with the out-of-memory recovery (the CLI and the batch runner): plan once, then run,
    halving the block batch and offloading the frontier as needed."""
    from ..planning.memory import image_buffers
    from .pipeline import plan_for, upscale_image

    plan = plan_for(model, image.shape[1], image.shape[2], image.shape[0], target, blocks,
                    image_buffers(sampling.sampler, sampling.color_fix))
    result, _ = run_with_recovery(
        lambda p: upscale_image(model, image, plan=p, callback=callback, seed=sampling.seed,
                                **sampling.keywords(include_state=True)),
        plan, model.config, model.dtype, model.clip is not None, model.device)
    return result
