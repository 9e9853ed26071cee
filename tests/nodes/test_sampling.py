"""Inf-DiT Upscale's sampling inputs without ComfyUI: the built-in solver widget, denoise, colour fix, and a
ComfyUI SAMPLER / SIGMAS, here k-diffusion-style stand-ins written like ComfyUI's own (the same functions
run in a real ComfyUI in test_comfyui_server.py: test_every_comfyui_sampler)."""
import dataclasses

import pytest
import torch
from node_fixtures import folders, model_dir, tiny_handle  # noqa: F401 (fixtures)

from infdit_core import get_sigmas_karras
from nodes import comfy_adapter, sampler_bridge, upscale
from nodes.block_size import BlockSettings


class KSampler:
    """Stand-in for comfy.samplers.KSAMPLER: what the node reads from a SAMPLER."""

    def __init__(self, sampler_function, extra_options=None):
        self.sampler_function, self.extra_options = sampler_function, extra_options or {}


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float("inf"),
                s_noise=1.):
    """k-diffusion's Heun (EDM Algorithm 2) as ComfyUI 0.8.0 has it, with its churn options."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = (x - denoised) / sigma_hat
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.):
    """Ancestral Euler as ComfyUI has it: checks the model sampling for flow models, seeded noise from extra_args."""
    assert model.inner_model.inner_model.model_sampling is not None  # ComfyUI: isinstance(..., CONST)
    extra_args = {} if extra_args is None else extra_args
    generator = torch.Generator().manual_seed(extra_args["seed"] + 1)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_up = min(sigmas[i + 1], eta * (sigmas[i + 1] ** 2 * (sigmas[i] ** 2 - sigmas[i + 1] ** 2) / sigmas[i] ** 2) ** 0.5)
        sigma_down = (sigmas[i + 1] ** 2 - sigma_up ** 2) ** 0.5
        x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + torch.randn(x.shape, generator=generator).to(x) * s_noise * sigma_up
    return x


def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.):
    """Reads the model sampling the way ComfyUI's SDE samplers do (only the lookup matters here)."""
    model_sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
    sample_dpmpp_2m_sde.seen = model_sampling
    return sample_euler_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise)


def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    raise AssertionError("never called: the node refuses CFG++ samplers")


