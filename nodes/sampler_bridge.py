"""A ComfyUI SAMPLER (e.g. from KSamplerSelect) run on our block-wise denoiser.

ComfyUI's sampler functions are k-diffusion style, `fn(model, x, sigmas, extra_args, callback, disable,
**extra_options)`, the same call shape as the core's solvers, so the core runs them like its own. What
differs is the `model` they get: in ComfyUI it is a wrapper around the diffusion model, and several
samplers reach through it for the model's noise parametrisation (`model_sampling`). `SamplerModel` gives
them that: our denoiser plus an EDM description of it (ComfyUI's own `ModelSamplingContinuousEDM` + `EDM`
when ComfyUI is there, `comfy_adapter.edm_model_sampling`).

No ComfyUI import here: the node passes in the sampler object and the model sampling, so this runs
(and is tested) with k-diffusion-style stand-ins too.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

log = logging.getLogger("inf_dit")

# Network evaluations per step of ComfyUI 0.8.0's samplers, counted in a real ComfyUI 0.8.0 with a
# counting denoiser (sigmas ending in 0): name -> (per step, constant). Two-stage samplers take one
# evaluation on the last step (to sigma 0), so 2 x steps - 1. Progress uses it; a wrong figure only
# makes the bar end early or late.
EVALUATIONS_PER_STEP = {
    "euler": (1, 0), "euler_ancestral": (1, 0), "heun": (2, -1), "heunpp2": (3, -3), "dpm_2": (2, -1),
    "dpm_2_ancestral": (2, -1), "lms": (1, 0), "dpmpp_2s_ancestral": (2, -1), "dpmpp_sde": (2, -1),
    "dpmpp_sde_gpu": (2, -1), "dpmpp_2m": (1, 0), "dpmpp_2m_sde": (1, 0), "dpmpp_2m_sde_gpu": (1, 0),
    "dpmpp_2m_sde_heun": (1, 0), "dpmpp_2m_sde_heun_gpu": (1, 0), "dpmpp_3m_sde": (1, 0),
    "dpmpp_3m_sde_gpu": (1, 0), "ddpm": (1, 0), "lcm": (1, 0), "ipndm": (1, 0), "ipndm_v": (1, 0),
    "deis": (1, 0), "res_multistep": (1, 0), "res_multistep_ancestral": (1, 0), "gradient_estimation": (1, 0),
    "er_sde": (1, 0), "exp_heun_2_x0": (2, -1), "exp_heun_2_x0_sde": (2, -1), "seeds_2": (2, -1),
    "seeds_3": (3, -2), "sa_solver": (1, 0), "sa_solver_pece": (2, -1), "dpm_fast": (1, 0),
    "uni_pc": (1, 0), "uni_pc_bh2": (1, 0),
}


class UnsupportedSampler(ValueError):
    """A SAMPLER that cannot run on Inf-DiT; the message names it and says what to use instead."""


def sampler_name(function) -> str:
    """ComfyUI's name for a sampler function: `sample_euler_ancestral` -> `euler_ancestral`,
    `sample_unipc_bh2` -> `uni_pc_bh2`, `dpm_fast_function` -> `dpm_fast`."""
    name = getattr(function, "__name__", type(function).__name__)
    if name.startswith("sample_unipc"):
        return "uni_pc" + name[len("sample_unipc"):]
    if name.startswith("sample_"):
        return name[len("sample_"):]
    return name.removesuffix("_function")


def sampler_parts(sampler) -> tuple:
    """(function, extra_options, name) of a SAMPLER; UnsupportedSampler for one we cannot run."""
    function = getattr(sampler, "sampler_function", None)
    if not callable(function):
        raise UnsupportedSampler(
            f"Inf-DiT Upscale: the SAMPLER input ({type(sampler).__name__}) has no k-diffusion sampler_function; "
            f"wire a KSamplerSelect (or another ComfyUI sampler node) or leave it unconnected to use the solver widget")
    extra_options = dict(getattr(sampler, "extra_options", None) or {})
    name = sampler_name(function)
    if name.endswith("_cfg_pp") or extra_options.get("cfg_pp"):
        raise UnsupportedSampler(
            f"Inf-DiT Upscale: sampler {name!r} is a CFG++ sampler, which needs classifier-free guidance internals "
            f"Inf-DiT does not have; pick its plain version ({name.removesuffix('_cfg_pp')})")
    return function, extra_options, name


def estimate_evaluations(name: str, function, extra_options: dict, sigmas: torch.Tensor) -> int:
    """Expected network evaluations of a SAMPLER over `sigmas`: from the table for ComfyUI's names, else
    counted by running the sampler on a tiny tensor with an analytic denoiser. Only used for progress."""
    steps = len(sigmas) - 1
    if name in EVALUATIONS_PER_STEP:
        per_step, constant = EVALUATIONS_PER_STEP[name]
        last_is_zero = float(sigmas[-1]) == 0
        return max(per_step * steps + (constant if last_is_zero else 0), 1)
    try:
        return max(count_evaluations(function, extra_options, sigmas), 1)
    except Exception as e:  # a guess for the progress bar must never stop a run
        log.info("Inf-DiT: could not count the evaluations of sampler %s (%s); assuming one per step", name, e)
        return max(steps, 1)


def count_evaluations(function, extra_options: dict, sigmas: torch.Tensor, sigma_data: float = 0.5) -> int:
    """Run the sampler on a 1x3x2x2 tensor with the exact denoiser of N(0, sigma_data^2) data and count calls."""
    calls = 0

    def denoise(x, sigma, **_):
        nonlocal calls
        calls += 1
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return x * sigma_data**2 / (s**2 + sigma_data**2)

    sigmas = sigmas.detach().float().cpu().clone()
    x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    model = SamplerModel(denoise, EDMModelSampling(float(sigmas[sigmas > 0].min()), float(sigmas.max()), sigma_data))
    function(model, x, sigmas, extra_args={"seed": 0}, callback=None, disable=True, **extra_options)
    return calls


class EDMModelSampling:
    """Plain stand-in for ComfyUI's ModelSamplingContinuousEDM + EDM (used without ComfyUI): the parts
    k-diffusion-style samplers read (sigma range, sigma_data, noise scaling for an x0/VE model)."""

    def __init__(self, sigma_min: float, sigma_max: float, sigma_data: float):
        self.sigma_data = sigma_data
        self.sigmas = torch.linspace(torch.tensor(sigma_min).log(), torch.tensor(sigma_max).log(), 1000).exp()

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = torch.as_tensor(sigma).reshape(-1, *([1] * (noise.dim() - 1)))
        return latent_image + noise * ((1 + sigma**2).sqrt() if max_denoise else sigma)

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class _ModelPatcher:
    """Where ComfyUI's SDE samplers look the model sampling up: `model_patcher.get_model_object`."""

    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def get_model_object(self, name: str):
        if name == "model_sampling":
            return self.model_sampling
        raise UnsupportedSampler(f"Inf-DiT Upscale: this sampler asks the model for {name!r}, which Inf-DiT does not have; "
                                 f"pick another sampler")


