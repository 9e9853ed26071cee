"""Inf-DiT Upscale's sampling inputs (solver widget, SAMPLER, SIGMAS, denoise, colour fix) turned into
the core's keywords, plus the number of network evaluations the progress bar counts."""
from __future__ import annotations

from dataclasses import dataclass

from . import comfy_adapter as comfy
from .core import (
    COLOR_FIXES, DEFAULT_SOLVER, SOLVERS, InfDiTConfig, check_sigmas, get_sigmas_karras, own_steps, solver_evaluations,
)
from .sampler_bridge import core_sampler, estimate_evaluations


@dataclass
class Sampling:
    options: dict  # keywords for the core's upscale_image: sampler, sigmas, denoise, color_fix, evaluations
    evaluations: int  # expected network evaluations per image (exact for the built-in solvers)
    label: str  # what runs, for logs: "heun", "ComfyUI dpmpp_2m_sde", ...


def sampling(config, steps: int, sampler=None, sigmas=None, solver: str = DEFAULT_SOLVER, denoise: float = 1.0,
             color_fix: str = "none") -> Sampling:
    """`steps` already resolved (0 = the model's own is the caller's job); one-line ValueError on bad input."""
    if solver not in SOLVERS:
        raise ValueError(f"Inf-DiT Upscale: unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if color_fix not in COLOR_FIXES:
        raise ValueError(f"Inf-DiT Upscale: unknown color_fix {color_fix!r}; choose one of {', '.join(COLOR_FIXES)}")
    if sigmas is not None and denoise != 1:
        raise ValueError(f"Inf-DiT Upscale: denoise is {denoise} but a SIGMAS input is connected, which sets where "
                         f"sampling starts; set denoise to 1 (for a partial run wire only the tail of the sigmas, "
                         f"e.g. SplitSigmas' low_sigmas)")
    if sigmas is not None:
        try:
            schedule = check_sigmas(sigmas)
        except ValueError as e:
            raise ValueError(f"Inf-DiT Upscale: the SIGMAS input is not usable: {e}") from None
        steps = len(schedule) - 1
    else:
        schedule = None  # the core builds the Karras schedule; only its length matters for built-ins

    if sampler is None:
        return Sampling(dict(sampler=solver, sigmas=sigmas, denoise=denoise, color_fix=color_fix),
                        solver_evaluations(solver, max(steps, 1)), solver)

    model_sampling = comfy.edm_model_sampling(config.sigma_min, config.sigma_max, config.sigma_data)
    run, function, extra_options, name = core_sampler(sampler, model_sampling)
    if schedule is None:  # what the core will use: a counting fallback needs the real noise levels
        schedule = get_sigmas_karras(int(steps / denoise), config.sigma_min, config.sigma_max)[-(steps + 1):]
    evaluations = estimate_evaluations(name, function, extra_options, schedule)
    return Sampling(dict(sampler=run, sigmas=sigmas, denoise=denoise, color_fix=color_fix, evaluations=evaluations),
                    evaluations, f"ComfyUI {name}")


def evaluations_query(query: dict) -> dict:
    """Answer of GET /inf_dit/evaluations: the network evaluations Inf-DiT Upscale's settings run, which web/
    shows on the node while its widgets change. steps 0 is answered for the released weights (the node
    cannot know the model before it runs; after a run it shows the real count). `sampler`/`sigmas` = "1"
    when that input is wired: the count is then theirs."""
    solver = query.get("solver") or DEFAULT_SOLVER
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    try:
        steps = int(query.get("steps") or 0)
    except ValueError:
        raise ValueError(f"steps must be a whole number, got {query.get('steps')!r}") from None
    if steps < 0:
        raise ValueError(f"steps must be 0 or more, got {steps}")
    if query.get("sampler") == "1":
        return {"evaluations": None, "text": "network evaluations: as many as the wired SAMPLER runs"}
    if query.get("sigmas") == "1":
        return {"evaluations": None, "text": f"network evaluations: {solver} over the wired SIGMAS"}
    run_steps = steps or own_steps(solver, InfDiTConfig.released().sampler_steps)
    evaluations = solver_evaluations(solver, run_steps)
    whose = " (the released weights' own)" if not steps else ""
    return {"evaluations": evaluations, "steps": run_steps,
            "text": f"{evaluations} network evaluations a pass: {solver}, {run_steps} steps{whose}"}
