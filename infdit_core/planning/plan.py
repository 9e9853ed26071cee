"""How a run is planned, before it starts: the output size asked for (a factor, or a target size), the
native passes (x4, x2) that reach it, and for each pass the block batch, where the full-size images
and the frontier live, and the memory that takes. One object, `RunPlan`, used by the CLI, the nodes
and the API alike, so the adapters stay thin; it also knows the out-of-memory fallback.

Any factor from 1 to 16 runs the fewest native passes whose product reaches it, x4 first, then one
antialiased resize to the exact size: 1.5 = x2 then down, 3 = x4 then down, 6 = x4, x2 then down,
8 = x4 then x2, 16 = x4 then x4. Factor 1 is x2 then down: a re-render at the same size with the
model's detail, since a plain copy would make the node silently do nothing.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace

import torch

from ..hardware.devices import traits
from .options import BlockOptions
from .memory import (
    DEFAULT_IMAGE_BUFFERS, MemoryEstimate, choose_block_batch, default_budget, dit_parameters, estimate_peak_bytes,
    free_device_memory, tensor_limit_block_batch,
)

log = logging.getLogger("inf_dit")

MAX_FACTOR = 16
GIB = 1024**3
NATIVE_PASSES = ((2,), (4,), (4, 2), (4, 4))  # by product: the first that reaches a factor is the plan


def _round(v: float) -> int:
    return max(1, int(math.floor(v + 0.5)))  # half up, the same on every platform


def native_passes(factor: float) -> tuple[int, ...]:
    """The fewest native passes (x4 first) whose product reaches `factor` (1..16)."""
    _check_factor(factor)
    return next(p for p in NATIVE_PASSES if math.prod(p) >= factor - 1e-9)


def _check_factor(factor) -> None:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise ValueError(f"scale must be a number from 1 to {MAX_FACTOR}, got {factor!r}")
    if not 1 <= factor <= MAX_FACTOR:
        raise ValueError(f"scale must be from 1 to {MAX_FACTOR}, got {factor:g}: for a smaller image resize "
                         f"after upscaling; for more than x{MAX_FACTOR} upscale the result again")


def output_size(height: int, width: int, scale=None, size=None, long_side=None, megapixels=None) -> tuple[int, int]:
    """(out_height, out_width) for an input of height x width and one of: a factor `scale` (default 4),
    `size` = (height, width), `long_side` (pixels, keeps the aspect ratio) or `megapixels` (of 2**20
    pixels, as ComfyUI counts them; keeps the aspect ratio). Raises ValueError for sizes out of reach."""
    given = [name for name, v in (("scale", scale), ("size", size), ("long side", long_side),
                                  ("megapixels", megapixels)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one of scale, size, long side or megapixels, not {' and '.join(given)}")
    if size is not None:
        try:
            out_h, out_w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be (height, width) in pixels, got {size!r}") from None
        if out_h < 1 or out_w < 1:
            raise ValueError(f"size must be positive, got {out_h}x{out_w} (height x width)")
    elif long_side is not None:
        if isinstance(long_side, bool) or not isinstance(long_side, int) or long_side < 1:
            raise ValueError(f"long side must be a positive number of pixels, got {long_side!r}")
        s = long_side / max(height, width)
        out_h, out_w = (long_side, _round(width * s)) if height >= width else (_round(height * s), long_side)
    elif megapixels is not None:
        if isinstance(megapixels, bool) or not isinstance(megapixels, (int, float)) or not megapixels > 0:
            raise ValueError(f"megapixels must be a positive number, got {megapixels!r}")
        s = math.sqrt(megapixels * 2**20 / (height * width))
        out_h, out_w = _round(height * s), _round(width * s)
    else:
        scale = 4 if scale is None else scale
        _check_factor(scale)
        return _round(height * scale), _round(width * scale)
    if out_h < height or out_w < width:
        raise ValueError(f"the target {out_w}x{out_h} is smaller than the input {width}x{height}: Inf-DiT only "
                         f"enlarges; ask for at least the input size, or resize the image instead")
    if out_h > MAX_FACTOR * height + 0.5 or out_w > MAX_FACTOR * width + 0.5:
        raise ValueError(f"the target {out_w}x{out_h} is more than x{MAX_FACTOR} the input {width}x{height}: "
                         f"upscale in two runs, or ask for at most {MAX_FACTOR * width}x{MAX_FACTOR * height}")
    return out_h, out_w


def parse_target(text: str):
    """The node's `target` text -> keyword for `output_size`: '' = none, '2.5x' or 'x2.5' = factor,
    '1000' = long side, '1920x1080' = width x height, '4mp' = megapixels. Returns {} for ''."""
    t = str(text).strip().lower().replace(" ", "")
    if t in ("", "none", "scale"):
        return {}
    number = r"(\d+(?:\.\d*)?|\.\d+)"
    if m := re.fullmatch(rf"x{number}|{number}x", t):
        return {"scale": float(m.group(1) or m.group(2))}
    if m := re.fullmatch(r"(\d+)x(\d+)", t):
        return {"size": (int(m.group(2)), int(m.group(1)))}
    if m := re.fullmatch(r"(\d+)(?:px)?", t):
        return {"long_side": int(m.group(1))}
    if m := re.fullmatch(rf"{number}mp", t):
        return {"megapixels": float(m.group(1))}
    raise ValueError(f"target {text!r} not understood: use e.g. '2.5x' (factor), '1000' (long side in pixels), "
                     f"'1920x1080' (width x height) or '4mp' (megapixels); empty = the scale widget")


@dataclass(frozen=True)
class PassPlan:
    """One native pass: its factor, input size (unpadded), block grid, block batch and memory."""

    scale: int
    in_size: tuple[int, int]
    grid: tuple[int, int]
    block_batch: int
    estimate: MemoryEstimate
    images_on_host: bool = False  # the sampler's full-size images on the host, only each group's blocks on the device

    @property
    def out_size(self) -> tuple[int, int]:
        return self.in_size[0] * self.scale, self.in_size[1] * self.scale


@dataclass(frozen=True)
class RunPlan:
    """A whole run of one image: the passes, then a resize from the last pass's size to `out_size`."""

    in_size: tuple[int, int]
    out_size: tuple[int, int]
    passes: tuple[PassPlan, ...]
    offload_frontier: bool = False
    scan: str = "auto"
    batch: int = 1
    float8_frontier: bool = False  # cached keys/values stored as float8 e4m3 with a per-block scale
    image_buffers: int = DEFAULT_IMAGE_BUFFERS  # full-size images of the solver/colour fix (memory.image_buffers)
    device: str | None = None  # the compute device it was planned for (None: not known)

    def blocks(self, block_batch, offload_frontier: bool, images_on_host: bool) -> BlockOptions:
        """The walk of one of its passes as BlockOptions (for estimates and retries)."""
        return BlockOptions(block_batch, None, offload_frontier, self.float8_frontier, self.scan,
                            "host" if images_on_host else "device")

    @property
    def resize(self) -> bool:
        return self.passes[-1].out_size != self.out_size

    @property
    def block_batch(self) -> int:
        return max(p.block_batch for p in self.passes)

    @property
    def peak(self) -> MemoryEstimate:
        """The pass with the highest device peak (passes run one after another)."""
        return max((p.estimate for p in self.passes), key=lambda e: e.total)

    def describe(self) -> str:
        steps = " then ".join(f"x{p.scale}" for p in self.passes) + (" then resize" if self.resize else "")
        (h, w), (oh, ow) = self.in_size, self.out_size
        return f"{w}x{h} -> {ow}x{oh}: {steps}"


