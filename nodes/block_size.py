"""Block Size Control: how Inf-DiT Upscale schedules blocks, as an INF_DIT_BLOCKS wire, with the
estimated peak memory of those settings."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comfy_adapter as comfy
from .core import SCANS, BlockOptions, InfDiTConfig, plan_output
from .spec import Input, NodeResult, NodeSpec, Output

GIB = 1024**3
FRONTIER_ON_DEVICE = "on device"
FRONTIER_OFFLOADED = "offloaded to CPU"
# float8 (e4m3, one scale per block) variants: half the frontier of bf16; new values after the old two
FRONTIER_FLOAT8 = "on device, float8"
FRONTIER_OFFLOADED_FLOAT8 = "offloaded to CPU, float8"
FRONTIERS = (FRONTIER_ON_DEVICE, FRONTIER_OFFLOADED, FRONTIER_FLOAT8, FRONTIER_OFFLOADED_FLOAT8)


@dataclass(frozen=True)
class BlockSettings:
    """What travels on an INF_DIT_BLOCKS wire. Defaults = Inf-DiT Upscale without a Block Size Control."""

    block_batch: int | str = "auto"  # blocks per forward pass, or "auto" (the fastest that fits the budget)
    memory_budget: int | None = None  # bytes for "auto"; None = the device's free memory
    offload_frontier: bool = False  # keep cached neighbour keys/values in CPU RAM
    scan: str = "auto"
    float8_frontier: bool = False  # store them as float8 e4m3 with a per-block scale

    def __post_init__(self):
        self.options()  # the core's checks of block batch and scan
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ValueError(f"memory budget must be positive, got {self.memory_budget!r} bytes")

    def options(self, memory_budget: int | None = None) -> BlockOptions:
        """The core's BlockOptions for these settings (`memory_budget`: bytes to use when none was set)."""
        budget = self.memory_budget if self.memory_budget is not None else memory_budget
        return BlockOptions(self.block_batch, budget, self.offload_frontier, self.float8_frontier, self.scan)

    def describe(self) -> str:
        budget = "free memory" if self.memory_budget is None else f"{self.memory_budget / GIB:.1f} GiB"
        frontier = (FRONTIER_OFFLOADED if self.offload_frontier else FRONTIER_ON_DEVICE) + (", float8" if self.float8_frontier else "")
        return f"block batch {self.block_batch} (budget {budget}), frontier {frontier}, scan {self.scan}"


def estimate(settings: BlockSettings, config, out_h: int, out_w: int, dtype=torch.bfloat16, free_bytes: int = 8 * GIB,
             include_clip: bool = True, device=None):
    """(block batch used, MemoryEstimate) for one image of out_h x out_w output pixels. On a `device`
    other than the CPU the full-size images go to the host when they would not fit, as in a run."""
    p = plan_output(config, out_h, out_w, settings.options(free_bytes), dtype, include_clip, device=device)
    return p.block_batch, p.estimate


def estimate_text(settings: BlockSettings, out_h: int, out_w: int, config=None, dtype=torch.bfloat16,
                  free_bytes: int = 8 * GIB, device=None) -> str:
    config = config or InfDiTConfig.released()
    return describe(out_h, out_w, *estimate(settings, config, out_h, out_w, dtype, free_bytes, device=device))


def describe(out_h: int, out_w: int, n: int, est) -> str:
    """The estimate as the node shows it."""
    return (f"{out_w}x{out_h} output, {n} block(s) per pass: device peak about {est.total / GIB:.2f} GiB (weights "
            f"{est.weights / GIB:.2f}, frontier {est.frontier / GIB:.2f}, activations {est.activations / GIB:.2f}, "
            f"images {est.images / GIB:.2f}); host about {est.host / GIB:.2f} GiB")


def _free() -> int:
    """What "auto" may use for the shown estimate: the compute device's free memory now."""
    return comfy.free_memory_bytes(comfy.torch_device())


def settings_from_inputs(block_batch: int, memory_budget_gb: float, frontier: str, scan: str) -> BlockSettings:
    if frontier not in FRONTIERS:
        raise ValueError(f"frontier must be one of {', '.join(map(repr, FRONTIERS))}, got {frontier!r}")
    return BlockSettings(
        block_batch="auto" if int(block_batch) == 0 else int(block_batch),
        memory_budget=None if float(memory_budget_gb) <= 0 else int(float(memory_budget_gb) * GIB),
        offload_frontier=frontier in (FRONTIER_OFFLOADED, FRONTIER_OFFLOADED_FLOAT8),
        float8_frontier=frontier in (FRONTIER_FLOAT8, FRONTIER_OFFLOADED_FLOAT8),
        scan=scan,
    )


