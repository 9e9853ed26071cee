"""Inf-DiT Upscale: IMAGE -> IMAGE at exactly scale x size, block by block, with progress, preview,
Cancel and an out-of-memory fallback. The model work is the core's `upscale_image`."""
from __future__ import annotations

from dataclasses import replace

import torch

from . import comfy_adapter as comfy
from .block_size import BlockSettings
from .core import (
    DEFAULT_SOLVER, BlockGroupDone, InfDiTOutOfMemory, SamplingOptions, image_buffers, own_steps, parse_target,
    plan_blocks, plan_for, run_with_recovery, upscale_image,
)
from .progress import EVENT, BlockTracker
from .sampling import COLOR_FIXES, SOLVERS, sampling
from .spec import Input, NodeResult, NodeSpec, Output

SEED_MAX = 0xFFFFFFFFFFFFFFFF
# "4" and "2" first and unchanged: saved workflows hold these strings.
SCALE_OPTIONS = ("4", "2", "8", "16", "1", "1.5", "3", "6")


def _factor(scale) -> float:
    """The scale widget's value: saved workflows hold the strings "4" and "2" (and may say "4x")."""
    try:
        return float(str(scale).strip().rstrip("x"))
    except ValueError:
        raise ValueError(f"scale must be a number from 1 to 16, got {scale!r}") from None


def upscale(model, image, scale: str = "4", steps: int = 0, seed: int = 0, block_control=None, target: str = "",
            compile: bool = False, sampler=None, sigmas=None, solver: str = DEFAULT_SOLVER, denoise: float = 1.0,
            color_fix: str = "none", resume: bool = True, node_id=None) -> NodeResult:
    handle, settings = model, block_control or BlockSettings()
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] < 1 or not 1 <= image.shape[-1] <= 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"Inf-DiT Upscale needs an IMAGE batch (B, H, W, 1..4 channels), got {shape}")
    b, h, w, _ = image.shape
    cfg = handle.config
    steps = steps or own_steps(solver if sampler is None else None, cfg.sampler_steps)  # 0 = the model's own
    how = sampling(cfg, steps, sampler, sigmas, solver, denoise, color_fix)  # bad input fails before any loading
    wanted = parse_target(target) or {"scale": _factor(scale)}
    device = comfy.torch_device()
    buffers = image_buffers(how.options["sampler"], color_fix)

    # Make room for the run at block batch 1 at least, then size the batches from what is really free.
    minimum = plan_for(handle.model, h, w, 1, wanted, replace(settings.options(), block_batch=1, images="device"), buffers, device,
                       comfy.free_memory_bytes(device)).peak
    net = comfy.load_to_device(handle.patcher, handle.model, minimum.total - minimum.weights)
    plan = plan_for(net, h, w, 1, wanted, settings.options(), buffers, device, comfy.free_memory_bytes(device))
    # Built-in solvers keep their state after every evaluation: the same prompt queued again after Cancel, an
    # error or a restart continues where it stopped (a wired SAMPLER cannot: its inner state is not ours, so none is kept).
    state_dir = comfy.state_directory() if resume and sampler is None else None
    how_to = SamplingOptions(steps=steps, compile=bool(compile), state_dir=state_dir, **how.options)
    progress = comfy.Progress(b * _groups(plan) * how.evaluations, node_id)
    results, retried = [], None
    try:
        for i in range(b):
            comfy.check_interrupted()
            one = (image[i:i + 1], replace(how_to, seed=(seed + i) % (SEED_MAX + 1)))
            out, ran = run_with_recovery(
                lambda p, one=one, i=i: _run_one(net, *one, p, how.evaluations, i, b, progress, node_id),
                plan, cfg, net.dtype, net.clip is not None, device, free_memory=comfy.free_memory_bytes,
                empty_cache=comfy.empty_cache, oom_errors=comfy.oom_errors())
            if ran is not plan:
                plan, retried = ran, (ran.block_batch, ran.offload_frontier)
            results.append(out)
    finally:
        comfy.empty_cache()  # also after Cancel: the sampler has dropped its caches, hand the memory back
    result = torch.cat(results)
    assert result.shape[1:3] == plan.out_size, result.shape  # the core's contract
    passes = len(plan.passes)
    ran = f"{how.evaluations} network evaluations a pass: {how.label}" + (f", {passes} passes" if passes > 1 else "")
    return NodeResult((result,), ui={"text": [ran]},
                      extra={"block_batch": plan.block_batch, "retried": retried, "progress": progress.value, "plan": plan})


def _groups(plan) -> int:
    """Block groups of one network evaluation, summed over the passes."""
    return sum(len(plan_blocks(*p.grid, p.block_batch, plan.scan).groups) for p in plan.passes)


def _run_one(net, image, how_to, plan, evaluations, index, images, progress, node_id):
    """One image with progress, preview and Cancel wired to the core's events."""
    bs = net.config.block_size
    trackers = [BlockTracker(plan_blocks(*p.grid, p.block_batch, plan.scan), *p.out_size, bs, evaluations, index, images)
                for p in plan.passes]

    def callback(event):
        comfy.check_interrupted()  # Cancel: raises out of the sampler, which frees its caches on the way
        if isinstance(event, BlockGroupDone):
            k = event.pass_index
            message = trackers[k].on_group(event)
            message.update(run_pass=k, run_passes=len(trackers), scale=plan.passes[k].scale)
            # totals read now: a ComfyUI sampler's evaluation count is an estimate, a tracker grows if it runs longer
            per_image = sum(t.total for t in trackers)
            before = index * per_image + sum(t.total for t in trackers[:k])
            progress.update(before + message["value"], images * per_image, trackers[k].preview_if_due())
            comfy.send_to_browser(EVENT, {"node": node_id, **message})

    return upscale_image(net, image=image, plan=plan, callback=callback, seed=how_to.seed,
                         **how_to.keywords(include_state=True))


