"""A ComfyUI SAMPLER as a k-diffusion-style solver over our denoiser (nodes/sampler_bridge.py), with
stand-ins written like ComfyUI 0.8.0's samplers (no ComfyUI needed)."""
import pytest
import torch

from nodes import comfy_adapter, sampler_bridge as bridge


class KSampler:
    def __init__(self, sampler_function, extra_options=None):
        self.sampler_function, self.extra_options = sampler_function, extra_options or {}


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i]) * s_noise
    return x


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * s_in, **extra_args)) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in, **extra_args)) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None):
    sample_dpmpp_2m_sde.seen = (model.inner_model.model_patcher.get_model_object("model_sampling"),
                                model.inner_model.inner_model.model_sampling, extra_args["seed"])
    return sample_euler(model, x, sigmas, extra_args)


def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None):
    timesteps = sigmas[:]
    timesteps[-1] = 0.001  # ComfyUI's UniPC writes into the sigmas it is given
    return sample_euler(model, x, sigmas[:-1], extra_args)


def sample_three_per_step(model, x, sigmas, extra_args=None, callback=None, disable=None):
    for i in range(len(sigmas) - 1):
        for _ in range(3):
            denoised = model(x, sigmas[i], **extra_args)
        x = denoised
    return x


def denoiser(calls):
    def denoise(x, sigma, **ignored):
        calls.append(ignored)
        return x * 0.5
    return denoise


SIGMAS = torch.tensor([4.0, 1.0, 0.25, 0.0])


def test_names_as_comfyui_has_them():
    def sample_unipc_bh2(): ...

    def dpm_fast_function(): ...

    assert [bridge.sampler_name(f) for f in (sample_heun, sample_unipc_bh2, dpm_fast_function)] == ["heun", "uni_pc_bh2", "dpm_fast"]


def test_cfg_pp_and_non_k_diffusion_samplers_are_refused_in_one_line():
    def sample_euler_cfg_pp(): ...

    with pytest.raises(ValueError, match="'euler_cfg_pp' is a CFG\\+\\+ sampler.*pick its plain version \\(euler\\)"):
        bridge.sampler_parts(KSampler(sample_euler_cfg_pp))
    with pytest.raises(ValueError, match="CFG\\+\\+"):
        bridge.sampler_parts(KSampler(sample_euler, {"cfg_pp": True}))  # gradient_estimation's option
    with pytest.raises(ValueError, match="no k-diffusion sampler_function"):
        bridge.sampler_parts(object())


def test_the_sampler_runs_on_our_denoiser_with_seed_and_options():
    calls = []
    run, _, _, name = bridge.core_sampler(KSampler(sample_euler, {"s_noise": 0.0}), bridge.EDMModelSampling(0.002, 40, 0.5))
    x = torch.ones(1, 3, 4, 4)
    out = run(denoiser(calls), x, SIGMAS, extra_args={"seed": 7})
    assert name == "euler" and torch.equal(out, x)  # s_noise 0 reached the function: no step taken
    assert calls == [{"seed": 7}] * 3


def test_model_sampling_is_where_comfyui_samplers_look():
    model_sampling = comfy_adapter.edm_model_sampling(0.002, 40.0, 0.5)  # the plain stand-in without ComfyUI
    run, *_ = bridge.core_sampler(KSampler(sample_dpmpp_2m_sde), model_sampling)
    run(denoiser([]), torch.ones(1, 3, 4, 4), SIGMAS, extra_args={"seed": 3})
    patcher_view, inner_view, seed = sample_dpmpp_2m_sde.seen
    assert patcher_view is model_sampling and inner_view is model_sampling and seed == 3
    assert model_sampling.sigma_data == 0.5
    assert float(model_sampling.sigma_min) == pytest.approx(0.002) and float(model_sampling.sigma_max) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="asks the model for 'latent_format'"):
        bridge.SamplerModel(denoiser([]), model_sampling).inner_model.model_patcher.get_model_object("latent_format")


def test_the_callers_sigmas_are_not_written_into():
    sigmas = SIGMAS.clone()
    run, *_ = bridge.core_sampler(KSampler(sample_unipc), bridge.EDMModelSampling(0.002, 40, 0.5))
    run(denoiser([]), torch.ones(1, 3, 4, 4), sigmas, extra_args={"seed": 0})
    assert torch.equal(sigmas, SIGMAS)


def test_a_sampler_that_resizes_the_image_is_refused_in_one_line():
    def sample_lcm_upscale(model, x, sigmas, extra_args=None, callback=None, disable=None):
        x = model(x, sigmas[0], **extra_args)
        return model(torch.nn.functional.interpolate(x, scale_factor=2), sigmas[1], **extra_args)

    run, *_ = bridge.core_sampler(KSampler(sample_lcm_upscale), bridge.EDMModelSampling(0.002, 40, 0.5))
    with pytest.raises(ValueError, match="'lcm_upscale' changed the image size during sampling"):
        run(denoiser([]), torch.ones(1, 3, 4, 4), SIGMAS, extra_args={"seed": 0})


def test_evaluation_estimates():
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])  # 4 steps
    assert bridge.estimate_evaluations("heun", sample_heun, {}, sigmas) == 7  # table: 2n - 1
    assert bridge.estimate_evaluations("seeds_3", sample_heun, {}, sigmas) == 10  # table: 3n - 2
    assert bridge.estimate_evaluations("three_per_step", sample_three_per_step, {}, sigmas) == 12  # counted

    def broken(*a, **k):
        raise RuntimeError("needs a GPU")

    assert bridge.estimate_evaluations("broken", broken, {}, sigmas) == 4  # one per step, no crash