def sample_my_custom(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A sampler from another pack, not in our table: three evaluations per step."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        for _ in range(3):
            denoised = model(x, sigmas[i] * s_in, **extra_args)
        x = denoised + sigmas[i + 1] * (x - denoised) / sigmas[i]
    return x


def image(h=16, w=16, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def run(handle, pic, steps=2, seed=3, **kw):
    return upscale.upscale(handle, pic, "4", steps, seed, BlockSettings(block_batch=1, scan="rows"), **kw)


def test_comfy_heun_with_release_karras_sigmas_is_the_release(tiny_handle, monkeypatch):
    """The SAMPLER path with (ComfyUI's) Heun and a KarrasScheduler of the release's settings (the model's
    steps, its sigma_max/sigma_min, rho 7) gives exactly the release's result (solver heun, steps 0)."""
    monkeypatch.setattr(tiny_handle.model, "config", dataclasses.replace(tiny_handle.config, sampler_steps=4))
    cfg, pic = tiny_handle.config, image(h=40, w=24)  # 2 blocks: the frontier cache is used too
    default = upscale.upscale(tiny_handle, pic, "4", 0, 3, solver="heun").outputs[0]
    sigmas = get_sigmas_karras(cfg.sampler_steps, cfg.sigma_min, cfg.sigma_max, 7.0)
    wired = upscale.upscale(tiny_handle, pic, "4", 0, 3, sampler=KSampler(sample_heun), sigmas=sigmas).outputs[0]
    assert torch.equal(wired, default)
    assert run(tiny_handle, pic, sampler=KSampler(sample_heun)).outputs[0].shape == default.shape


def test_comfy_heun_without_sigmas_follows_steps(tiny_handle):
    pic = image()
    assert torch.equal(run(tiny_handle, pic, steps=3, sampler=KSampler(sample_heun)).outputs[0],
                       run(tiny_handle, pic, steps=3, solver="heun").outputs[0])


def test_the_sampler_sees_our_edm_model_sampling(tiny_handle):
    run(tiny_handle, image(), sampler=KSampler(sample_dpmpp_2m_sde))
    seen, cfg = sample_dpmpp_2m_sde.seen, tiny_handle.config
    assert seen.sigma_data == cfg.sigma_data
    assert float(seen.sigma_min) == pytest.approx(cfg.sigma_min) and float(seen.sigma_max) == pytest.approx(cfg.sigma_max)


def test_ancestral_noise_comes_from_the_node_seed(tiny_handle):
    pic, ancestral = image(), KSampler(sample_euler_ancestral)
    a, b, c = (run(tiny_handle, pic, seed=s, sampler=ancestral).outputs[0] for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    batch = run(tiny_handle, torch.cat([pic, pic]), seed=5, sampler=ancestral).outputs[0]
    assert torch.equal(batch[1], c[0])  # image i uses seed + i


def test_cfg_pp_samplers_get_a_one_line_error(tiny_handle):
    with pytest.raises(ValueError, match="'euler_cfg_pp' is a CFG\\+\\+ sampler") as err:
        run(tiny_handle, image(), sampler=KSampler(sample_euler_cfg_pp))
    assert "\n" not in str(err.value)


def test_a_sampler_without_a_function_gets_a_clear_error(tiny_handle):
    with pytest.raises(ValueError, match="no k-diffusion sampler_function"):
        run(tiny_handle, image(), sampler=object())


def test_sigmas_with_denoise_below_1_is_refused(tiny_handle):
    sigmas = get_sigmas_karras(3, 0.002, 40.0)
    with pytest.raises(ValueError, match="set denoise to 1"):
        run(tiny_handle, image(), sigmas=sigmas, denoise=0.5)


def progress_of(monkeypatch):
    updates = []
    monkeypatch.setattr(comfy_adapter.Progress, "update", lambda self, v, t, preview=None: updates.append((v, t)))
    return updates


@pytest.mark.parametrize("function,steps,evaluations", [(sample_heun, 3, 5), (sample_euler_ancestral, 3, 3),
                                                        (sample_my_custom, 2, 6)])
def test_progress_counts_the_samplers_evaluations(tiny_handle, monkeypatch, function, steps, evaluations):
    updates = progress_of(monkeypatch)
    run(tiny_handle, image(h=40, w=24), steps=steps, sampler=KSampler(function))
    assert updates[-1] == (2 * evaluations, 2 * evaluations)  # 2 block groups per evaluation
    assert [v for v, _ in updates] == list(range(1, 2 * evaluations + 1))


def test_a_wrong_estimate_only_stretches_the_bar(tiny_handle, monkeypatch):
    default = run(tiny_handle, image(), steps=3, solver="heun").outputs[0]
    updates = progress_of(monkeypatch)
    monkeypatch.setitem(sampler_bridge.EVALUATIONS_PER_STEP, "heun", (1, 0))  # claims 3, runs 5
    out = run(tiny_handle, image(), steps=3, sampler=KSampler(sample_heun)).outputs[0]
    assert torch.equal(out, default)
    assert updates[-1] == (5, 5) and all(v <= t for v, t in updates)


def test_counting_fallback_for_unknown_samplers():
    sigmas = get_sigmas_karras(4, 0.002, 40.0)
    assert sampler_bridge.estimate_evaluations("my_custom", sample_my_custom, {}, sigmas) == 12
    assert sampler_bridge.estimate_evaluations("heun", sample_heun, {}, sigmas) == 7

    def broken(*a, **k):
        raise RuntimeError("needs a GPU")

    assert sampler_bridge.estimate_evaluations("broken", broken, {}, sigmas) == 4  # one per step, no crash


def test_sampler_names_as_comfyui_has_them():
    def sample_unipc_bh2(): ...

    def dpm_fast_function(): ...

    assert [sampler_bridge.sampler_name(f) for f in (sample_heun, sample_unipc_bh2, dpm_fast_function)] == [
        "heun", "uni_pc_bh2", "dpm_fast"]


def test_solver_widget_picks_the_built_in_solver(tiny_handle, monkeypatch):
    pic = image()
    updates = progress_of(monkeypatch)
    euler = run(tiny_handle, pic, steps=3, solver="euler").outputs[0]
    assert updates[-1] == (3, 3)  # 3 evaluations of 1 group
    assert not torch.equal(euler, run(tiny_handle, pic, steps=3).outputs[0])
    with pytest.raises(ValueError, match="unknown solver 'karras'"):
        run(tiny_handle, pic, solver="karras")


def test_denoise_and_color_fix_reach_the_core(tiny_handle, monkeypatch):
    seen = []
    real = upscale.upscale_image
    monkeypatch.setattr(upscale, "upscale_image", lambda model, **kw: (seen.append(kw), real(model, **kw))[1])
    pic = image()
    low = run(tiny_handle, pic, denoise=0.3, color_fix="wavelet").outputs[0]
    assert seen[-1]["denoise"] == 0.3 and seen[-1]["color_fix"] == "wavelet" and seen[-1]["sampler"] == "ipndm"
    full = run(tiny_handle, pic).outputs[0]
    bicubic = torch.nn.functional.interpolate(pic.movedim(-1, 1), scale_factor=4, mode="bicubic").movedim(1, -1)
    assert (low - bicubic).abs().mean() < (full - bicubic).abs().mean()  # starts closer to the input
    with pytest.raises(ValueError, match="color_fix"):
        run(tiny_handle, pic, color_fix="sepia")


def test_extra_options_of_sampler_nodes_reach_the_function(tiny_handle):
    """e.g. SamplerEulerAncestral's eta: with eta 0 the ancestral sampler adds no noise and is plain Euler."""
    pic, quiet = image(), KSampler(sample_euler_ancestral, {"eta": 0.0})
    euler = run(tiny_handle, pic, steps=3, solver="euler").outputs[0]
    assert torch.allclose(run(tiny_handle, pic, steps=3, sampler=quiet).outputs[0], euler, atol=1e-6)
    assert not torch.allclose(run(tiny_handle, pic, steps=3, sampler=KSampler(sample_euler_ancestral)).outputs[0], euler, atol=1e-3)


def sample_lcm_upscale(model, x, sigmas, extra_args=None, callback=None, disable=None, total_upscale=2.0):
    """Like ComfyUI's SamplerLCMUpscale: enlarges x between steps."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in, **extra_args)
        x = torch.nn.functional.interpolate(x, scale_factor=total_upscale) + sigmas[i + 1] * torch.randn(1)
    return x


def test_a_sampler_that_resizes_the_image_gets_a_one_line_error(tiny_handle):
    with pytest.raises(ValueError, match="'lcm_upscale' changed the image size during sampling") as err:
        run(tiny_handle, image(), sampler=KSampler(sample_lcm_upscale))
    assert "\n" not in str(err.value)


def test_sampling_inputs_come_after_the_older_ones_and_are_optional():
    spec = upscale.spec()
    names = [i.name for i in spec.inputs]
    assert names[:5] == ["model", "image", "scale", "steps", "seed"]
    new = ["sampler", "sigmas", "solver", "denoise", "color_fix"]
    start = names.index("sampler")
    assert names[start:start + len(new)] == new and start > names.index("block_control")
    assert all(spec.input(n).optional for n in new)
    assert (spec.input("sampler").kind, spec.input("sigmas").kind) == ("SAMPLER", "SIGMAS")
    assert (spec.input("solver").default, spec.input("denoise").default, spec.input("color_fix").default) == ("ipndm", 1.0, "none")
    assert "less new detail" in spec.input("denoise").tooltip


def test_bad_sigmas_get_a_one_line_error(tiny_handle):
    with pytest.raises(ValueError, match="SIGMAS input is not usable: sigmas must end in 0") as err:
        run(tiny_handle, image(), sigmas=torch.tensor([4.0, 1.0, 0.5]))  # e.g. SplitSigmas' high part
    assert "\n" not in str(err.value) and err.value.__cause__ is None


def test_the_node_shows_the_evaluations_its_settings_run():
    from nodes.sampling import evaluations_query

    assert evaluations_query({}) == {"evaluations": 13, "steps": 13,
                                     "text": "13 network evaluations a pass: ipndm, 13 steps (the released weights' own)"}
    assert evaluations_query({"solver": "heun", "steps": "0"})["evaluations"] == 39  # a saved heun + 0: the release
    assert evaluations_query({"solver": "heun", "steps": "4"})["evaluations"] == 7
    assert evaluations_query({"solver": "dpmpp_2m", "steps": "0"})["evaluations"] == 20
    assert evaluations_query({"sampler": "1"})["evaluations"] is None
    for bad, message in (({"solver": "karras"}, "unknown solver"), ({"steps": "x"}, "whole number"), ({"steps": "-1"}, "0 or more")):
        with pytest.raises(ValueError, match=message):
            evaluations_query(bad)


def test_after_a_run_the_node_says_what_ran(tiny_handle):
    assert run(tiny_handle, image(), steps=3).ui == {"text": ["3 network evaluations a pass: ipndm"]}
    assert run(tiny_handle, image(), steps=2, solver="heun").ui == {"text": ["3 network evaluations a pass: heun"]}