def control(block_batch: int = 0, memory_budget_gb: float = 0.0, frontier: str = FRONTIER_ON_DEVICE, scan: str = "auto",
            estimate_width: int = 4096, estimate_height: int = 4096, node_id=None) -> NodeResult:
    settings = settings_from_inputs(block_batch, memory_budget_gb, frontier, scan)
    device = comfy.torch_device()
    text = estimate_text(settings, int(estimate_height), int(estimate_width), dtype=comfy.auto_dtype(device),
                         free_bytes=_free(), device=device)
    return NodeResult((settings,), ui={"text": [text]}, extra={"text": text})


# What the estimate route accepts: the widgets' own ranges (width/height from 1, as the node's inputs may be).
QUERY_LIMITS = {"block_batch": (0, 4096, 0), "memory_budget_gb": (0.0, 1024.0, 0.0), "width": (1, 65536, 4096),
                "height": (1, 65536, 4096)}


def _query_number(query: dict, name: str):
    """A number of the query within its widget's range; a clear ValueError (HTTP 400) for anything else."""
    low, high, default = QUERY_LIMITS[name]
    text = query.get(name, default)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"bad estimate query: {name} must be a number, got {text!r}") from None
    if not low <= value <= high:  # also refuses nan and inf
        what = f"output size must be {low}..{high} pixels per side" if name in ("width", "height") else \
            f"{name} must be from {low} to {high}"
        raise ValueError(f"bad estimate query: {what}, got {name}={text!r}")
    if isinstance(default, int):
        if value != int(value):
            raise ValueError(f"bad estimate query: {name} must be a whole number, got {text!r}")
        return int(value)
    return value


def estimate_query(query: dict) -> dict:
    """Answer of GET /inf_dit/estimate: the live estimate web/ shows while widgets change. Computed once, in
    closed form (milliseconds even at 65536 x 65536); ComfyUI's route runs it off the server's event loop."""
    block_batch, budget_gb = _query_number(query, "block_batch"), _query_number(query, "memory_budget_gb")
    w, h = _query_number(query, "width"), _query_number(query, "height")
    settings = settings_from_inputs(block_batch, budget_gb, query.get("frontier", FRONTIER_ON_DEVICE),
                                    query.get("scan", "auto"))
    free, device = _free(), comfy.torch_device()
    dtype = comfy.auto_dtype(device)  # what Load Inf-DiT's "auto" gives on this device
    n, est = estimate(settings, InfDiTConfig.released(), h, w, dtype, free_bytes=free, device=device)
    return {"block_batch": n, "total": est.total, "weights": est.weights, "frontier": est.frontier,
            "activations": est.activations, "images": est.images, "host": est.host, "text": describe(h, w, n, est)}


def spec() -> NodeSpec:
    return NodeSpec(
        node_id="InfDiTBlockSize",
        display_name="Inf-DiT Block Size Control",
        description="How Inf-DiT Upscale walks the 128 px blocks: how many per pass, the memory budget, where the "
                    "cached neighbours live, and the scan order. Shows the estimated peak memory on the device and on the "
                    "host (released model, bf16; full-size images go to the host when they would not fit the device).",
        inputs=(
            Input("block_batch", "int", "Blocks denoised per network pass. 0 = auto: the fastest that fits the memory "
                  "budget (CPU: 1; NVIDIA, AMD and Intel GPUs: up to 16, 64 with the frontier offloaded; Apple GPUs: up to 4). "
                  "Smaller = less memory.", default=0, min=0, max=4096, step=1),
            Input("memory_budget_gb", "float", "Memory auto may use, in GiB. 0 = the free memory of the device "
                  "(after ComfyUI unloads other models).", default=0.0, min=0.0, max=1024.0, step=0.5),
            Input("frontier", "combo", "Where the cached keys/values of finished neighbour blocks live. Offloading to CPU "
                  "saves device memory at some speed cost. The float8 choices store them in 8 bits with a scale per "
                  "block: half the memory of bf16, a small error (about 0.3% of the output range on test models). Not on Apple "
                  "GPUs (MPS has no float8): there Inf-DiT Upscale stops with a message before any work.",
                  default=FRONTIER_ON_DEVICE, options=FRONTIERS),
            Input("scan", "combo", "Block order. auto walks along the longer side so the cached frontier is one line "
                  "of the shorter side.", default="auto", options=SCANS),
            Input("estimate_width", "int", "Output width used only for the memory estimate shown on this node.",
                  default=4096, min=128, max=65536, step=128),
            Input("estimate_height", "int", "Output height used only for the memory estimate shown on this node.",
                  default=4096, min=128, max=65536, step=128),
        ),
        outputs=(Output("INF_DIT_BLOCKS", "block_control", "Scheduling settings for Inf-DiT Upscale."),),
        run=control,
        is_output_node=False,
    )
