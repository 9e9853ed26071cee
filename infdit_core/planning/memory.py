"""Peak-memory estimate of sampling with the block scheduler, and the block batch that fits a budget.

Counts what is alive at the peak of one network evaluation: the weights, the frontier of cached
keys/values (2 tensors of T x C per block and layer), the activations of one group, and the
full-size image buffers of the solver (kept in float32; `image_buffers`) - on the device, or on the host for
outputs too big for it (then the device holds only the blocks of one group), with an offloaded
frontier counted on the host too.

The activation counts below are in units of one (B, n, T, C) tensor, read from the code of
model.py/attention.py and checked against benchmarks/memory.py (4 layers, hidden 512, fp32, CPU
peak RSS of one evaluation, 256..4096 px, block batch 1, 4 and the whole image: within 3.3%, with the
ring frontier; see benchmarks/results/memory_fp32.txt).
Attention goes through F.scaled_dot_product_attention, whose fused kernels (CPU flash, CUDA
flash / memory-efficient, XPU) never hold the T x 4T score matrix; where the device has none for the
dtype (MPS, older AMD cards, bf16 on pre-Ampere CUDA: `attention_path` "math") the float32 scores and
their softmax are counted, for the block attention and the layer-0 cross-attention alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..network.attention import chosen_kernel, resolve_variant
from ..network.config import LR_WINDOW, InfDiTConfig
from ..hardware import devices
from ..hardware.host import pinned_bytes
from ..hardware.precision import native_bf16
from .options import BlockOptions
from .scheduler import plan_stats

# Alive at the attention of a layer: the layer input, q/k/v (3), normed and roped q and k (2), the
# attention output (1), and per run of blocks the four key groups' partial results (4) and their
# merged sum (1, float32: counted as 2 in bf16). The key groups themselves are views (attention.py).
_ATTENTION_TENSORS = 1 + 3 + 2 + 1 + 4 + 1
# The "concat" variant instead of the four partial results and their sum: the copied keys and values of
# the four groups, 4 units each (attention.py, CUDA's default).
_CONCAT_TENSORS = 1 + 3 + 2 + 1 + 2 * 4
# Held across all layers by the forward: the previous layer's normed MLP input, and the layer-0 LR
# window features (2304 tokens per block, i.e. 2.25 units).
_CARRIED_TENSORS = 1
# Layer-0 cross-attention: the window features, their key/value (2), the contiguous key copy made
# by its LayerNorm and the normed keys, all 2304 tokens per block; plus 4 block-sized tensors (layer
# input, its norm, q, normed q).
_CROSS_WINDOW_TENSORS = 1 + 2 + 1 + 1
_CROSS_TENSORS = 4
_MLP_TENSORS = 3 + 2 * 4  # input, normed, modulated, the 4C-wide hidden and its GELU
# Kernel workspace on top of live tensors (GEMM packing, attention tiles): measured about 0.5 unit.
_WORKSPACE_TENSORS = 0.5
# Full-size float32 images (whole padded output) alive at once while sampling: u (the bicubic image),
# x, what the solver keeps between evaluations and the denoiser's output. The built-in solvers work in
# place (solvers.py), so this is the fewest each method needs; tests/core/test_image_buffers.py counts
# them in a real run. heun: x, d, x', D(x'); dpm_2: x, x_mid, D; dpmpp_2m: x, the last D, D; ipndm and
# ipndm_v: x, 3 past derivatives, D; deis (3rd order): x, 2 past derivatives, D.
SOLVER_IMAGE_BUFFERS = {"heun": 5, "euler": 3, "dpm_2": 4, "dpmpp_2m": 4, "ipndm": 6, "ipndm_v": 6, "deis": 5}
EXTERNAL_SAMPLER_BUFFERS = 8  # a sampler function from ComfyUI/k-diffusion: not in place (its heun: 8)
# After sampling, the colour fix: u, x and the wavelet's blurred copies (lab and adain work in strips).
COLOR_FIX_BUFFERS = {"none": 2, "wavelet": 5, "adain": 2, "lab": 2}
# The default solver's (sampling.solvers.DEFAULT_SOLVER, a layer up; tests/core/test_image_buffers.py holds
# the two together): what an estimate counts when it is not told the solver.
DEFAULT_IMAGE_BUFFERS = SOLVER_IMAGE_BUFFERS["ipndm"]
CLIP_VISUAL_PARAMS = 303_966_976  # open_clip ViT-L-14 image tower


# With the images on the host, the device holds per block of a group: x and u cut out, the float32
# denoised estimate and its c_skip term (the group's network tensors are the activations).
_GROUP_IMAGE_TENSORS = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes on the compute device (`total` = weights + frontier + activations + images) and, apart,
    on the host (`host`: full-size images kept there, an offloaded frontier)."""

    weights: int
    frontier: int
    activations: int
    images: int
    host: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.frontier + self.activations + self.images

    def __str__(self) -> str:
        gb = 1024**3
        text = (
            f"{self.total / gb:.2f} GiB (weights {self.weights / gb:.2f}, frontier {self.frontier / gb:.2f}, "
            f"activations {self.activations / gb:.2f}, images {self.images / gb:.2f})"
        )
        return text + (f" + host {self.host / gb:.2f} GiB" if self.host else "")


