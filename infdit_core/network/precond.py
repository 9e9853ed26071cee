"""EDM preconditioning (Karras et al. 2022), shared by sampling and training.

The release uses sigma_data = 0.5 (the spread of images in [-1, 1]); a model that diffuses the small
residual y - u sets its own sigma_data in its config, so its scalings fit what it denoises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SIGMA_DATA = 0.5


@dataclass
class Scalings:
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_scalings(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> Scalings:
    """sigma (B,) -> per-sample scalings (B,)."""
    sd2 = sigma_data**2
    return Scalings(
        c_skip=sd2 / (sigma**2 + sd2),
        c_out=sigma * sigma_data / (sigma**2 + sd2).sqrt(),
        c_in=1 / (sigma**2 + sd2).sqrt(),
        c_noise=sigma.log() / 4,
    )


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