def plan_run(
    config,
    height: int,
    width: int,
    target: dict | None = None,
    blocks: BlockOptions = BlockOptions(),
    dtype: torch.dtype = torch.bfloat16,
    include_clip: bool = True,
    batch: int = 1,
    device=None,
    image_buffers: int = DEFAULT_IMAGE_BUFFERS,
) -> RunPlan:
    """Plan a run for an input of height x width. target: the output size as `output_size` takes it, one
    of {"scale": f}, {"size": (h, w)}, {"long_side": n}, {"megapixels": m} (None: scale 4). blocks: how
    to walk them; its `memory_budget` (bytes) sizes "auto" block batches, the fastest for `device`'s kind
    that fit (memory.choose_block_batch; None: CUDA if present, else CPU).

    blocks.images "auto": the full-size images go to the host when the compute `device` is not the CPU
    and a pass would not fit the budget even at block batch 1 with them on the device (on a CPU they are
    the same memory). image_buffers: the full-size images the chosen solver and colour fix keep
    (memory.image_buffers; default: heun, no fix)."""
    out = output_size(height, width, **(target or {}))
    factor = min(max(out[0] / height, out[1] / width), MAX_FACTOR)
    return _plan(config, height, width, out, native_passes(factor), blocks, dtype, include_clip, batch, device,
                 image_buffers)