def image_buffers(sampler, color_fix: str = "none") -> int:
    """Full-size images a run keeps at its peak: `sampler` a built-in solver's name, or anything else
    (a wired ComfyUI sampler); the colour fix runs after sampling, so the larger of the two counts."""
    solver = SOLVER_IMAGE_BUFFERS.get(sampler, EXTERNAL_SAMPLER_BUFFERS) if isinstance(sampler, str) else EXTERNAL_SAMPLER_BUFFERS
    return max(solver, COLOR_FIX_BUFFERS.get(color_fix, EXTERNAL_SAMPLER_BUFFERS))


def dit_parameters(cfg: InfDiTConfig) -> int:
    c, h, d, L = cfg.hidden, cfg.heads, cfg.head_dim, cfg.layers
    p2 = cfg.patch_size**2
    per_layer = (c * 4 * c + 4 * c) + (c * 3 * c + 3 * c) + (c * c + c) + 2 * (cfg.mlp_ratio * c * c) + cfg.mlp_ratio * c + c + 2 * d
    embed = cfg.in_channels * p2 * c + c + 192 * c + c + c * c + c
    vector = (cfg.vector_dim * c + c + c * c + c) if cfg.vector_dim else 0
    cross = 3 * 4 * c + c + (c * c + c) * 2 + (2 * c * c + 2 * c) + 4 * d + (1024 + LR_WINDOW**2) * c + 2 * c
    final = c * 2 * c + 2 * c + c * p2 * cfg.out_channels + p2 * cfg.out_channels
    return L * per_layer + L * 4 * c + embed + vector + cross + final


