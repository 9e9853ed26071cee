"""The built-in solvers against hand-written loops, their evaluation counts and their orders."""
import math

import numpy as np
import pytest
import torch

from infdit_core import evaluations_for as heun_evaluations_for
from infdit_core import get_sigmas_karras
from infdit_core.sampling import solvers
from infdit_core.sampling.sampler import EvaluationDone, run_solver


def toy(x, sigma, **ignored):
    """A smooth nonlinear stand-in for D(x; sigma)."""
    return 0.7 * x / (1 + 0.1 * float(sigma)) + 0.1 * torch.tanh(x) + 0.05 * float(sigma)


def deriv(x, s):
    return (x - toy(x, s)) / s


def hand_euler(x, sig):
    for s, t in zip(sig[:-1], sig[1:]):
        x = x + (t - s) * deriv(x, s)
    return x


def hand_heun(x, sig):
    for s, t in zip(sig[:-1], sig[1:]):
        d = deriv(x, s)
        x1 = x + (t - s) * d
        x = x + (t - s) * (d + deriv(x1, t)) / 2 if t > 0 else x1
    return x


def hand_dpm_2(x, sig):
    for s, t in zip(sig[:-1], sig[1:]):
        d = deriv(x, s)
        if t > 0:
            mid = math.sqrt(s * t)
            x = x + (t - s) * deriv(x + (mid - s) * d, mid)
        else:
            x = x + (t - s) * d
    return x


def hand_dpmpp_2m(x, sig):
    """DPM-Solver++(2M) written with lambda = -log sigma, the data prediction and its linear extrapolation."""
    prev = None  # (lambda, denoised)
    for s, t in zip(sig[:-1], sig[1:]):
        den = toy(x, s)
        if t == 0:
            x = den
        else:
            lam, lam_next = -math.log(s), -math.log(t)
            h = lam_next - lam
            if prev is None:
                est = den
            else:
                r = (lam - prev[0]) / h
                est = den + (den - prev[1]) / (2 * r)
            x = (t / s) * x + (1 - math.exp(-h)) * est
        prev = (-math.log(s), den)
    return x


# The three multistep solvers, written from ComfyUI's published method (comfy/k_diffusion/sampling.py:
# sample_ipndm, sample_ipndm_v, sample_deis): up to three past derivatives, the step to sigma 0 is Euler's.

def hand_multistep(coefficients, keep):
    def loop(x, sig):
        past = []
        for i, (s, t) in enumerate(zip(sig[:-1], sig[1:])):
            d = deriv(x, s)
            if t == 0 or not past:
                x = x + (t - s) * d
            else:
                x = x + sum(c * dj for c, dj in zip(coefficients(sig, i, len(past) + 1), [d, *past]))
            past = [d, *past][:keep]
        return x

    return loop


def ipndm_coefficients(sig, i, order):
    h = sig[i + 1] - sig[i]
    return [h * c for c in {2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
                            4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}[order]]


def ipndm_v_coefficients(sig, i, order):
    hn = sig[i + 1] - sig[i]
    h = [hn] + [sig[i - k] - sig[i - k - 1] for k in range(order - 1)]  # h_n, h_n-1, ...
    c2 = [(2 + h[0] / h[1]) / 2, -(h[0] / h[1]) / 2]
    if order == 2:
        return [hn * c for c in c2]
    t1 = (1 - h[0] / (3 * (h[0] + h[1])) * (h[0] * (h[0] + h[1])) / (h[1] * (h[1] + h[2]))) / 2
    if order == 3:
        return [hn * c for c in (c2[0] + t1, c2[1] - (1 + h[1] / h[2]) * t1, t1 * h[1] / h[2])]
    t2 = ((1 - h[0] / (3 * (h[0] + h[1]))) / 2 + (1 - h[0] / (2 * (h[0] + h[1]))) * h[0] / (6 * sum(h[:3]))) \
        * (h[0] * (h[0] + h[1]) * sum(h[:3])) / (h[1] * (h[1] + h[2]) * sum(h[1:4]))
    ratio = h[1] * (h[1] + h[2]) / (h[2] * (h[2] + h[3]))
    return [hn * c for c in (c2[0] + t1 + t2, c2[1] - (1 + h[1] / h[2]) * t1 - (1 + h[1] / h[2] + ratio) * t2,
                             t1 * h[1] / h[2] + (h[1] / h[2] + ratio * (1 + h[2] / h[3])) * t2,
                             -t2 * ratio * h[1] / h[2])]


def deis_coefficients(sig, i, order):
    """tAB-DEIS: VP time t(sigma) (epsilon 1e-3, sigma 0.002..80), the Lagrange basis through the last
    points in t, integrated against dsigma/dt with 10,000 points over the step, summed in float32 as
    ComfyUI sums it (the sum's rounding is part of its result)."""
    f32 = torch.float32
    eps, smin, smax = 1e-3, torch.tensor(0.002, dtype=f32), torch.tensor(80.0, dtype=f32)
    bd = 2 * (torch.log(smin**2 + 1) / eps - torch.log(smax**2 + 1)) / (eps - 1)
    b0 = torch.log(smax**2 + 1) - 0.5 * bd
    b1 = bd + b0
    t = ((b0**2 + 2 * bd * torch.log(torch.tensor(sig, dtype=f32) ** 2 + 1)).sqrt() - b0) / bd
    taus = torch.linspace(float(t[i]), float(t[i + 1]), 10_000)
    alpha = torch.exp(-0.5 * taus**2 * (b1 - b0) - taus * b0)
    weight = -0.5 * (-taus * (b1 - b0) - b0) / torch.sqrt(alpha * (1 - alpha))
    nodes = [t[i - k] for k in range(order)]
    out = []
    for j, tj in enumerate(nodes):
        basis = torch.ones_like(taus)
        for k, tk in enumerate(nodes):
            if k != j:
                basis = basis * (taus - tk) / (tj - tk)
        out.append(float(torch.sum(weight * basis) * ((t[i + 1] - t[i]) / 10_000)))
    return out