def _plan(config, height, width, out, native, blocks: BlockOptions, dtype, include_clip, batch, device,
          image_buffers) -> RunPlan:
    budget = blocks.memory_budget
    passes, h, w = [], height, width
    for s in native:
        on_host = blocks.images == "host"
        if blocks.images == "auto" and device is not None and not traits(device).unified_memory and budget is not None:
            on_host = _plan_pass(config, s, h, w, replace(blocks, block_batch=1, images="device"), dtype, include_clip,
                                 batch, device, image_buffers).estimate.total > budget
        passes.append(_plan_pass(config, s, h, w, replace(blocks, images="host" if on_host else "device"), dtype,
                                 include_clip, batch, device, image_buffers))
        h, w = h * s, w * s
    return RunPlan((height, width), out, tuple(passes), blocks.offload_frontier, blocks.scan, batch,
                   blocks.float8_frontier, image_buffers, None if device is None else str(torch.device(device)))


def plan_output(config, out_height: int, out_width: int, blocks: BlockOptions = BlockOptions(),
                dtype: torch.dtype = torch.bfloat16, include_clip: bool = True, batch: int = 1, device=None) -> PassPlan:
    """One pass producing out_height x out_width (block batch, placement and estimate), for estimates
    shown before the input is known (Block Size Control, the `estimate` command)."""
    return _plan(config, out_height, out_width, (out_height, out_width), (1,), blocks, dtype, include_clip, batch,
                 device, DEFAULT_IMAGE_BUFFERS).passes[0]


