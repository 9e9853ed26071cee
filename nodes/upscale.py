"""Inf-DiT Upscale: IMAGE -> IMAGE at exactly scale x size, block by block, with progress, preview,
Cancel and an out-of-memory fallback. The model work is the core's `upscale_image`."""
from __future__ import annotations

import logging

import torch

from . import comfy_adapter as comfy
from .block_size import GIB, BlockSettings
from .core import BlockGroupDone, EvaluationDone, block_grid, choose_block_batch, estimate_peak_bytes, evaluations_for, plan_blocks, upscale_image
from .progress import EVENT, BlockTracker
from .spec import Input, NodeResult, NodeSpec, Output

log = logging.getLogger("inf_dit")
SEED_MAX = 0xFFFFFFFFFFFFFFFF


class InfDiTOutOfMemory(RuntimeError):
    """Out of memory even after lowering the block batch; the message says which settings would fit."""


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _budget(handle, device, settings: BlockSettings) -> int:
    if settings.memory_budget is not None:
        return settings.memory_budget
    free = comfy.free_memory_bytes(device)
    # The weights are already resident, but the estimate counts them: add them back. Keep a 10% margin.
    weights = sum(p.numel() * p.element_size() for p in handle.model.parameters())
    return max(free - max(free // 10, 512 * 1024**2), 0) + weights


def _fallback(n: int, offload: bool):
    """The one retry after an out-of-memory: half the blocks per pass, or offload the frontier at 1."""
    if n > 1:
        return n // 2, offload
    if not offload:
        return 1, True
    return None


def _oom_message(handle, h, w, scale, n, offload, device) -> str:
    cfg, dtype, clip = handle.config, handle.model.dtype, handle.model.clip is not None
    out_h, out_w = h * scale, w * scale
    smallest = estimate_peak_bytes(cfg, out_h, out_w, 1, dtype, True, 1, "auto", clip).total
    free = comfy.free_memory_bytes(device)
    fits = choose_block_batch(cfg, out_h, out_w, free, dtype, True, 1, "auto", clip)
    tried = f"block batch {n}, frontier {'offloaded' if offload else 'on device'}"
    hint = (f"a Block Size Control with block batch {fits} and frontier 'offloaded to CPU' should fit"
            if smallest <= free else
            f"even block batch 1 with the frontier offloaded needs about {_gib(smallest)}; use weight_dtype bf16 or "
            f"fp16 in Load Inf-DiT, scale 2, or a smaller input image")
    return (f"Inf-DiT ran out of memory upscaling {w}x{h} -> {out_w}x{out_h} ({tried}; {_gib(free)} free on {device}): "
            f"{hint}.")


def upscale(model, image, scale: str = "4", steps: int = 0, seed: int = 0, block_control=None, node_id=None) -> NodeResult:
    handle, settings = model, block_control or BlockSettings()
    scale = int(str(scale).rstrip("x"))
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] < 1 or not 1 <= image.shape[-1] <= 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"Inf-DiT Upscale needs an IMAGE batch (B, H, W, 1..4 channels), got {shape}")
    b, h, w, _ = image.shape
    cfg, bs = handle.config, handle.config.block_size
    steps = steps or cfg.sampler_steps  # 0 = the model's own
    rows, cols = block_grid(h, w, scale, bs)
    out_h, out_w = rows * bs, cols * bs  # padded to whole blocks, as the sampler does
    device = comfy.torch_device()
    clip = handle.model.clip is not None
    dtype = handle.model.dtype

    # Make room for one pass at block batch 1 at least, then size the batch from what is really free.
    minimum = estimate_peak_bytes(cfg, out_h, out_w, 1, dtype, settings.offload_frontier, 1, settings.scan, clip)
    net = comfy.load_to_device(handle.patcher, handle.model, minimum.total - minimum.weights)
    n = settings.resolve_block_batch(cfg, out_h, out_w, dtype, _budget(handle, device, settings), clip)
    evaluations = evaluations_for(steps)
    progress = comfy.Progress(b * evaluations * len(plan_blocks(rows, cols, n, settings.scan).groups), node_id)
    results, retried = [], None
    try:
        for i in range(b):
            comfy.check_interrupted()
            args = dict(image=image[i:i + 1], scale=scale, steps=steps, seed=(seed + i) % (SEED_MAX + 1), scan=settings.scan)
            out, oom = _try(net, args, n, settings.offload_frontier, rows, cols, h * scale, w * scale, evaluations, i, b, progress, node_id)
            if oom:
                retry = _fallback(n, settings.offload_frontier)
                if retry is None:
                    raise InfDiTOutOfMemory(_oom_message(handle, h, w, scale, n, settings.offload_frontier, device))
                log.warning("Inf-DiT: out of memory at block batch %d; retrying with block batch %d%s", n, retry[0],
                            ", frontier offloaded" if retry[1] else "")
                comfy.empty_cache()
                out, oom = _try(net, args, *retry, rows, cols, h * scale, w * scale, evaluations, i, b, progress, node_id)
                if oom:
                    raise InfDiTOutOfMemory(_oom_message(handle, h, w, scale, *retry, device))
                retried = retry
                n, settings = retry[0], BlockSettings(retry[0], settings.memory_budget, retry[1], settings.scan)
            results.append(out)
    finally:
        comfy.empty_cache()  # also after Cancel: the sampler has dropped its caches, hand the memory back
    result = torch.cat(results)
    assert result.shape[1:3] == (h * scale, w * scale), result.shape  # the core's contract
    return NodeResult((result,), extra={"block_batch": n, "retried": retried, "progress": progress.value})