def estimate_peak_bytes(
    config: InfDiTConfig,
    out_height: int,
    out_width: int,
    block_batch: int,
    dtype: torch.dtype = torch.bfloat16,
    blocks: BlockOptions = BlockOptions(),
    batch: int = 1,
    include_clip: bool = True,
    image_buffers: int = DEFAULT_IMAGE_BUFFERS,
    device=None,
) -> MemoryEstimate:
    """Predicted peak bytes on the compute device for sampling an output of this size, and on the host.

    blocks: how the blocks are walked (BlockOptions): an offloaded frontier counts on the host; float8
    stores cached keys/values in 1 byte with one float32 scale per block, layer, tensor and image;
    images="host" keeps the sampler's full-size images there (only each group's blocks go to the device).
    image_buffers: full-size images the solver and colour fix keep (`image_buffers()`; default: the default solver's).
    device: the compute device (None: the CPU's figures). On CUDA the attention path it will take
    (`attention_path`) and the page-locked host memory as torch's allocator rounds it are counted."""
    offload_frontier, float8_frontier, scan = blocks.offload_frontier, blocks.float8_frontier, blocks.scan
    images_on_host = blocks.images_on_host
    el = torch.finfo(dtype).bits // 8
    bs = config.block_size
    rows, cols = -(-out_height // bs), -(-out_width // bs)
    plan = plan_stats(rows, cols, max(1, min(block_batch, rows * cols)), scan)
    n = plan.block_batch
    t, c = config.block_tokens, config.hidden
    clip = CLIP_VISUAL_PARAMS if (include_clip and config.vector_dim) else 0
    weights = (dit_parameters(config) + clip) * el
    if float8_frontier:
        per_block_kv = 2 * config.layers * (t * c + 4) * batch
    else:
        per_block_kv = 2 * config.layers * t * c * el * batch
    # the ring of the frontier: one slot per scan position in the widest span held at once
    cached = 0 if plan.groups == 1 else plan.frontier_span * per_block_kv
    frontier = 0 if offload_frontier else cached
    per_block = batch * t * c * el  # one unit for one block
    window = LR_WINDOW**2 / t  # LR-window tokens per block, in units
    carried = (_CARRIED_TENSORS + window) * n
    merged = 2 if el < 4 else 1  # the float32 sum of the four partial results
    path = attention_path(device, dtype)
    if path == "lse_merge":
        attention = (_ATTENTION_TENSORS + merged - 1) * n + carried
    else:  # the groups copied side by side; without a fused kernel, SDPA's math path also holds the scores
        attention = _CONCAT_TENSORS * n + carried
        if path == "math":  # float32 scores and their softmax: heads x T x 4T per block
            attention += 2 * config.heads * 4 * t * 4 / (c * el) * n
    if offload_frontier and plan.groups > 1:  # cached blocks fetched (k and v): this layer's and the next's
        attention += 2 * 2 * plan.cached_reads
    cross = (_CROSS_TENSORS + _CROSS_WINDOW_TENSORS * window) * n
    if path == "math":  # the cross-attention's float32 scores and softmax too: heads x T x 2304 per block
        cross += 2 * config.heads * LR_WINDOW**2 * 4 / (c * el) * n
    mlp = _MLP_TENSORS * n + carried
    rope = 2 * n * t * config.head_dim * 4  # cos/sin tables, float32
    activations = int((max(attention, cross, mlp) + _WORKSPACE_TENSORS * n) * per_block) + rope
    full_images = image_buffers * batch * 3 * rows * bs * cols * bs * 4
    group_images = _GROUP_IMAGE_TENSORS * n * batch * 3 * bs * bs * 4
    images = group_images if images_on_host else full_images
    pinned = device is not None and devices.traits(device).pinned_memory
    host_frontier = cached
    if pinned and cached:  # one pinned ring per layer and tensor, each rounded up to a power of two
        slots = cached // per_block_kv
        ring = slots * batch * t * c * (1 if float8_frontier else el)
        host_frontier = 2 * config.layers * (pinned_bytes(ring) + (pinned_bytes(slots * batch * 4) if float8_frontier else 0))
    host = (full_images if images_on_host else 0) + (host_frontier if offload_frontier else 0)
    if images_on_host and pinned:  # two pinned staging buffers: a group's x and u blocks in, D out, LR windows
        host += 2 * pinned_bytes(3 * group_images // _GROUP_IMAGE_TENSORS + n * batch * 3 * 9 * t * 4)
    return MemoryEstimate(weights, frontier, activations, images, host)


def attention_path(device, dtype) -> str:
    """How the block attention will run on `device` in `dtype`: "lse_merge" (fused calls per key group),
    "concat" (the groups copied, one fused call) or "math" (copied, and no fused kernel for this device or
    dtype: SDPA's math path, which holds the score matrix: MPS, older AMD cards, bf16 on pre-Ampere CUDA).
    None or a CPU: "lse_merge"."""
    if device is None or torch.device(device).type == "cpu":
        return "lse_merge"
    variant = resolve_variant(None, device)
    if variant in ("lse_merge", "cudnn") and chosen_kernel(device, dtype, variant == "cudnn") != "concat":
        return "lse_merge"
    if not devices.traits(device).fused_attention:
        return "math"
    fused = torch.device(device).type != "cuda" or dtype in (torch.float16, torch.float32) or native_bf16(device)
    return "concat" if fused else "math"


# The block batch "auto" stops at, per device kind: past it a larger group is not faster, only bigger. A
# table rather than a calibration at run time because a timing taken on a busy machine misleads (shared
# CPUs here swing 20-40% between repeats) and calibrating costs whole network evaluations.
# - CPU: one block per group. A block is 1024 tokens, already enough rows for every core's matmuls, and
#   a small group's working set stays in cache: n=1 was within 2.5% (fp32) and 3.7% (bf16) of the best
#   fixed block batch at 512 px on an AMD Zen 4, and 30% faster than the whole image at 1024 px on the
#   Intel Xeon with AMX of issue 12, with a fraction of the memory.
# - CUDA: 16, from the op model (benchmarks/gpu_model.py), not yet from a GPU. A group issues about the
#   same number of kernels whatever its size (~1,100-1,800 at the released config), ~10 ms of host time
#   in eager PyTorch, while an H100 needs ~4-6 ms of GPU work per block: from n = 4 on the GPU, not the
#   host, sets the pace, and at n = 16 the launch cost is under 5% of a group's GPU time and every matmul
#   has 16,384 rows (full tiles on every SM). A larger group cuts launches per block no further, it only
#   takes memory from the other models a ComfyUI server keeps. benchmarks/gpu.py measures 1, 4, 16, 64.
#   With the frontier offloaded the host link sets the pace instead: a group fetches the line of blocks
#   above it once per layer, so the bytes per block fall with the group's length (16 blocks: ~160 MB per
#   block and evaluation over PCIe; 64 = two lines of a 4096 px image: ~75 MB): there the cap is 64.
# - ROCm and XPU: CUDA's figures (the same reasoning: launch cost against GPU work per block), unmeasured.
# - MPS: 4. Its attention runs on the math path, holding float32 scores and their softmax, 512 MiB a block
#   at the released shapes, so memory grows fast with the group, and one block's 1,024 query rows already
#   fill the GPU's matmuls; at 4 the score tensor is 1 GiB, far from MPS's 4 GiB per-tensor abort.
# The caps live in hardware/devices.py (one record per kind of device).


def fastest_block_batch(device=None, offloaded: bool = False) -> int:
    """The block batch past which a larger one is no faster on this kind of device (None: the default one)."""
    kind = devices.traits(devices.default_device() if device is None else device)
    return kind.offloaded_block_batch_cap if offloaded else kind.block_batch_cap


def tensor_limit_block_batch(config: InfDiTConfig, device, dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> int | None:
    """The largest block batch whose biggest tensor the device can make (MPS: under 4 GiB), None: no limit.
    On the math path that tensor is the block attention's float32 scores, heads x T x 4T per block and image."""
    limit = devices.traits(device).max_tensor_bytes if device is not None else None
    if limit is None:
        return None
    t = config.block_tokens
    per_block = batch * max(config.heads * t * 4 * t * 4 if attention_path(device, dtype) == "math" else 0,
                            4 * t * config.hidden * torch.finfo(dtype).bits // 8)  # else the MLP's 4C-wide hidden
    return max(1, (limit - 1) // per_block)


def choose_block_batch(
    config: InfDiTConfig,
    out_height: int,
    out_width: int,
    budget_bytes: int,
    dtype: torch.dtype = torch.bfloat16,
    blocks: BlockOptions = BlockOptions(),
    batch: int = 1,
    include_clip: bool = True,
    device=None,
    image_buffers: int = DEFAULT_IMAGE_BUFFERS,
) -> int:
    """The "auto" block batch on `device` (None = the default device: CUDA if present, else CPU): the
    largest block batch up to `fastest_block_batch` whose estimate fits `budget_bytes` (every candidate is
    estimated: nothing assumes the estimate grows with the block batch), or the whole image as one group
    where that fits and needs no more (it has no frontier). Always >= 1. `blocks`' block batch and budget
    are not read: the walk (frontier, float8, scan, where the images live) is."""
    bs = config.block_size
    total = -(-out_height // bs) * -(-out_width // bs)
    cap = fastest_block_batch(device, blocks.offload_frontier)
    largest = tensor_limit_block_batch(config, device, dtype, batch) or total

    def estimate(n: int) -> int:
        return estimate_peak_bytes(config, out_height, out_width, n, dtype, blocks, batch, include_clip, image_buffers,
                                   device).total

    fitting = [(n, e) for n in range(1, min(cap, total, largest) + 1) if (e := estimate(n)) <= budget_bytes]
    best, best_bytes = fitting[-1] if fitting else (1, estimate(1))
    if best < total <= largest and cap > 1 and estimate(total) <= min(budget_bytes, best_bytes):
        return total
    return best


def largest_fitting_block_batch(
    config: InfDiTConfig,
    out_height: int,
    out_width: int,
    budget_bytes: int,
    dtype: torch.dtype = torch.bfloat16,
    blocks: BlockOptions = BlockOptions(),
    batch: int = 1,
    include_clip: bool = True,
    image_buffers: int = DEFAULT_IMAGE_BUFFERS,
    device=None,
) -> int:
    """The largest block batch whose estimate fits `budget_bytes` (1 if none does).

    The whole image as one group is tried on its own first: it has no frontier, so its estimate can be
    far below that of one block fewer. Below it the estimate is the frontier (one line of the short side,
    whatever the block batch) plus activations that grow with it, so a binary search over 1..all-1 finds
    the largest; tests/core/test_block_batch.py checks that against every block batch of several grids.
    """
    bs = config.block_size
    total = -(-out_height // bs) * -(-out_width // bs)

    def fits(n: int) -> bool:
        est = estimate_peak_bytes(config, out_height, out_width, n, dtype, blocks, batch, include_clip, image_buffers,
                                  device)
        return est.total <= budget_bytes

    if fits(total):
        return total
    lo, hi = 1, total - 1
    if hi < 1 or not fits(lo):
        return 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def free_device_memory(device) -> int:
    """Free memory on `device` in bytes, from its backend (torch.cuda, torch.xpu, torch.mps; the CPU: psutil)."""
    return devices.free_memory(device)


def default_budget(device, free: int | None = None) -> int:
    """Free memory (`free`, or read now) minus a margin of 10% (at least 512 MiB) for other tensors and
    fragmentation."""
    free = free_device_memory(device) if free is None else free
    return max(free - max(free // 10, 512 * 1024**2), 0)
