"""EDM/Karras noise levels and the Heun sampler of the release (section 6 of the reference).

The sampler knows nothing about blocks or UIs: `denoise(x, sigma)` is any denoiser, and `callback`
gets an `EvaluationDone` after every network evaluation; raising from it stops the run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class SamplingCancelled(Exception):
    """Raise from a callback to stop sampling (any exception does; this one says why)."""


@dataclass
class EvaluationDone:
    evaluation: int  # 0-based index of the network evaluation just finished
    evaluations: int
    step: int  # 0-based sampler step
    steps: int
    sigma: float
    pass_index: int = 0  # 0-based native pass (x4, x2) of a multi-pass run
    passes: int = 1


@dataclass
class BlockGroupDone:
    evaluation: int
    evaluations: int
    step: int
    steps: int
    sigma: float
    group: int  # 0-based index of the group within this evaluation
    groups: int
    blocks: list  # [(row, col)] of the block grid
    grid: tuple  # (rows, cols)
    pixels: torch.Tensor  # (B, 3, len(blocks), block, block): denoised estimate in [-1, 1]
    pass_index: int = 0  # 0-based native pass (x4, x2) of a multi-pass run
    passes: int = 1


def get_sigmas_karras(n: int, sigma_min: float = 0.002, sigma_max: float = 40.0, rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max down to sigma_min, then 0 appended (float32, as the reference)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def evaluations_for(steps: int) -> int:
    """Heun with an Euler last step: 2 evaluations per step but one for the last."""
    return 2 * steps - 1


def sample_heun(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """Heun's 2nd-order method without churn. denoise(x, sigma, evaluation, step) -> D(x; sigma)."""
    steps = len(sigmas) - 1
    total = evaluations_for(steps)
    evaluation = 0

    def run(x_in, sigma, step):
        nonlocal evaluation
        out = denoise(x_in, sigma, evaluation, step)
        if callback is not None:
            callback(EvaluationDone(evaluation, total, step, steps, float(sigma)))
        evaluation += 1
        return out

    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - run(x, sigma, i)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = (x_next - run(x_next, sigma_next, i)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x