def _try(net, args, n, offload, rows, cols, out_h, out_w, evaluations, image, images, progress, node_id):
    """One image; (result, False), or (None, True) after an out-of-memory error (memory already released)."""
    plan = plan_blocks(rows, cols, n, args["scan"])
    tracker = BlockTracker(plan, out_h, out_w, net.config.block_size, evaluations, image, images)
    before = image * tracker.total

    def callback(event):
        comfy.check_interrupted()  # Cancel: raises out of the sampler, which frees its caches on the way
        if isinstance(event, BlockGroupDone):
            message = tracker.on_group(event)
            progress.update(before + message["value"], images * tracker.total, tracker.preview())
            comfy.send_to_browser(EVENT, {"node": node_id, **message})
        elif isinstance(event, EvaluationDone):
            pass  # progress already advanced per group

    try:
        return upscale_image(net, block_batch=n, offload_frontier=offload, callback=callback, **args), False
    except comfy.oom_errors():
        pass  # leave the except block first, so the traceback's tensors can be freed
    del tracker
    return None, True


def spec() -> NodeSpec:
    return NodeSpec(
        node_id="InfDiTUpscale",
        display_name="Inf-DiT Upscale",
        description="Upscales images 4x (or 2x) with Inf-DiT, generating 128 px blocks in order so memory grows with "
                    "the shorter side only. Progress and a live preview advance per block group; Cancel stops within a group.",
        inputs=(
            Input("model", "INF_DIT", "The model from Load Inf-DiT."),
            Input("image", "image", "Images to upscale: any size, RGB or RGBA (alpha is resized bicubically). "
                  "Batches run one image after another; image i uses seed + i."),
            Input("scale", "combo", "Upscaling factor. The output is exactly scale x the input size.", default="4",
                  options=("4", "2")),
            Input("steps", "int", "Sampler steps (Heun; 2 x steps - 1 network passes). 0 = the model's own: 20 for "
                  "the released model, 1 for the bundled demo model (its 2-3 step results are broken).",
                  default=0, min=0, max=200, step=1),
            Input("seed", "int", "Noise seed. The same seed, settings and image give the same result on any device.",
                  default=0, min=0, max=SEED_MAX, control_after_generate=True),
            Input("block_control", "INF_DIT_BLOCKS", "Optional Block Size Control. Without it: auto block batch for "
                  "the free memory, frontier on device, auto scan.", optional=True),
        ),
        outputs=(Output("image", "image", "The upscaled images, scale x the input size."),),
        run=upscale,
    )
