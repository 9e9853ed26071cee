"""How to sample: one small frozen object that the node, the CLI and the batch runner build once, and
`run_plan` and the out-of-memory recovery take (`sample`/`upscale_image` keep their keywords as the
friendly front door)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from .solvers import DEFAULT_SOLVER


@dataclass(frozen=True)
class SamplingOptions:
    """sampler: a built-in solver's name (solvers.SOLVERS; default ipndm, "heun" = the release's) or a
    k-diffusion-style function; steps: None = the model's own (solvers.own_steps); sigmas: the noise levels (then they set the steps); denoise: in (0, 1], as KSampler's;
    color_fix: "none", "wavelet", "adain" or "lab"; seed: of the start noise (pass k uses seed + k);
    compile: torch.compile the layers; evaluations: a sampler function's expected network evaluations
    (progress only; the built-in solvers' count is exact); state_dir: where the run keeps what it needs to
    resume (None: nothing kept; see resume.py); resume: continue from a state found there (False: start
    afresh, still saving)."""

    sampler: str | Callable = DEFAULT_SOLVER
    steps: int | None = None
    sigmas: torch.Tensor | None = field(default=None, compare=False)
    denoise: float = 1.0
    color_fix: str = "none"
    seed: int = 0
    compile: bool = False
    evaluations: int | None = None
    state_dir: str | None = None
    resume: bool = True

    def keywords(self, include_state: bool = False) -> dict:
        """The keywords of `sample` these options set: all but the seed, which is per pass, and the state,
        which `run_plan` keeps (`include_state`: with it, for `upscale_image`)."""
        left_out = ("seed",) if include_state else ("seed", "state_dir", "resume")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in left_out}
