"""EDM preconditioning, the Karras noise levels and the Heun loop against hand-written versions."""
import dataclasses

import pytest
import torch

from infdit_core import SamplingCancelled, evaluations_for, get_sigmas_karras
from infdit_core.network.precond import edm_loss_weight, edm_scalings
from infdit_core.sampling import solvers
from infdit_core.sampling.sampler import EvaluationDone, run_solver

from conftest import TINY, random_model


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 1.0, 7.3, 40.0])
def test_edm_scalings(sigma):
    s = edm_scalings(torch.tensor([sigma], dtype=torch.float64))
    assert s.c_skip.item() == pytest.approx(0.25 / (sigma**2 + 0.25))
    assert s.c_out.item() == pytest.approx(0.5 * sigma / (sigma**2 + 0.25) ** 0.5)
    assert s.c_in.item() == pytest.approx(1 / (sigma**2 + 0.25) ** 0.5)
    assert s.c_noise.item() == pytest.approx(0.25 * torch.log(torch.tensor(sigma, dtype=torch.float64)).item())
    assert edm_loss_weight(torch.tensor(sigma, dtype=torch.float64)).item() == pytest.approx(
        (sigma**2 + 0.25) / (0.5 * sigma) ** 2
    )


@pytest.mark.parametrize("sigma_data", [0.5, 0.125])
def test_edm_scalings_follow_sigma_data(sigma_data):
    sigma = torch.tensor([0.3], dtype=torch.float64)
    s, sd2 = edm_scalings(sigma, sigma_data), sigma_data**2
    assert s.c_skip.item() == pytest.approx(sd2 / (0.09 + sd2))
    assert s.c_out.item() == pytest.approx(0.3 * sigma_data / (0.09 + sd2) ** 0.5)
    assert s.c_in.item() == pytest.approx(1 / (0.09 + sd2) ** 0.5)
    assert edm_loss_weight(sigma, sigma_data).item() == pytest.approx((0.09 + sd2) / (0.3 * sigma_data) ** 2)


@pytest.mark.parametrize("residual", [False, True])
def test_the_model_uses_its_configs_sigma_data(residual):
    """With the output layer zeroed the network adds nothing: D = c_skip(sigma_data) * x (+ u for a
    residual model), which shows which sigma_data the forward pass used."""
    cfg = dataclasses.replace(TINY, sigma_data=0.125, residual=residual)
    model = random_model(cfg)
    with torch.no_grad():
        model.final_linear.weight.zero_()
        model.final_linear.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(1, 3, 128, 128, generator=g), torch.randn(1, 3, 128, 128, generator=g)
    lr = torch.randn(1, 3, 32, 32, generator=g)
    c_skip = 0.125**2 / (0.3**2 + 0.125**2)
    expected = u + c_skip * (x - u) if residual else c_skip * x
    with torch.no_grad():
        assert torch.allclose(model(x, 0.3, u, lr), expected, atol=1e-5)


@pytest.mark.parametrize("bad", [{"sigma_data": 0.0}, {"sigma_max": 0.001}, {"sigma_min": -1.0}, {"sampler_steps": 0}])
def test_noise_settings_are_checked(bad):
    with pytest.raises(ValueError, match="sigma|steps"):
        dataclasses.replace(TINY, **bad)


def test_karras_sigmas_of_the_release():
    sigmas = get_sigmas_karras(20, 0.002, 40.0)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 21 and sigmas[-1] == 0
    for i in range(20):
        expected = (40 ** (1 / 7) + i / 19 * (0.002 ** (1 / 7) - 40 ** (1 / 7))) ** 7
        assert sigmas[i].item() == pytest.approx(expected, rel=1e-5)
    assert sigmas[0].item() == pytest.approx(40.0, rel=1e-6) and sigmas[19].item() == pytest.approx(0.002, rel=1e-5)


def test_karras_sigmas_for_other_step_counts():
    for n in (1, 3, 8):
        s = get_sigmas_karras(n, 0.002, 40.0)
        assert len(s) == n + 1 and s[-1] == 0 and bool((s[:-1][1:] < s[:-1][:-1]).all())


def toy_denoiser(x, sigma, evaluation=0, step=0):
    return 0.7 * x + 0.1 * torch.tanh(x) + 0.05 * float(sigma)


def hand_heun(x, sigmas):
    """Section 6 of the reference, written out."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - toy_denoiser(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - toy_denoiser(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


def release_heun(denoise, x, sigmas, callback=None):
    """The release's Heun over denoise(x, sigma, evaluation, step), as sample() runs it."""
    return run_solver(solvers.heun, denoise, x, sigmas, callback, evaluations_for(len(sigmas) - 1))


def test_heun_matches_a_hand_written_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sigmas = get_sigmas_karras(5).double()
    events = []
    out = release_heun(toy_denoiser, x.clone(), sigmas, callback=events.append)
    assert torch.allclose(out, hand_heun(x.clone(), sigmas), atol=1e-12)
    assert len(events) == evaluations_for(5) == 9
    assert [e.evaluation for e in events] == list(range(9))
    assert all(isinstance(e, EvaluationDone) and e.evaluations == 9 for e in events)


def test_a_raising_callback_stops_the_loop():
    calls = []

    def denoise(x, sigma, evaluation, step):
        calls.append(evaluation)
        return x * 0

    def stop_at_third(event):
        if event.evaluation == 2:
            raise SamplingCancelled("user")

    with pytest.raises(SamplingCancelled):
        release_heun(denoise, torch.zeros(1, 3, 4, 4), get_sigmas_karras(10), callback=stop_at_third)
    assert calls == [0, 1, 2]
