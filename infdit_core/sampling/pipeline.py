"""Image in, image out: padding to whole blocks, the upsampled LR, CLIP, noise, the solver, colour fix, cropping."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from . import resume, solvers
from ..network.clip import clip_vector
from .color import apply_color_fix, check_color_fix
from ..network.compiled import compiled
from ..network.layers import resize_bicubic
from .denoiser import BlockwiseDenoiser
from ..planning.memory import DEFAULT_IMAGE_BUFFERS, choose_block_batch, image_buffers
from ..hardware.devices import check_float8_frontier, traits
from ..hardware.host import release_host_cache
from ..planning.options import BlockOptions
from ..planning.plan import check_host_memory, model_budget, plan_run
from .options import SamplingOptions
from ..hardware.precision import NonFiniteOutput, check_finite
from .sampler import get_sigmas_karras, run_solver
from ..planning.scheduler import plan_blocks

SCALES = (2, 4)
MAX_SCHEDULE = 100_000  # longest Karras schedule denoise may ask for (steps / denoise)


def upsample(image: torch.Tensor, size) -> torch.Tensor:
    """Bicubic with antialias=True: torch's antialiased kernel is the a=-0.5 cubic of PIL/torchvision,
    which the release used even when upsampling (the plain path uses a=-0.75 and differs by up to 17%)."""
    return resize_bicubic(image, size)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple: reflect, or replicate where the image is too small to reflect."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return image
    if ph < h and pw < w:
        return F.pad(image, (0, pw, 0, ph), mode="reflect")
    # Reflect what fits, replicate the rest.
    rh, rw = min(ph, h - 1), min(pw, w - 1)
    image = F.pad(image, (0, rw, 0, rh), mode="reflect") if (rh or rw) else image
    return F.pad(image, (0, pw - rw, 0, ph - rh), mode="replicate")


def block_grid(height: int, width: int, scale: int = 4, block_size: int = 128) -> tuple[int, int]:
    """(rows, cols) of blocks for an input of this size after padding to whole blocks."""
    return -(-height * scale // block_size), -(-width * scale // block_size)


def _check_inputs(model, lr, scale, steps, noise, compile=False):
    if not isinstance(lr, torch.Tensor) or lr.dim() != 4 or lr.shape[1] != 3:
        shape = tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__
        raise ValueError(f"lr must be a (B, 3, h, w) tensor in [-1, 1], got {shape}")
    if lr.shape[0] < 1 or lr.shape[2] < 1 or lr.shape[3] < 1:
        raise ValueError(f"lr is empty: shape {tuple(lr.shape)}")
    if not lr.is_floating_point():
        raise ValueError(f"lr must be a float tensor in [-1, 1], got {lr.dtype}")
    if not torch.isfinite(lr).all():
        raise ValueError("lr contains NaN or infinite values")
    if scale not in SCALES:
        raise ValueError(f"scale must be 2 or 4, got {scale!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    if model.needs_clip and model.clip is None:
        raise ValueError("this model needs CLIP image weights but none are loaded: pass clip_path to load_inf_dit")


@torch.inference_mode()
def sample(
    model,
    lr: torch.Tensor,
    scale: int = 4,
    steps: int | None = None,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    block_batch=None,
    callback=None,
    scan: str = "auto",
    offload_frontier: bool = False,
    memory_budget: int | None = None,
    compile: bool = False,
    image_device=None,
    float8_frontier: bool = False,
    sampler=solvers.DEFAULT_SOLVER,
    sigmas: torch.Tensor | None = None,
    denoise: float = 1.0,
    color_fix: str = "none",
    evaluations: int | None = None,
    checkpoint=None,
) -> torch.Tensor:
    """Upscale lr (B, 3, h, w) in [-1, 1] by `scale`; returns (B, 3, scale*h, scale*w) in [-1, 1].

    steps None = the model's own (`solvers.own_steps`): with the default sampler, ipndm, 13 evaluations for
    the released model; with `sampler="heun"`, the release's sampler, `config.sampler_steps` (20: 39
    evaluations, exact to the reference).
    compile=True runs the layers through torch.compile (see compiled.py; eager with one warning where
    that is unavailable). It is a per-call option, not a model property, so one loaded model serves both.

    image_device: where the full-size images of the sampler live (None = the model's device; "cpu" for
    outputs too big for the device: only the blocks of each group then go to the device).
    float8_frontier: cached keys/values stored as float8 e4m3 with a per-block scale (opt-in; half
    the frontier of bf16, see docs/core-api.md for its error).
    `sampler`: a name in `solvers.SOLVERS` or a k-diffusion-style function (see docs/core-api.md);
    `sigmas`: the noise levels (then steps = len(sigmas) - 1); `denoise` < 1 starts later on the
    schedule, as ComfyUI's KSampler does; `color_fix`: "none", "wavelet", "adain" or "lab" against the
    bicubic image. `checkpoint` (resume.PassCheckpoint, from `run_plan`): the solver's state is saved to it
    after each evaluation and the run continues from what it holds."""
    cfg = model.config
    steps = solvers.own_steps(sampler, cfg.sampler_steps) if steps is None else steps
    if sigmas is not None:
        steps = len(solvers.check_sigmas(sigmas)) - 1
    _check_inputs(model, lr, scale, steps, noise, compile)
    check_float8_frontier(model.device, float8_frontier)
    solver, evaluations = _resolve_sampler(sampler, steps, evaluations)
    _check_denoise(denoise, sigmas, steps)
    check_color_fix(color_fix)
    device, bs = model.device, cfg.block_size
    b, _, h, w = lr.shape
    vector = None
    if model.needs_clip:  # on the compute device, from the unpadded image: padding is not content
        clip_lr = lr.to(device=device, dtype=torch.float32)
        clip_in = clip_lr if scale == 4 else upsample(clip_lr, (max(h // 2, 1), max(w // 2, 1)))
        vector = clip_vector(model.clip, clip_in)
        del clip_lr, clip_in
    device = torch.device(image_device) if image_device is not None else device
    lr = lr.to(device=device, dtype=torch.float32)
    padded = pad_to_multiple(lr, bs // scale)  # whole blocks of output
    hp, wp = padded.shape[-2:]
    out_h, out_w = hp * scale, wp * scale
    u = upsample(padded, (out_h, out_w)).clamp(-1, 1)
    lr_model = padded if scale == 4 else upsample(padded, (hp // 2, wp // 2))  # always output / 4

    owned_noise = noise is None
    if noise is None:
        gen = torch.Generator().manual_seed(int(seed))  # CPU generator: same seed, same image on any device
        noise = torch.randn((b, 3, out_h, out_w), generator=gen)
    elif tuple(noise.shape) != (b, 3, out_h, out_w):
        raise ValueError(f"noise must have the padded output shape {(b, 3, out_h, out_w)}, got {tuple(noise.shape)}")
    noise = noise.to(device=device, dtype=torch.float32)

    rows, cols = out_h // bs, out_w // bs
    n = _resolve_block_batch(model, block_batch, out_h, out_w, b, scan, offload_frontier, memory_budget,
                             image_buffers(sampler, color_fix))
    plan = plan_blocks(rows, cols, n, scan)
    denoiser = BlockwiseDenoiser(model, u, lr_model, vector, plan, offload_frontier, callback, float8_frontier)
    if sigmas is None:
        # denoise < 1: the tail of a longer schedule, as ComfyUI's KSampler (denoise 1: the release's).
        sigmas = get_sigmas_karras(int(steps / denoise), cfg.sigma_min, cfg.sigma_max)[-(steps + 1):]
    sigmas = sigmas.detach().to(device=device, dtype=torch.float32)
    denoiser.steps = steps

    def denoise_fn(x, sigma, evaluation, step):
        # A callable sampler of unknown cost reports the count so far, in BlockGroupDone too.
        denoiser.evaluations = evaluations if evaluations is not None else evaluation + 1
        return denoiser(x, sigma, evaluation, step)

    # x = u + sigma_max * noise: the release starts from the upsampled LR, not from pure noise. Written
    # over the noise (a caller's noise is copied first), the solver then updates it in place.
    x = noise.mul_(sigmas[0]).add_(u) if owned_noise else u + sigmas[0] * noise
    del noise
    with compiled(model, enabled=compile):
        x = run_solver(solver, denoise_fn, x, sigmas, callback, evaluations, extra_args={"seed": seed},
                       checkpoint=checkpoint)
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(u.shape):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"the sampler returned {got}, expected a tensor of shape {tuple(u.shape)}")
    x, u = x[:, :, : h * scale, : w * scale], u[:, :, : h * scale, : w * scale]
    return apply_color_fix(color_fix, x, u, in_place=True)


def _resolve_sampler(sampler, steps: int, evaluations):
    """(solver function, expected evaluation count or None)."""
    if evaluations is not None and (isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1):
        raise ValueError(f"evaluations must be None or an integer >= 1, got {evaluations!r}")
    if isinstance(sampler, str):
        solver = solvers.get_solver(sampler)
        return solver, solvers.evaluations_for(sampler, steps)  # exact: ignore a caller's guess
    if callable(sampler):
        return sampler, evaluations
    raise ValueError(f"sampler must be one of {', '.join(solvers.SOLVERS)} or a k-diffusion-style function, got {sampler!r}")


def _check_denoise(denoise, sigmas, steps: int) -> None:
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float)) or not 0 < denoise <= 1:
        raise ValueError(f"denoise must be a number in (0, 1] (1 = start from full noise), got {denoise!r}")
    if sigmas is None and steps / denoise > MAX_SCHEDULE:
        raise ValueError(f"denoise {denoise} is too small for {steps} steps (steps / denoise must be at most "
                         f"{MAX_SCHEDULE}): raise denoise or lower steps")
    if sigmas is not None and denoise != 1:
        raise ValueError(f"denoise {denoise} cannot be combined with sigmas: pass only the tail of the sigmas "
                         "instead (as ComfyUI's SplitSigmas does) and leave denoise at 1")


def _resolve_block_batch(model, block_batch, out_h, out_w, batch, scan, offload, budget, buffers) -> int:
    if block_batch is None or block_batch == "auto":
        if budget is None:
            budget = model_budget(model)
        return choose_block_batch(model.config, out_h, out_w, budget, model.dtype,
                                  BlockOptions(offload_frontier=offload, scan=scan), batch, model.clip is not None,
                                  model.device, buffers)
    if isinstance(block_batch, bool) or not isinstance(block_batch, int) or block_batch < 1:
        raise ValueError(f"block_batch must be 'auto' or an integer >= 1, got {block_batch!r}")
    return block_batch


def run_plan(model, lr: torch.Tensor, plan, sampling: SamplingOptions = SamplingOptions(), callback=None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """Run a `RunPlan` (see plan.py): lr (B, 3, h, w) in [-1, 1] -> (B, 3, *plan.out_size) in [-1, 1].

    Each native pass is one `sample` call on the previous pass's float output (clamped to [-1, 1],
    never quantised); pass k uses seed + k. Events carry `pass_index` and `passes`. A last
    antialiased bicubic resize gives the exact size when the passes overshoot it."""
    if tuple(lr.shape[-2:]) != tuple(plan.in_size):
        raise ValueError(f"the plan is for a {plan.in_size[1]}x{plan.in_size[0]} input, got {lr.shape[-1]}x{lr.shape[-2]}")
    if noise is not None and len(plan.passes) > 1:
        raise ValueError("noise can only be given for a single-pass run (scale 2 or 4)")
    check_host_memory(plan, traits(model.device).unified_memory)
    # One native pass: sample() fixes colour against its own bicubic image. Several passes (or a last
    # resize): fix once at the end, against the bicubic upscale of the original input.
    color_fix = check_color_fix(sampling.color_fix)
    single = len(plan.passes) == 1 and not plan.resize
    state = resume.open_run_state(model, lr, plan, sampling, noise)
    x = lr
    try:
        for k, p in enumerate(plan.passes):
            pass_id = state and state.pass_identity(plan, k)
            done = state.load_output(k, pass_id, x.device) if state else None
            if done is not None:
                state.say(f"Inf-DiT: resuming after pass {k + 1} of {len(plan.passes)} (saved)")
                x = done
                continue
            checkpoint = state.solver_checkpoint(k, pass_id) if state else None
            if checkpoint is not None and checkpoint.saved is not None:
                state.say(f"Inf-DiT: resuming at pass {k + 1} of {len(plan.passes)}, evaluation "
                          f"{checkpoint.evaluations_done(sampling.sampler) + 1} of {pass_evaluations(model, sampling)}")
            x = sample(
                model, x, scale=p.scale, seed=sampling.seed + k, noise=noise, block_batch=p.block_batch, scan=plan.scan,
                offload_frontier=plan.offload_frontier, callback=_pass_callback(callback, k, len(plan.passes)),
                image_device="cpu" if p.images_on_host else None, float8_frontier=plan.float8_frontier,
                checkpoint=checkpoint, **{**sampling.keywords(), "color_fix": color_fix if single else "none"},
            )
            # fp16 can overflow: one check per pass (one device read), so no black or garbage image is written
            try:
                check_finite(x, model.dtype, f"pass {k + 1} of {len(plan.passes)}" if len(plan.passes) > 1 else "the result")
            except NonFiniteOutput:
                if state:
                    state.finish()  # a state that leads here would lead here again
                raise
            if k + 1 < len(plan.passes):
                x = x.clamp(-1, 1)  # the next pass reads an image; its LR must stay in range
                if state:
                    state.save_output(k, pass_id, x)
    finally:
        if traits(model.device).pinned_memory:
            release_host_cache()  # pinned staging and frontier blocks back to the system
    if plan.resize:
        x = upsample(x.float(), plan.out_size).clamp(-1, 1)
    if not single and color_fix != "none":
        x = apply_color_fix(color_fix, x, upsample(lr.to(x.device, torch.float32), tuple(x.shape[-2:])).clamp(-1, 1),
                            in_place=True)
    if state:
        state.finish()  # the result is complete: nothing left to resume
    return x


def pass_evaluations(model, sampling: SamplingOptions) -> int:
    """Network evaluations of one pass of a built-in solver with these options."""
    steps = sampling.steps if sampling.steps is not None else solvers.own_steps(sampling.sampler, model.config.sampler_steps)
    steps = len(sampling.sigmas) - 1 if sampling.sigmas is not None else steps
    return solvers.evaluations_for(sampling.sampler, steps)


def _pass_callback(callback, index: int, passes: int):
    if callback is None or passes == 1:
        return callback
    return lambda event: callback(dataclasses.replace(event, pass_index=index, passes=passes))


def plan_for(model, height: int, width: int, batch: int = 1, target: dict | None = None,
             blocks: BlockOptions = BlockOptions(), buffers: int = DEFAULT_IMAGE_BUFFERS, device=None,
             free: int | None = None):
    """The RunPlan `upscale_image` follows for this model and input size. device: where it will run (None:
    where the model is); a budget of None: `free` bytes (None: the device's free memory now), less a
    margin, with the model's weights counted once. A device that cannot run these settings is refused here,
    before anything is loaded or computed."""
    check_float8_frontier(model.device if device is None else device, blocks.float8_frontier)
    if blocks.memory_budget is None:
        blocks = dataclasses.replace(blocks, memory_budget=model_budget(model, free))
    return plan_run(model.config, height, width, target, blocks, model.dtype, model.clip is not None, batch,
                    model.device if device is None else device, buffers)


TARGET_KEYWORDS = ("scale", "size", "long_side", "megapixels")


def upscale_image(model, image: torch.Tensor, scale=None, steps: int | None = None, seed: int = 0, *, size=None,
                  long_side=None, megapixels=None, plan=None, block_batch=None, memory_budget=None,
                  offload_frontier: bool = False, scan: str = "auto", images: str = "auto",
                  float8_frontier: bool = False, **kwargs) -> torch.Tensor:
    """(B, H, W, C) in [0, 1], C = 1..4 -> (B, H', W', C) in [0, 1].

    The output size is `scale` x the input (any factor 1..16; default 4), or `size` = (height, width), or a
    `long_side` / `megapixels` keeping the aspect ratio; or `plan`, a RunPlan made for this input.
    images: where the full-size images live ("auto": on the host when they would not fit the device).
    Grayscale is replicated to RGB and averaged back; alpha is upscaled bicubically and reattached.
    The other keywords are `SamplingOptions`' (sampler, sigmas, denoise, color_fix, compile, evaluations)
    and `noise`, `callback`.
    """
    _check_image(image)
    callback, noise = kwargs.pop("callback", None), kwargs.pop("noise", None)
    sampling = SamplingOptions(steps=steps, seed=seed, **kwargs)
    if plan is None:
        target = {k: v for k, v in zip(TARGET_KEYWORDS, (scale, size, long_side, megapixels)) if v is not None}
        blocks = BlockOptions("auto" if block_batch is None else block_batch, memory_budget, offload_frontier,
                              float8_frontier, scan, images)
        plan = plan_for(model, image.shape[1], image.shape[2], image.shape[0], target, blocks,
                        image_buffers(sampling.sampler, sampling.color_fix))
    return upscale_planned(model, image, plan, sampling, callback, noise)


def _check_image(image) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or not 1 <= image.shape[-1] <= 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be (B, H, W, C) with 1 to 4 channels in [0, 1], got {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")


def upscale_planned(model, image: torch.Tensor, plan, sampling: SamplingOptions = SamplingOptions(), callback=None,
                    noise=None) -> torch.Tensor:
    """`upscale_image` for a plan and options already made (the node, the CLI, the recovery): (B, H, W, C)
    in [0, 1] -> (B, H', W', C)."""
    _check_image(image)
    channels = image.shape[-1]
    x = image.float().movedim(-1, 1)  # (B, C, H, W)
    color_channels = 1 if channels <= 2 else 3
    color, alpha = x[:, :color_channels], x[:, color_channels:]
    rgb = color.expand(-1, 3, -1, -1) if color_channels == 1 else color
    out = run_plan(model, rgb * 2 - 1, plan, sampling, callback, noise)
    out = ((out.float() + 1) / 2).clamp(0, 1).cpu()
    if color_channels == 1:
        out = out.mean(1, keepdim=True)
    if alpha.shape[1]:
        up = upsample(alpha.cpu(), out.shape[-2:]).clamp(0, 1)
        out = torch.cat([out, up], dim=1)
    return out.movedim(1, -1)
