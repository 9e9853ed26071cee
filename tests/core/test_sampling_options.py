"""sample()'s sampling options: built-in solvers through the block scheduler, sigmas, denoise, colour
fix and k-diffusion-style sampler functions; the defaults stay the release's bit for bit."""
import pytest
import torch

from conftest import TINY, lr_image, random_model
from infdit_core import (
    COLOR_FIXES, SOLVERS, BlockGroupDone, EvaluationDone, SamplingCancelled, get_sigmas_karras, sample, solvers,
    upscale_image,
)
from infdit_core.sampling.color import adain_fix, lab_fix, rgb_to_lab, wavelet_fix, wavelet_lowpass
from infdit_core.sampling.pipeline import pad_to_multiple, upsample


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=5)


@pytest.fixture(scope="module")
def lr():
    return lr_image(20, 40, seed=1)  # 1 x 2 blocks after padding


def events_of(model, lr, **kwargs):
    events = []
    out = sample(model, lr, seed=3, callback=events.append, **kwargs)
    return out, [e for e in events if isinstance(e, EvaluationDone)], [e for e in events if isinstance(e, BlockGroupDone)]


def test_the_release_sampler_is_one_choice_away_bit_for_bit(model, lr):
    release = sample(model, lr, steps=3, seed=3, sampler="heun")
    same = sample(model, lr, steps=3, seed=3, sampler="heun", sigmas=None, denoise=1.0, color_fix="none")
    by_sigmas = sample(model, lr, seed=3, sampler="heun", sigmas=get_sigmas_karras(3, TINY.sigma_min, TINY.sigma_max))
    assert torch.equal(release, same) and torch.equal(release, by_sigmas)


def test_nothing_set_runs_the_default_solver(model, lr):
    assert solvers.DEFAULT_SOLVER == "ipndm" and solvers.RELEASE_SOLVER == "heun"
    default = sample(model, lr, steps=3, seed=3)
    assert torch.equal(default, sample(model, lr, steps=3, seed=3, sampler="ipndm"))
    assert not torch.equal(default, sample(model, lr, steps=3, seed=3, sampler="heun"))


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_runs_through_the_block_scheduler(model, lr, name):
    """Block batch 1 (two groups, frontier cache) = block batch 2 (one group), offloaded or not; the
    events count the solver's real evaluations."""
    steps = 3
    total = solvers.evaluations_for(name, steps)
    one, evals, groups = events_of(model, lr, steps=steps, sampler=name, block_batch=1)
    both = sample(model, lr, steps=steps, seed=3, sampler=name, block_batch=2, offload_frontier=True)
    assert (one - both).abs().max().item() < 1e-4
    assert [e.evaluation for e in evals] == list(range(total)) and {e.evaluations for e in evals} == {total}
    assert len(groups) == 2 * total and {g.evaluations for g in groups} == {total}
    assert [g.pixels.shape for g in groups[:1]] == [(1, 3, 1, 128, 128)]


@pytest.mark.parametrize("name", SOLVERS)
def test_a_raising_callback_cancels_every_solver(model, lr, name):
    seen = []

    def stop(event):
        if isinstance(event, BlockGroupDone):
            seen.append(event.evaluation)
            if event.evaluation == 1 and event.group == 0:
                raise SamplingCancelled("user")

    with pytest.raises(SamplingCancelled):
        sample(model, lr, steps=3, sampler=name, block_batch=1, callback=stop)
    assert seen == [0, 0, 1]


@pytest.mark.parametrize("denoise, steps", [(0.5, 3), (0.75, 4), (0.3, 1)])
def test_denoise_starts_later_on_a_longer_schedule(model, lr, denoise, steps):
    longer = get_sigmas_karras(int(steps / denoise), TINY.sigma_min, TINY.sigma_max)
    tail = longer[-(steps + 1):]
    out, evals, _ = events_of(model, lr, steps=steps, denoise=denoise, sampler="heun")
    assert evals[0].sigma == pytest.approx(float(tail[0]), rel=1e-6) and tail[0] < TINY.sigma_max
    assert len(evals) == 2 * steps - 1
    assert torch.equal(out, sample(model, lr, seed=3, sigmas=tail, sampler="heun"))


