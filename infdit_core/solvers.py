"""Solvers for the probability-flow ODE of an EDM denoiser, as plain k-diffusion-style functions.

Every solver has the call shape of k-diffusion's (and so ComfyUI's) samplers:

    solver(model, x, sigmas, extra_args=None, callback=None, disable=None) -> x

`model(x, sigma, **extra_args)` returns the denoised estimate D(x; sigma); `sigmas` is a descending
1-D tensor ending in 0; `callback(dict(i=, denoised=, x=, sigma=, sigma_hat=))` is called after each
step. With x not scaled (EDM/VE form) the ODE is dx/dsigma = (x - D(x; sigma)) / sigma.

The names are those users know from ComfyUI/k-diffusion. Each function is written from the method's
formula; a multistep solver starts at first order and raises its order as derivatives accumulate.
"""
from __future__ import annotations

import numpy as np
import torch

SOLVERS = ("heun", "euler", "dpm_2", "dpmpp_2m", "ipndm", "ipndm_v", "deis")


def evaluations_for(sampler_name: str, steps: int) -> int:
    """Network evaluations of a built-in solver for `steps` steps (sigmas ending in 0)."""
    if sampler_name not in SOLVERS:
        raise ValueError(f"unknown sampler {sampler_name!r}: choose one of {', '.join(SOLVERS)}")
    if sampler_name in ("heun", "dpm_2"):
        return 2 * steps - 1  # two per step, one for the last (to sigma 0, which is a plain Euler step)
    return steps


def get_solver(sampler_name: str):
    if sampler_name not in SOLVERS:
        raise ValueError(f"unknown sampler {sampler_name!r}: choose one of {', '.join(SOLVERS)}")
    return globals()[sampler_name]


def _report(callback, i, x, sigma, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """First order: x += (sigma_next - sigma) * d."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **extra_args)
        x = x + (sigma_next - sigma) * ((x - denoised) / sigma)
        _report(callback, i, x, sigma, denoised)
    return x


def heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun's 2nd-order method without churn (EDM Algorithm 1), Euler for the last step: the release's."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **extra_args)
        d = (x - denoised) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = (x_next - model(x_next, sigma_next, **extra_args)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
        _report(callback, i, x, sigma, denoised)
    return x


def dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver-2 (Karras et al.'s variant): the derivative taken at the log-midpoint of the step."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **extra_args)
        d = (x - denoised) / sigma
        if sigma_next > 0:
            sigma_mid = ((sigma.log() + sigma_next.log()) / 2).exp()
            x_mid = x + (sigma_mid - sigma) * d
            d_mid = (x_mid - model(x_mid, sigma_mid, **extra_args)) / sigma_mid
            x = x + (sigma_next - sigma) * d_mid
        else:
            x = x + (sigma_next - sigma) * d
        _report(callback, i, x, sigma, denoised)
    return x


def dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022): exponential integrator in lambda = -log sigma on the data
    prediction, second order from the previous step's estimate; first order on the first and last step."""
    extra_args = extra_args or {}
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **extra_args)
        if sigma_next == 0:
            x = denoised  # the step to sigma 0 lands on the data estimate
        else:
            h = sigma.log() - sigma_next.log()
            estimate = denoised
            if old_denoised is not None:
                r = h_last / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, denoised)
    return x


# Adams-Bashforth weights for equal steps, newest derivative first (orders 1-4).
_AB_EQUAL = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Improved PNDM (Zhang & Chen 2022): 4th-order Adams-Bashforth on dx/dsigma with the weights of
    equal steps (as k-diffusion's ipndm), warming up from 1st order."""
    extra_args = extra_args or {}
    history = []  # derivatives of previous steps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **extra_args)
        d = (x - denoised) / sigma
        ds = [d, *history]
        weights = _AB_EQUAL[len(ds) - 1]
        x = x + (sigma_next - sigma) * sum(w * dj for w, dj in zip(weights, ds))
        history = ds[:3]
        _report(callback, i, x, sigma, denoised)
    return x


def adams_bashforth_weights(nodes, target) -> list[float]:
    """Integral of each Lagrange basis polynomial through `nodes` (newest first) from nodes[0] to
    `target`: x_next = x + sum(w_j * d_j) integrates the polynomial through the derivatives d_j exactly."""
    start = nodes[0]
    h = target - start
    taus = [(s - start) / h for s in nodes]  # scaled so the step runs over [0, 1]
    weights = []
    for j, tj in enumerate(taus):
        basis = np.poly1d([1.0])
        for k, tk in enumerate(taus):
            if k != j:
                basis = basis * np.poly1d([1.0, -tk]) / (tj - tk)
        integral = np.polyint(basis)
        weights.append(h * float(integral(1.0) - integral(0.0)))
    return weights


def _variable_adams_bashforth(model, x, sigmas, extra_args, callback, max_order):
    extra_args = extra_args or {}
    history = []  # (sigma, derivative) of previous steps, newest first
    levels = [float(s) for s in sigmas.double()]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **extra_args)
        d = (x - denoised) / sigma
        points = [(levels[i], d), *history][:max_order]
        weights = adams_bashforth_weights([s for s, _ in points], levels[i + 1])
        x = x + sum(w * dj for w, (_, dj) in zip(weights, points))
        history = points[: max_order - 1]
        _report(callback, i, x, sigma, denoised)
    return x


def ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """iPNDM for uneven steps: 4th-order Adams-Bashforth on dx/dsigma with the weights of the actual
    step sizes (integrals of the Lagrange polynomial through the last four derivatives)."""
    return _variable_adams_bashforth(model, x, sigmas, extra_args, callback, max_order=4)


def deis(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DEIS with its polynomial ("tAB") extrapolation of order 3 (Zhang & Chen 2022). For an EDM model
    (x not scaled) its exponential integrator reduces to integrating the derivative dx/dsigma, so
    this is 3rd-order Adams-Bashforth with the weights of the actual step sizes."""
    return _variable_adams_bashforth(model, x, sigmas, extra_args, callback, max_order=3)


def check_sigmas(sigmas) -> torch.Tensor:
    """A 1-D float tensor, finite, >= 0, strictly descending, ending in 0: else a one-line ValueError."""
    if not isinstance(sigmas, torch.Tensor):
        raise ValueError(f"sigmas must be a 1-D tensor of noise levels ending in 0, got {type(sigmas).__name__}")
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 entries (noise levels, then 0), got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().double().cpu()
    if not torch.isfinite(s).all():
        raise ValueError("sigmas contains NaN or infinite values")
    if (s < 0).any():
        raise ValueError(f"sigmas must not be negative, got {s.min().item():g}")
    if s[-1] != 0:
        raise ValueError(f"sigmas must end in 0 (the clean image), got last entry {s[-1].item():g}: append a 0")
    if not (s[1:] < s[:-1]).all():
        raise ValueError("sigmas must be strictly descending (largest noise level first, then down to 0)")
    return sigmas