class SamplerModel:
    """The `model` a ComfyUI sampler function gets: calling it denoises (block by block, in the core);
    `inner_model.inner_model.model_sampling` and `inner_model.model_patcher.get_model_object("model_sampling")`
    describe our EDM parametrisation, where ComfyUI has its CFG guider and diffusion model."""

    def __init__(self, denoise, model_sampling):
        self.denoise = denoise
        self.inner_model = SimpleNamespace(
            inner_model=SimpleNamespace(model_sampling=model_sampling),
            model_patcher=_ModelPatcher(model_sampling),
            model_sampling=model_sampling,
        )

    def __call__(self, x, sigma, **extra_args):
        return self.denoise(x, sigma, **extra_args)


def core_sampler(sampler, model_sampling):
    """The callable the core's `sample(sampler=...)` takes, running a ComfyUI SAMPLER; plus its name."""
    function, extra_options, name = sampler_parts(sampler)

    def run(model, x, sigmas, extra_args=None, callback=None, disable=None):
        shape = tuple(x.shape)

        def denoise(x_in, sigma, **kwargs):
            if tuple(x_in.shape) != shape:  # e.g. SamplerLCMUpscale with a scale_ratio other than 1
                raise UnsupportedSampler(
                    f"Inf-DiT Upscale: sampler {name!r} changed the image size during sampling ({shape} -> "
                    f"{tuple(x_in.shape)}); Inf-DiT samples at a fixed size: pick another sampler or its settings")
            return model(x_in, sigma, **kwargs)

        # UniPC writes into the sigmas it gets (the last 0 becomes 0.001): give it a copy.
        return function(SamplerModel(denoise, model_sampling), x, sigmas.clone(), extra_args=dict(extra_args or {}),
                        callback=callback, disable=disable, **extra_options)

    run.__name__ = f"comfy_{name}"
    return run, function, extra_options, name