def test_lower_denoise_stays_closer_to_the_bicubic_image(model, lr):
    u = upsample(lr, (80, 160)).clamp(-1, 1)
    far = (sample(model, lr, steps=4, seed=3) - u).abs().mean()
    near = (sample(model, lr, steps=4, seed=3, denoise=0.4) - u).abs().mean()
    assert near < far


def test_the_start_is_u_plus_the_first_sigma_times_the_noise(model, lr):
    noise = torch.randn(1, 3, 128, 256, generator=torch.Generator().manual_seed(0))
    seen = {}

    def recorder(m, x, sigmas, extra_args=None, callback=None, disable=None):
        seen["x"], seen["sigmas"] = x.clone(), sigmas.clone()
        return x

    sigmas = torch.tensor([2.5, 1.0, 0.0])
    sample(model, lr, noise=noise, sampler=recorder, sigmas=sigmas)
    u = upsample(pad_to_multiple(lr, 32), (128, 256)).clamp(-1, 1)  # 20 x 40 pads to 32 x 64
    assert torch.allclose(seen["x"], u + 2.5 * noise) and torch.equal(seen["sigmas"], sigmas)


@pytest.mark.parametrize("kwargs, message", [
    ({"denoise": 0}, r"denoise must be a number in \(0, 1\]"),
    ({"denoise": 1.5}, r"denoise must be a number in \(0, 1\]"),
    ({"denoise": -0.2}, r"denoise must be a number in \(0, 1\]"),
    ({"denoise": "half"}, r"denoise must be a number"),
    ({"denoise": 1e-9}, "too small"),
    ({"denoise": 0.5, "sigmas": torch.tensor([1.0, 0.0])}, "SplitSigmas"),
    ({"sigmas": torch.tensor([1.0, 0.5])}, "end in 0"),
    ({"sigmas": torch.tensor([0.5, 1.0, 0.0])}, "strictly descending"),
    ({"sampler": "dpm_fast"}, "unknown sampler 'dpm_fast'"),
    ({"sampler": 3}, "sampler must be one of"),
    ({"color_fix": "hist"}, "unknown color_fix 'hist'"),
    ({"sampler": lambda m, x, s, **k: x[:, :2], "evaluations": 2}, "the sampler returned"),
    ({"sampler": lambda m, x, s, **k: x, "evaluations": 0}, "evaluations must be"),
])
def test_bad_sampling_options_are_clear_errors(model, lr, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(model, lr, steps=2, **kwargs)


# k-diffusion-style functions as a caller (e.g. ComfyUI's SAMPLER) hands them in: written here from
# k-diffusion's conventions (sigma passed per image, s_in), not taken from it.
def kd_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in, **extra_args)) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def kd_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler ancestral (eta 1), its noise drawn from a generator seeded with extra_args['seed']."""
    extra_args = extra_args or {}
    gen = torch.Generator().manual_seed(extra_args["seed"] + 1)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        denoised = model(x, s * s_in, **extra_args)
        sigma_up = (t**2 * (s**2 - t**2) / s**2) ** 0.5
        sigma_down = (t**2 - sigma_up**2) ** 0.5
        x = x + (x - denoised) / s * (sigma_down - s)
        if t > 0:
            x = x + torch.randn(x.shape, generator=gen).to(x) * sigma_up
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s, "sigma_hat": s, "denoised": denoised})
    return x


def test_a_k_diffusion_heun_with_the_release_sigmas_gives_the_release_result(model, lr):
    default = sample(model, lr, steps=4, seed=3, sampler="heun")
    sigmas = get_sigmas_karras(4, TINY.sigma_min, TINY.sigma_max)
    out, evals, groups = events_of(model, lr, sampler=kd_heun, sigmas=sigmas, evaluations=7)
    assert torch.equal(out, default)
    assert [e.evaluation for e in evals] == list(range(7)) and {e.evaluations for e in evals} == {7}
    # The step is learnt from the function's per-step callbacks; k-diffusion calls it mid-step, so a
    # corrector evaluation already counts as the next step.
    assert [e.step for e in evals] == [0, 1, 1, 2, 2, 3, 3]
    assert {g.evaluations for g in groups} == {7}


def test_an_ancestral_sampler_function_runs_with_the_seed(model, lr):
    sigmas = get_sigmas_karras(3, TINY.sigma_min, TINY.sigma_max)
    a, evals, groups = events_of(model, lr, sampler=kd_euler_ancestral, sigmas=sigmas)
    b = sample(model, lr, seed=3, sampler=kd_euler_ancestral, sigmas=sigmas)
    c = sample(model, lr, seed=4, sampler=kd_euler_ancestral, sigmas=sigmas)
    assert torch.equal(a, b) and not torch.allclose(a, c) and torch.isfinite(a).all()
    # Total unknown in advance: each event reports the count so far, and the count is real.
    assert [(e.evaluation, e.evaluations) for e in evals] == [(0, 1), (1, 2), (2, 3)]
    assert [g.evaluations for g in groups if g.group == 0] == [1, 2, 3]


def test_a_sampler_function_can_be_cancelled(model, lr):
    def stop(event):
        if isinstance(event, EvaluationDone) and event.evaluation == 1:
            raise SamplingCancelled("user")

    with pytest.raises(SamplingCancelled):
        sample(model, lr, sampler=kd_euler_ancestral, sigmas=get_sigmas_karras(5), callback=stop)


def smooth(h, w, seed, scale=1.0, grid=4):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, grid, grid, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True) * scale


def detail(h, w, seed):
    return (torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) - 0.5) * 0.4


def test_wavelet_fix_takes_the_low_frequencies_of_the_reference_and_keeps_the_detail():
    u = smooth(96, 128, 0, 0.6)
    fine = detail(96, 128, 1)
    out = u + smooth(96, 128, 2, 0.3, grid=2) + fine  # drifted colours (a slow gradient) + fine detail
    fixed = wavelet_fix(out, u)
    low = lambda x: wavelet_lowpass(x)  # noqa: E731
    assert (low(fixed) - low(u)).abs().mean() < 0.1 * (low(out) - low(u)).abs().mean()
    high = lambda x: x - wavelet_lowpass(x)  # noqa: E731
    assert (high(fixed) - high(out)).abs().mean() < 0.1 * high(out).abs().mean()
    assert (fixed - (u + fine)).abs().mean() < 0.15 * (out - (u + fine)).abs().mean()


def test_adain_fix_matches_mean_and_spread_per_channel():
    u, out = smooth(40, 50, 3, 0.5), smooth(40, 50, 4) * 0.2 + 0.3 + detail(40, 50, 5)
    fixed = adain_fix(out, u)
    assert torch.allclose(fixed.mean((2, 3)), u.mean((2, 3)), atol=1e-5)
    assert torch.allclose(fixed.std((2, 3)), u.std((2, 3)), atol=1e-4)
    corr = torch.corrcoef(torch.stack([fixed[0, 0].flatten(), out[0, 0].flatten()]))[0, 1]
    assert corr > 0.9999  # an affine map per channel: the pattern is kept


def test_lab_fix_keeps_the_lightness_and_takes_the_colour():
    u, out = smooth(24, 24, 6, 0.5), smooth(24, 24, 7, 0.5) + detail(24, 24, 8) * 0.5
    fixed = lab_fix(out, u)
    lab_f, lab_o, lab_u = (rgb_to_lab((x + 1) / 2) for x in (fixed, out, u))
    assert torch.allclose(lab_f[:, 0], lab_o[:, 0], atol=1e-2)
    assert torch.allclose(lab_f[:, 1:], lab_u[:, 1:], atol=1e-2)


@pytest.mark.parametrize("color_fix", COLOR_FIXES[1:])
def test_colour_fix_in_the_pipeline_pulls_the_output_towards_the_bicubic_image(model, lr, color_fix):
    raw = sample(model, lr, steps=2, seed=3, sampler="heun")
    fixed = sample(model, lr, steps=2, seed=3, sampler="heun", color_fix=color_fix)
    u = upsample(lr, (80, 160)).clamp(-1, 1)
    assert fixed.shape == raw.shape
    assert (fixed.mean((2, 3)) - u.mean((2, 3))).abs().max() < (raw.mean((2, 3)) - u.mean((2, 3))).abs().max()


def test_colour_fix_leaves_alpha_alone(model):
    image = torch.rand(1, 10, 12, 4, generator=torch.Generator().manual_seed(0))
    plain = upscale_image(model, image, steps=1, seed=2)
    fixed = upscale_image(model, image, steps=1, seed=2, color_fix="wavelet")
    assert torch.equal(plain[..., 3], fixed[..., 3]) and not torch.equal(plain[..., :3], fixed[..., :3])
    assert fixed.min() >= 0 and fixed.max() <= 1
