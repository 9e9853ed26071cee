"""One network evaluation over the whole image, computed group by group with a frontier cache.

Equal to the whole-image forward (`InfDiT.forward`) up to float summation order: each group runs
through all layers at once, reading its neighbours' keys/values from the group itself or from the
cache, and the cache drops every block that no later group reads.
"""
from __future__ import annotations

import torch

from .attention import KeyValueStore
from .sampler import BlockGroupDone
from .scheduler import BlockPlan


def full_size_like(x: torch.Tensor, compute_device) -> torch.Tensor:
    """An empty full-size image next to x; pinned when x is on the host and the compute device is CUDA,
    so the blocks copied to and from it move asynchronously."""
    pin = x.device.type == "cpu" and torch.device(compute_device).type == "cuda"
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, pin_memory=pin)


class BlockwiseDenoiser:
    """D(x; sigma) for fixed conditioning (u, lr, CLIP vector), evaluated block group by block group."""

    def __init__(self, model, u, lr, vector, plan: BlockPlan, offload_frontier: bool = False, callback=None,
                 float8_frontier: bool = False):
        self.model, self.u, self.lr, self.vector = model, u, lr, vector
        self.plan = plan
        self.storage = torch.device("cpu") if offload_frontier else None
        self.float8 = float8_frontier
        self.callback = callback
        self.evaluations = 0
        self.steps = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, evaluation: int = 0, step: int = 0) -> torch.Tensor:
        model, plan = self.model, self.plan
        bs = model.config.block_size
        sigma = torch.as_tensor(sigma)  # one level (0-d), or one per image (B,) as k-diffusion samplers pass
        cond = model.condition(sigma.reshape(-1).expand(x.shape[0]).to(model.device), self.vector)
        kv = KeyValueStore(
            len(model.layers), keep=len(plan.groups) > 1, storage_device=self.storage, grid=plan.grid, scan=plan.scan,
            slots=plan.frontier_span(), float8=self.float8,
        )
        out = full_size_like(x, model.device)  # where x lives: the device, or the host for huge outputs
        try:
            for g, (blocks, release) in enumerate(zip(plan.groups, plan.release_after)):
                denoised = model.forward_blocks(x, self.u, self.lr, cond, list(blocks), kv)  # (B, n, 3, bs, bs)
                for i, (r, c) in enumerate(blocks):
                    out[:, :, r * bs:(r + 1) * bs, c * bs:(c + 1) * bs] = denoised[:, i]
                kv.release(release)
                if self.callback is not None:
                    self.callback(
                        BlockGroupDone(
                            evaluation, self.evaluations, step, self.steps, float(sigma.reshape(-1)[0]), g, len(plan.groups),
                            list(blocks), plan.grid, denoised.transpose(1, 2),
                        )
                    )
        finally:
            kv.clear()  # also on cancel or error: nothing of this evaluation stays in memory
        return out
