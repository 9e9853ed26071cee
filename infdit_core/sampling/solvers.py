"""Solvers for the probability-flow ODE of an EDM denoiser, as plain k-diffusion-style functions.

Every solver has the call shape of k-diffusion's (and so ComfyUI's) samplers:

    solver(model, x, sigmas, extra_args=None, callback=None, disable=None) -> x

The built-in ones also take `checkpoint` (resume.PassCheckpoint or None): they start from its `saved` state
and call its `save(step, phase, x, history, extra)` after each evaluation's update, so an interrupted run
continues with the same operations on the same values, bit for bit.

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
RELEASE_SOLVER = "heun"  # the release's sampler: with the model's own 20 steps, exact to the reference
# What runs when nothing is set. Chosen by `benchmarks/solvers.py --released` (docs/samplers.md): at 13
# evaluations ipndm is at least as close to the exact ODE solution as the release's Heun with 39 on every
# model measured; ipndm_v is closer on most but not on the demo model.
DEFAULT_SOLVER = "ipndm"
DEFAULT_EVALUATIONS = 13


def own_steps(sampler, model_steps: int) -> int:
    """Steps when the caller sets none (steps None, the node's 0): the model's own. `model_steps` is the
    model's stored Heun steps (`config.sampler_steps`: 20 for the released model, 39 evaluations); every
    sampler takes that count, but the default solver, which takes as many evaluations as that Heun run
    and at most 13 (13 for the released model, the demo model's 1 for the demo model)."""
    if sampler == DEFAULT_SOLVER:
        return min(DEFAULT_EVALUATIONS, evaluations_for(RELEASE_SOLVER, model_steps))
    return model_steps


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


def evaluations_before(sampler_name: str, step: int, phase: int) -> int:
    """Network evaluations a built-in solver has finished when it is at `step`, `phase` (see _start)."""
    return 2 * step + phase if sampler_name in ("heun", "dpm_2") else step


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


def _start(checkpoint, x):
    """(step, phase, history, extra) to start from: a resumed run's, with its sample copied into x; else the
    beginning. Phase 1: a two-evaluation solver after its step's first evaluation (history = [d])."""
    saved = checkpoint.saved if checkpoint is not None else None
    if saved is None:
        return 0, 0, [], {}
    checkpoint.saved = None  # not held through the run: it is a full-size image
    x.copy_(saved.x)
    return saved.step, saved.phase, [d.to(x) for d in saved.history], dict(saved.extra)


def _save(checkpoint, step, phase, x, history=(), extra=None):
    if checkpoint is not None:
        checkpoint.save(step, phase, x, list(history), extra)


def _first_derivative(model, x, sigma, sigma_next, i, extra_args, callback, checkpoint, resumed=None):
    """(denoised, d) at the start of step i of a two-evaluation solver: a resumed run's saved d, or from the
    model, saved as phase 1 when the step's second evaluation follows."""
    if resumed is not None:
        return None, resumed
    denoised = _owned(model(x, sigma, **extra_args), x)
    _report(callback, i, x, sigma, denoised)
    d = _derivative_(x, denoised, sigma)
    if sigma_next > 0:
        _save(checkpoint, i, 1, x, [d])
    return denoised, d


def _derivative_(x, denoised, sigma):
    """(x - denoised) / sigma, written over `denoised`."""
    return torch.sub(x, denoised, out=denoised).div_(sigma)


def euler(model, x, sigmas, extra_args=None, callback=None, disable=None, checkpoint=None):
    """First order: x += (sigma_next - sigma) * d."""
    extra_args = extra_args or {}
    first, _, _, _ = _start(checkpoint, x)
    for i in range(first, len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        x.add_(_derivative_(x, denoised, sigma).mul_(sigma_next - sigma))
        del denoised  # not held through the next evaluation
        _save(checkpoint, i + 1, 0, x)
    return x


def heun(model, x, sigmas, extra_args=None, callback=None, disable=None, checkpoint=None):
    """Heun's 2nd-order method without churn (EDM Algorithm 1), Euler for the last step: the release's.
    In place, with the release's operations in the release's order, so bit for bit its result."""
    extra_args = extra_args or {}
    first, phase, saved_d, _ = _start(checkpoint, x)
    for i in range(first, len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        h = sigma_next - sigma
        resumed = saved_d.pop() if i == first and phase == 1 else None  # not held after its step
        denoised, d = _first_derivative(model, x, sigma, sigma_next, i, extra_args, callback, checkpoint, resumed)
        if sigma_next > 0:
            x_next = torch.mul(d, h).add_(x)  # x + h d
            d_next = _derivative_(x_next, _owned(model(x_next, sigma_next, **extra_args), x_next), sigma_next)
            del x_next
            x.add_(d.add_(d_next).mul_(h).div_(2))  # x + h (d + d_next) / 2
            del d_next
        else:
            x.add_(d.mul_(h))
        del denoised, d  # not held through the next evaluation
        _save(checkpoint, i + 1, 0, x)
    return x


def dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, checkpoint=None):
    """DPM-Solver-2 (Karras et al.'s variant): the derivative taken at the log-midpoint of the step."""
    extra_args = extra_args or {}
    first, phase, saved_d, _ = _start(checkpoint, x)
    for i in range(first, len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        resumed = saved_d.pop() if i == first and phase == 1 else None  # not held after its step
        denoised, d = _first_derivative(model, x, sigma, sigma_next, i, extra_args, callback, checkpoint, resumed)
        if sigma_next > 0:
            sigma_mid = ((sigma.log() + sigma_next.log()) / 2).exp()
            x_mid = d.mul_(sigma_mid - sigma).add_(x)  # d is not needed after the midpoint
            d = _derivative_(x_mid, _owned(model(x_mid, sigma_mid, **extra_args), x_mid), sigma_mid)
            del x_mid
        x.add_(d.mul_(sigma_next - sigma))
        del denoised, d  # not held through the next evaluation
        _save(checkpoint, i + 1, 0, x)
    return x


def dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, checkpoint=None):
    """DPM-Solver++(2M) (Lu et al. 2022): exponential integrator in lambda = -log sigma on the data
    prediction, second order from the previous step's estimate; first order on the first and last step."""
    extra_args = extra_args or {}
    first, _, history, extra = _start(checkpoint, x)
    old_denoised = history[0] if history else None
    h_last = torch.tensor(extra["h_last"], dtype=sigmas.dtype, device=sigmas.device) if "h_last" in extra else None
    for i in range(first, len(sigmas) - 1):
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
        _save(checkpoint, i + 1, 0, x, [old_denoised], {"h_last": float(h_last)})
    return x


# The three multistep solvers below give what ComfyUI's functions of the same name give on the same denoiser
# and sigmas (comfy/k_diffusion/sampling.py: sample_ipndm, sample_ipndm_v, sample_deis), written here from
# the methods' formulas: each warms up from first order, keeps up to three past derivatives, and takes the
# step to sigma 0 as ComfyUI does (first order: it lands on the denoised estimate).

# Adams-Bashforth weights for equal steps, newest derivative first (orders 1-4).
_AB_EQUAL = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _multistep(model, x, sigmas, extra_args, callback, max_order, weights, checkpoint=None):
    """x += sum(w_j * d_j) over the newest derivatives, w = weights(i, levels, order) (newest first)."""
    extra_args = extra_args or {}
    levels = [float(s) for s in sigmas.detach().cpu().double()]  # float64 on the host: MPS and Arc have none
    first, _, history, _ = _start(checkpoint, x)  # history: derivatives of previous steps, newest first
    for i in range(first, len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = _owned(model(x, sigma, **extra_args), x)
        _report(callback, i, x, sigma, denoised)
        ds = [_derivative_(x, denoised, sigma), *history][:max_order]
        order = 1 if levels[i + 1] == 0 else len(ds)  # the last step: first order, onto the estimate
        for w, dj in zip(weights(i, levels, order), ds[:order]):
            x.add_(dj, alpha=w)
        history = ds[: max_order - 1]
        del denoised, ds, dj  # only the history is held through the next evaluation
        _save(checkpoint, i + 1, 0, x, history)
    return x


def _ipndm_weights(i, levels, order):
    h = levels[i + 1] - levels[i]
    return [h * w for w in _AB_EQUAL[order - 1]]


def ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, checkpoint=None):
    """Improved PNDM (Zhang & Chen 2022), as ComfyUI's ipndm: 4th-order Adams-Bashforth on dx/dsigma with
    the weights of equal steps, warming up from 1st order."""
    return _multistep(model, x, sigmas, extra_args, callback, 4, _ipndm_weights, checkpoint)


def _ipndm_v_weights(i, levels, order):
    """iPNDM's coefficients for uneven steps (h_n the step, h_n_k the earlier ones), as ComfyUI's ipndm_v."""
    t = levels
    h = t[i + 1] - t[i]
    if order == 1:
        return [h]
    h1 = t[i] - t[i - 1]
    r = h / h1
    if order == 2:
        return [h * (2 + r) / 2, h * -r / 2]
    h2 = t[i - 1] - t[i - 2]
    a = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [h * ((2 + r) / 2 + a), h * (-r / 2 - (1 + h1 / h2) * a), h * a * h1 / h2]
    h3 = t[i - 2] - t[i - 3]
    b = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) \
        * (h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [h * ((2 + r) / 2 + a + b),
            h * (-r / 2 - (1 + h1 / h2) * a - (1 + h1 / h2 + q) * b),
            h * (a * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * b),
            h * -b * q * h1 / h2]


def ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, checkpoint=None):
    """iPNDM for uneven steps, as ComfyUI's ipndm_v: 4th-order multistep whose coefficients follow the
    actual step sizes."""
    return _multistep(model, x, sigmas, extra_args, callback, 4, _ipndm_v_weights, checkpoint)


# DEIS "tAB" as ComfyUI runs it: sigmas mapped to the time of a VP diffusion (epsilon 1e-3, sigma range
# 0.002..80), the derivative extrapolated by the polynomial through the last points in that time, and
# its product with dsigma/dt integrated numerically (10,000 points a step).
_DEIS_POINTS = 10_000


def _vp_time(sigmas: torch.Tensor):
    """VP time of each EDM sigma (float32, as ComfyUI computes it), and the schedule's beta_0, beta_1."""
    eps, smin, smax = 1e-3, torch.tensor(0.002), torch.tensor(80.0)
    beta_d = 2 * (torch.log(smin**2 + 1) / eps - torch.log(smax**2 + 1)) / (eps - 1)
    beta_min = torch.log(smax**2 + 1) - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * (sigmas.float().cpu() ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def _deis_weights(i, levels, order):
    """The integral over step i of dsigma/dt times each Lagrange basis polynomial through the last `order`
    VP times, in float32 as ComfyUI sums it (float64 would differ from it by up to 1e-3 relative)."""
    if order == 1:
        return [levels[i + 1] - levels[i]]
    t, beta_0, beta_1 = _vp_time(torch.tensor(levels, dtype=torch.float32))
    taus = torch.linspace(float(t[i]), float(t[i + 1]), _DEIS_POINTS)
    alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
    dsigma_dtau = -0.5 * (-taus * (beta_1 - beta_0) - beta_0) / torch.sqrt(alpha * (1 - alpha))
    nodes = t[[i - k for k in range(order)]]
    weights = []
    for j in range(order):
        basis = 1
        for k in range(order):
            if k != j:
                basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
        weights.append(float(torch.sum(dsigma_dtau * basis) * ((t[i + 1] - t[i]) / _DEIS_POINTS)))
    return weights


def deis(model, x, sigmas, extra_args=None, callback=None, disable=None, checkpoint=None):
    """DEIS (Zhang & Chen 2022) in its "tAB" form of order 3, as ComfyUI's deis: the polynomial
    extrapolation of the derivative in the time of a VP diffusion, integrated against dsigma/dt."""
    return _multistep(model, x, sigmas, extra_args, callback, 3, _deis_weights, checkpoint)


def check_sigmas(sigmas) -> torch.Tensor:
    """A 1-D float tensor, finite, >= 0, strictly descending, ending in 0: else a one-line ValueError."""
    if not isinstance(sigmas, torch.Tensor):
        raise ValueError(f"sigmas must be a 1-D tensor of noise levels ending in 0, got {type(sigmas).__name__}")
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 entries (noise levels, then 0), got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().cpu().double()  # on the host: MPS and Arc have no float64
    if not torch.isfinite(s).all():
        raise ValueError("sigmas contains NaN or infinite values")
    if (s < 0).any():
        raise ValueError(f"sigmas must not be negative, got {s.min().item():g}")
    if s[-1] != 0:
        raise ValueError(f"sigmas must end in 0 (the clean image), got last entry {s[-1].item():g}: append a 0")
    if not (s[1:] < s[:-1]).all():
        raise ValueError("sigmas must be strictly descending (largest noise level first, then down to 0)")
    return sigmas