def spec() -> NodeSpec:
    return NodeSpec(
        node_id="InfDiTUpscale",
        display_name="Inf-DiT Upscale",
        description="Upscales images by any factor 1 to 16 (x4 and x2 passes of Inf-DiT), generating 128 px blocks in order so memory grows with "
                    "the shorter side only. Progress and a live preview advance per block group; Cancel stops within a group.",
        inputs=(
            Input("model", "INF_DIT", "The model from Load Inf-DiT."),
            Input("image", "image", "Images to upscale: any size, RGB or RGBA (alpha is resized bicubically). "
                  "Batches run one image after another; image i uses seed + i."),
            Input("scale", "combo", "Upscaling factor. The output is exactly scale x the input size. 2 and 4 are one "
                  "pass of the model; 8 and 16 two passes (x4 then x2 or x4); other factors run the passes that reach "
                  "them, then resize down (antialiased).", default="4", options=SCALE_OPTIONS),
            Input("steps", "int", "Sampler steps (network passes: see solver). 0 = the model's own: for the released "
                  "model 13 with ipndm (13 network passes), 20 with heun, the release's (39 passes) and the other "
                  "solvers; 1 for the bundled demo model (its 2-3 step results are broken).",
                  default=0, min=0, max=200, step=1),
            Input("seed", "int", "Noise seed. The same seed, settings and image give the same start noise on any device (it is drawn on the "
                  "CPU); the built-in solvers then give the same result up to float rounding. A wired ancestral or SDE "
                  "sampler draws its extra noise on the device, so its result also depends on the device.",
                  default=0, min=0, max=SEED_MAX, control_after_generate=True),
            Input("block_control", "INF_DIT_BLOCKS", "Optional Block Size Control. Without it: auto block batch for "
                  "the free memory, frontier on device, auto scan.", optional=True),
            Input("target", "string", "Instead of scale: the output size. Empty = use scale. '2.5x' = any factor 1 to "
                  "16; '1000' = long side in pixels (keeps the aspect ratio); '1920x1080' = width x height; '4mp' = "
                  "megapixels (of 1024x1024). Never smaller than the input, at most 16x.", default="", optional=True),
            Input("compile", "boolean", "Fuse the model's small operations with torch.compile: faster blocks after a "
                  "first run that spends a minute or more compiling. Where compiling is unavailable it runs as usual "
                  "(one warning in the console).", default=False, optional=True),
            Input("sampler", "SAMPLER", "Optional ComfyUI sampler (e.g. KSamplerSelect): runs instead of the solver widget, "
                  "with the node's seed for ancestral/SDE noise. CFG++ samplers do not apply (no guidance).", optional=True),
            Input("sigmas", "SIGMAS", "Optional noise levels (e.g. KarrasScheduler; the released model uses sigma_max 40, "
                  "sigma_min 0.002, rho 7). Replaces steps and denoise: their count sets the steps.", optional=True),
            Input("solver", "combo", "Built-in ODE solver when no sampler is wired. ipndm (the default) with 13 "
                  "steps is as close to the exact ODE solution as the release's heun with 20 steps, at a third of the "
                  "network passes. heun = the release's sampler, exact to the reference (2 x steps - 1 passes); "
                  "euler, dpmpp_2m, ipndm, ipndm_v, deis take 1 pass per step, dpm_2 two. Each gives what "
                  "KSamplerSelect's sampler of the same name gives (ipndm, ipndm_v, deis: ComfyUI's methods since 0.2).",
                  default=DEFAULT_SOLVER, options=SOLVERS, optional=True),
            Input("denoise", "float", "How much of the noise schedule to run, as KSampler's denoise. 1 = from full noise "
                  "(the release). Lower starts at a lower noise level: closer to the input, less new detail and less "
                  "grain, and its shorter stretch needs fewer steps (the steps widget still sets how many run).",
                  default=1.0, min=0.01, max=1.0, step=0.01, optional=True),
            Input("color_fix", "combo", "Colour correction of the result against the bicubic-upscaled input: none "
                  "(the release), wavelet (input's low frequencies, output's detail), adain (per-channel mean and "
                  "spread), lab (output's lightness, input's colour). Alpha is untouched.",
                  default="none", options=COLOR_FIXES, optional=True),
            Input("resume", "boolean", "Keep the run's progress after every network evaluation (in a hidden "
                  ".inf_dit_resume folder of the output folder, removed when the image is done) so that queueing the "
                  "same prompt again after Cancel, an error or a restart continues where it stopped, with the same "
                  "result bit for bit on a CPU. Built-in solvers only. Off: nothing is written.",
                  default=True, optional=True),
        ),
        outputs=(Output("image", "image", "The upscaled images: scale x the input size, or the target size."),),
        run=upscale,
    )
