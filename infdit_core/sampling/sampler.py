"""EDM/Karras noise levels and the Heun sampler of the release (section 6 of the reference).

The sampler knows nothing about blocks or UIs: `denoise(x, sigma)` is any denoiser, and `callback`
gets an `EvaluationDone` after every network evaluation; raising from it stops the run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import solvers


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
    return solvers.evaluations_for("heun", steps)


class CountingModel:
    """The k-diffusion `model(x, sigma, **ignored)` a solver calls: runs `denoise(x, sigma, evaluation,
    step)`, counts the evaluations and reports each as an `EvaluationDone`.

    The step of an evaluation: `step_of(evaluation)` where the solver's evaluation pattern is known
    (the built-in solvers); else the number of per-step callbacks so far (`step_done`), which
    k-diffusion functions make after a step's first evaluation, so there a corrector evaluation
    counts as the next step. `evaluations` is the expected total (None = unknown: each event then
    reports the count so far)."""

    def __init__(self, denoise, steps: int, evaluations: int | None = None, callback=None, step_of=None):
        self.denoise, self.steps, self.expected, self.callback = denoise, steps, evaluations, callback
        self.step_of = step_of
        self.evaluation, self.step = 0, 0

    def total(self) -> int:
        return self.expected if self.expected is not None else self.evaluation + 1

    def __call__(self, x: torch.Tensor, sigma, **ignored) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        step = self.step_of(self.evaluation) if self.step_of is not None else min(self.step, self.steps - 1)
        out = self.denoise(x, sigma, self.evaluation, step)
        if self.callback is not None:
            self.callback(EvaluationDone(self.evaluation, self.total(), step, self.steps, float(sigma.reshape(-1)[0])))
        self.evaluation += 1
        return out

    def step_done(self, info: dict) -> None:
        self.step = int(info["i"]) + 1


def run_solver(solver, denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, evaluations=None,
               extra_args=None, step_callback=None, checkpoint=None) -> torch.Tensor:
    """Solve from x along `sigmas` with `solver` (a k-diffusion-style function) over `denoise(x, sigma,
    evaluation, step)`, reporting every network evaluation to `callback`. x is the solver's: the
    built-in solvers overwrite it. `checkpoint` (resume.PassCheckpoint): a built-in solver saves its state
    to it after each evaluation and starts from what it saved; the count of evaluations continues."""
    steps = len(sigmas) - 1
    name = getattr(solver, "__name__", None)
    builtin = name in solvers.SOLVERS and getattr(solvers, name) is solver
    step_of = (lambda e: solvers.step_of(name, e, steps)) if builtin else None
    model = CountingModel(denoise, steps, evaluations, callback, step_of)
    if not builtin:
        return solver(model, x, sigmas, extra_args=extra_args or {}, callback=_on_step(model, step_callback), disable=True)
    saved = checkpoint.saved if checkpoint is not None else None
    if saved is not None and (tuple(saved.x.shape) != tuple(x.shape) or not 0 <= saved.step <= steps):
        checkpoint.saved = None  # the identity matched but the layout does not: never continue from it
    if checkpoint is not None and checkpoint.saved is not None:
        model.evaluation = solvers.evaluations_before(name, checkpoint.saved.step, checkpoint.saved.phase)
    return solver(model, x, sigmas, extra_args=extra_args or {}, callback=_on_step(model, step_callback), disable=True,
                  checkpoint=checkpoint)


def _on_step(model: CountingModel, step_callback):
    """The solver's per-step callback: counts the step, then the caller's."""
    def on_step(info):
        model.step_done(info)
        if step_callback is not None:
            step_callback(info)

    return on_step