def _plan_pass(config, s, h, w, blocks: BlockOptions, dtype, include_clip, batch, device=None,
               image_buffers=DEFAULT_IMAGE_BUFFERS) -> PassPlan:
    """One native pass; `blocks.images` is "device" or "host" here (decided by the caller)."""
    bs = config.block_size
    grid = (-(-h * s // bs), -(-w * s // bs))
    out_h, out_w = grid[0] * bs, grid[1] * bs
    if blocks.block_batch == "auto":
        if blocks.memory_budget is None:
            raise ValueError("an 'auto' block batch needs a memory budget")
        n = choose_block_batch(config, out_h, out_w, blocks.memory_budget, dtype, blocks, batch, include_clip, device,
                               image_buffers)
    else:
        n = blocks.block_batch
        largest = tensor_limit_block_batch(config, device, dtype, batch)
        if largest is not None and n > min(largest, grid[0] * grid[1]):
            log.warning("Inf-DiT: block batch %d would make tensors larger than %s can hold; using %d", n,
                        torch.device(device).type, largest)
            n = largest
    est = estimate_peak_bytes(config, out_h, out_w, n, dtype, blocks, batch, include_clip, image_buffers, device)
    return PassPlan(s, (h, w), grid, min(n, grid[0] * grid[1]), est, blocks.images_on_host)


def fallback(plan: RunPlan, config, dtype=torch.bfloat16, include_clip: bool = True) -> RunPlan | None:
    """The one retry after an out-of-memory error: half the blocks per pass, or, when every pass already
    runs one block at a time, the frontier offloaded. None when nothing smaller is left."""
    if plan.block_batch > 1:
        n, offload = max(1, plan.block_batch // 2), plan.offload_frontier
    elif not plan.offload_frontier:
        n, offload = 1, True
    else:
        return None
    passes = tuple(
        _plan_pass(config, p.scale, *p.in_size, plan.blocks(min(p.block_batch, n), offload, p.images_on_host), dtype,
                   include_clip, plan.batch, plan.device, plan.image_buffers)
        for p in plan.passes
    )
    return replace(plan, passes=passes, offload_frontier=offload)


def smallest_fitting(plan: RunPlan, config, free: int, dtype=torch.bfloat16, include_clip: bool = True):
    """(block batch, device bytes) of the smallest settings for this plan's sizes with the frontier
    offloaded: the largest block batch fitting `free` on every pass, and the peak at block batch 1."""
    fits = min(choose_block_batch(config, p.grid[0] * config.block_size, p.grid[1] * config.block_size, free, dtype,
                                  plan.blocks(1, True, p.images_on_host), plan.batch, include_clip, plan.device,
                                  plan.image_buffers) for p in plan.passes)
    smallest = max(estimate_peak_bytes(config, p.grid[0] * config.block_size, p.grid[1] * config.block_size, 1, dtype,
                                       plan.blocks(1, True, p.images_on_host), plan.batch, include_clip,
                                       plan.image_buffers, plan.device).total
                   for p in plan.passes)
    return fits, smallest


def model_budget(model, free: int | None = None) -> int:
    """Default budget for "auto" on the model's device: free memory (`free`, or what torch reports) minus a
    margin, plus the weights already resident there (the estimate counts them, free memory does not)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return default_budget(model.device, free) + weights


def host_bytes(plan: RunPlan, compute_on_cpu: bool) -> int:
    """Host memory the run needs at its peak, beyond what is already allocated (the weights): the
    host-held images and offloaded frontier; with `compute_on_cpu` (a CPU, or a GPU that shares the
    host's RAM: Apple silicon) the device figure is host memory too, one budget."""
    need = 0
    for p in plan.passes:
        e = p.estimate
        need = max(need, e.host + (e.total - e.weights if compute_on_cpu else 0))
    return need


def check_host_memory(plan: RunPlan, compute_on_cpu: bool, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a run whose host memory would not fit what is available."""
    need = host_bytes(plan, compute_on_cpu)
    available = free_device_memory("cpu") if available is None else available
    if need <= available:
        return
    (h, w), (oh, ow) = plan.in_size, plan.out_size
    peak = max(plan.passes, key=lambda p: p.estimate.host)
    parts = []
    if peak.images_on_host:
        parts.append("full-size images")
    if plan.offload_frontier:
        parts.append("offloaded frontier")
    if compute_on_cpu:
        parts.append("the run itself (its device shares the host's memory)")
    ratio = math.sqrt(available / need) if need else 1
    fits_h, fits_w = max(h, int(oh * ratio)), max(w, int(ow * ratio))
    hints = [f"a target of at most about {fits_w}x{fits_h}"] if (fits_h, fits_w) != (h, w) else []
    if plan.offload_frontier and not compute_on_cpu:
        hints.append("the frontier on the device (Block Size Control / --offload-frontier off)")
    hints.append("closing other programs")
    raise ValueError(
        f"upscaling {w}x{h} -> {ow}x{oh} needs about {need / GIB:.1f} GiB of host memory ({', '.join(parts)}) but "
        f"{available / GIB:.1f} GiB is available: try {' or '.join(hints)}"
    )
