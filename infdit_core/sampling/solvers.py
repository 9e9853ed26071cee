"""Solvers for the probability-flow ODE of an EDM denoiser, as plain k-diffusion-style functions.

Every solver has the call shape of k-diffusion's (and so ComfyUI's) samplers:

    solver(model, x, sigmas, extra_args=None, callback=None, disable=None) -> x

`model(x, sigma, **extra_args)` returns the denoised estimate D(x; sigma); `sigmas` is a descending
1-D tensor ending in 0; `callback(dict(i=, denoised=, x=, sigma=, sigma_hat=))` is called once per
step, after its first evaluation and before x moves (where k-diffusion calls it). With x not scaled
(EDM/VE form) the ODE is dx/dsigma = (x - D(x; sigma)) / sigma.

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


def step_of(sampler_name: str, evaluation: int, steps: int) -> int:
    """0-based step that a built-in solver's `evaluation` (0-based) belongs to."""
    if sampler_name in ("heun", "dpm_2"):
        return min(evaluation // 2, steps - 1)
    return min(evaluation, steps - 1)


def _report(callback, i, x, sigma, denoised):
    """k-diffusion's per-step callback: after the step's first evaluation, before x is updated.
    `denoised` is valid during the call only (it is then turned into the derivative in place)."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


# The solvers below update x in place and turn each denoised estimate into its derivative in place,
# so they hold the fewest full-size images their method needs (memory.SOLVER_IMAGE_BUFFERS counts them; a
# 16K output is 3 GiB per image in float32). x is the solver's own: callers pass a buffer they give up.


def _owned(denoised, x):
    """The denoiser's output as a buffer the solver may overwrite: a fresh float tensor like x."""
    if denoised.dtype != x.dtype or denoised.device != x.device:
        return denoised.to(x)
    if denoised.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        return denoised.clone()  # a denoiser that returned (a view of) its input
    return denoised


def _derivative_(x, denoised, sigma):
    """(x - denoised) / sigma, written over `denoised`."""
    return torch.sub(x, denoised, out=denoised).div_(sigma)


def euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """First order: x += (sigma_next - sigma) * d."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        x.add_(_derivative_(x, denoised, sigma).mul_(sigma_next - sigma))
        del denoised  # not held through the next evaluation
    return x


def heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun's 2nd-order method without churn (EDM Algorithm 1), Euler for the last step: the release's.
    In place, with the release's operations in the release's order, so bit for bit its result."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        h = sigma_next - sigma
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        d = _derivative_(x, denoised, sigma)
        if sigma_next > 0:
            x_next = torch.mul(d, h).add_(x)  # x + h d
            d_next = _derivative_(x_next, _owned(model(x_next, sigma_next, **extra_args), x_next), sigma_next)
            del x_next
            x.add_(d.add_(d_next).mul_(h).div_(2))  # x + h (d + d_next) / 2
            del d_next
        else:
            x.add_(d.mul_(h))
        del denoised, d  # not held through the next evaluation
    return x


def dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver-2 (Karras et al.'s variant): the derivative taken at the log-midpoint of the step."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        d = _derivative_(x, denoised, sigma)
        if sigma_next > 0:
            sigma_mid = ((sigma.log() + sigma_next.log()) / 2).exp()
            x_mid = d.mul_(sigma_mid - sigma).add_(x)  # d is not needed after the midpoint
            d = _derivative_(x_mid, _owned(model(x_mid, sigma_mid, **extra_args), x_mid), sigma_mid)
            del x_mid
        x.add_(d.mul_(sigma_next - sigma))
        del denoised, d  # not held through the next evaluation
    return x


def dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022): exponential integrator in lambda = -log sigma on the data
    prediction, second order from the previous step's estimate; first order on the first and last step."""
    extra_args = extra_args or {}
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            return denoised  # the step to sigma 0 lands on the data estimate
        h = sigma.log() - sigma_next.log()
        x.mul_(sigma_next / sigma)
        if old_denoised is None:
            x.sub_(denoised, alpha=float(torch.expm1(-h)))
        else:
            c = float(1 / (2 * (h_last / h)))
            # (1 + c) denoised - c old, written over the old estimate, which is not needed after
            estimate = old_denoised.mul_(-c).add_(denoised, alpha=1 + c)
            x.sub_(estimate, alpha=float(torch.expm1(-h)))
            del estimate
        h_last, old_denoised = h, denoised
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
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        ds = [_derivative_(x, denoised, sigma), *history]
        h = float(sigma_next - sigma)
        for w, dj in zip(_AB_EQUAL[len(ds) - 1], ds):
            x.add_(dj, alpha=h * w)
        history = ds[:3]
        del denoised, ds, dj  # only the history is held through the next evaluation
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
        sigma = sigmas[i]
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        points = [(levels[i], _derivative_(x, denoised, sigma)), *history][:max_order]
        weights = adams_bashforth_weights([s for s, _ in points], levels[i + 1])
        for w, (_, dj) in zip(weights, points):
            x.add_(dj, alpha=w)
        history = points[: max_order - 1]
        del denoised, points, dj  # only the history is held through the next evaluation
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