HAND = {"euler": hand_euler, "heun": hand_heun, "dpm_2": hand_dpm_2, "dpmpp_2m": hand_dpmpp_2m,
        "ipndm": hand_multistep(ipndm_coefficients, 3), "ipndm_v": hand_multistep(ipndm_v_coefficients, 3),
        "deis": hand_multistep(deis_coefficients, 2)}
# deis' weights are float32 sums (as ComfyUI's), the loops around them float64
TOLERANCE = {"deis": 1e-7}


def test_every_solver_has_a_hand_written_twin():
    assert set(HAND) == set(solvers.SOLVERS) and solvers.SOLVERS[0] == "heun"


@pytest.mark.parametrize("name", solvers.SOLVERS)
def test_solver_matches_a_hand_written_loop(name):
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5
    sigmas = get_sigmas_karras(7, 0.002, 40.0).double()
    expected = HAND[name](x.clone(), [float(s) for s in sigmas])
    tol = TOLERANCE.get(name, 1e-9)
    assert torch.allclose(solvers.get_solver(name)(toy, x.clone(), sigmas), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", solvers.SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_evaluation_count_is_exact_and_reported(name, steps):
    events, infos = [], []
    sigmas = get_sigmas_karras(steps, 0.002, 40.0)
    total = solvers.evaluations_for(name, steps)
    run_solver(solvers.get_solver(name), lambda x, s, e, k: toy(x, s), torch.zeros(1, 3, 2, 2), sigmas,
               events.append, total, step_callback=infos.append)
    assert [e.evaluation for e in events] == list(range(total))
    assert all(isinstance(e, EvaluationDone) and e.evaluations == total and e.steps == steps for e in events)
    assert [i["i"] for i in infos] == list(range(steps))
    assert [e.step for e in events] == sorted(e.step for e in events) and events[-1].step == steps - 1


def test_the_heun_count_of_the_release_is_kept():
    assert heun_evaluations_for(20) == solvers.evaluations_for("heun", 20) == 39
    with pytest.raises(ValueError, match="unknown sampler 'dpm_fast'.*heun"):
        solvers.evaluations_for("dpm_fast", 3)


def gaussian_problem():
    """Data ~ N(m, sd^2) per element: D(x; sigma) is exact and so is the ODE's solution,
    x(sigma) - m = (x(sigma_0) - m) * sqrt((sd^2 + sigma^2) / (sd^2 + sigma_0^2))."""
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, dtype=torch.float64, generator=g) * 0.3
    sd = torch.rand(6, dtype=torch.float64, generator=g) * 0.5 + 0.1

    def denoise(x, sigma, **ignored):
        return m + sd**2 / (sd**2 + sigma**2) * (x - m)

    def exact(x0, s0, s1):
        return m + (x0 - m) * torch.sqrt((sd**2 + s1**2) / (sd**2 + s0**2))

    return denoise, exact


# Global order on even steps: ipndm's fixed weights are Adams-Bashforth 4 only there; on the uneven
# Karras steps it falls to 2nd order. ComfyUI's ipndm_v does not reduce to Adams-Bashforth 4 on even steps
# (its newest weight is 57/24, not 55/24): about 3rd order there; deis keeps 3rd order on both.
ORDER = {"euler": 1, "heun": 2, "dpm_2": 2, "dpmpp_2m": 2, "ipndm": 4, "ipndm_v": 3, "deis": 3}


@pytest.mark.parametrize("name", solvers.SOLVERS)
def test_error_falls_at_the_solvers_order_on_even_steps(name):
    denoise, exact = gaussian_problem()
    x0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    errors = []
    for n in (64, 128, 256):
        sigmas = torch.linspace(3.0, 0.2, n + 1, dtype=torch.float64)
        out = solvers.get_solver(name)(denoise, x0.clone(), sigmas)
        errors.append((out - exact(x0, 3.0, 0.2)).abs().max().item())
    order = math.log2(errors[1] / errors[2])
    assert ORDER[name] - 0.3 < order < ORDER[name] + 0.6, (errors, order)


@pytest.mark.parametrize("name, order", [("heun", 2), ("dpmpp_2m", 2), ("deis", 2.6)])
def test_error_falls_at_the_solvers_order_on_karras_steps(name, order):
    """The release's schedule shape (rho 7, 40 -> 0.002) without the final step to 0."""
    denoise, exact = gaussian_problem()
    x0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 40
    errors = []
    for n in (32, 64, 128):
        sigmas = get_sigmas_karras(n + 1, 0.002, 40.0).double()[:-1]
        out = solvers.get_solver(name)(denoise, x0.clone(), sigmas)
        errors.append((out - exact(x0, sigmas[0], sigmas[-1])).abs().max().item())
    assert math.log2(errors[1] / errors[2]) > order - 0.3, errors


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[1.0, 0.0]]), "1-D"),
    (torch.tensor([0.0]), "at least 2"),
    (torch.tensor([1.0, 2.0, 0.0]), "strictly descending"),
    (torch.tensor([2.0, 2.0, 0.0]), "strictly descending"),
    (torch.tensor([2.0, 1.0]), "end in 0"),
    (torch.tensor([float("nan"), 1.0, 0.0]), "NaN"),
    (torch.tensor([float("inf"), 1.0, 0.0]), "NaN or infinite"),
    (torch.tensor([1.0, -0.5, 0.0]), "negative"),
    ([2.0, 1.0, 0.0], "tensor"),
])
def test_bad_sigmas_are_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        solvers.check_sigmas(bad)
