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


def hand_ipndm(x, sig):
    ds = []
    for s, t in zip(sig[:-1], sig[1:]):
        ds.insert(0, deriv(x, s))
        k = min(len(ds), 4)
        coef = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}[k]
        x = x + (t - s) * sum(c * d for c, d in zip(coef, ds))
        ds = ds[:3]
    return x


def hand_adams(order):
    """Variable-step Adams-Bashforth: integrate the polynomial through the last `order` derivatives,
    here with numpy's polyfit (an independent route to the same integral)."""

    def loop(x, sig):
        pts = []
        for s, t in zip(sig[:-1], sig[1:]):
            pts = [(s, deriv(x, s)), *pts][:order]
            if len(pts) == 1:
                x = x + (t - s) * pts[0][1]
                continue
            xs = np.array([p[0] for p in pts])
            ys = np.stack([p[1].numpy().ravel() for p in pts])
            coeffs = np.polyfit(xs, ys, len(pts) - 1)  # exact interpolation through len(pts) points
            integral = [np.polyval(np.polyint(coeffs[:, j]), t) - np.polyval(np.polyint(coeffs[:, j]), s)
                        for j in range(ys.shape[1])]
            x = x + torch.tensor(integral, dtype=x.dtype).view_as(x)
        return x

    return loop


HAND = {"euler": hand_euler, "heun": hand_heun, "dpm_2": hand_dpm_2, "dpmpp_2m": hand_dpmpp_2m,
        "ipndm": hand_ipndm, "ipndm_v": hand_adams(4), "deis": hand_adams(3)}


def test_every_solver_has_a_hand_written_twin():
    assert set(HAND) == set(solvers.SOLVERS) and solvers.SOLVERS[0] == "heun"


@pytest.mark.parametrize("name", solvers.SOLVERS)
def test_solver_matches_a_hand_written_loop(name):
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5
    sigmas = get_sigmas_karras(7, 0.002, 40.0).double()
    expected = HAND[name](x.clone(), [float(s) for s in sigmas])
    assert torch.allclose(solvers.get_solver(name)(toy, x.clone(), sigmas), expected, rtol=1e-9, atol=1e-9)


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
# Karras steps it falls to 2nd order (ipndm_v and deis keep theirs, see the next test).
ORDER = {"euler": 1, "heun": 2, "dpm_2": 2, "dpmpp_2m": 2, "ipndm": 4, "ipndm_v": 4, "deis": 3}


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


@pytest.mark.parametrize("name, order", [("heun", 2), ("dpmpp_2m", 2), ("ipndm_v", 3.4), ("deis", 2.6)])
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
