"""One network evaluation over the whole image, computed group by group with a frontier cache.

Equal to the whole-image forward (`InfDiT.forward`) up to float summation order: each group runs
through all layers at once, reading its neighbours' keys/values from the group itself or from the
cache, and the cache drops every block that no later group reads.

Nothing inside the loop over groups reads a device value (a GPU never waits for the host there): the
block coordinates go to the device once per denoiser, the sigma a callback reports is read once per
evaluation, and host-held images move through pinned staging buffers with non-blocking copies.
"""
from __future__ import annotations

import torch

from ..network.frontier import KeyValueStore
from ..hardware.devices import traits
from ..hardware.host import PinnedStaging
from ..network.model import BlockGroup
from .sampler import BlockGroupDone
from ..planning.scheduler import BlockPlan


def full_size_like(x: torch.Tensor) -> torch.Tensor:
    """An empty full-size image next to x (never pinned: only each group's blocks are staged)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


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
        self._coords = None  # every block's (row, col) in scan order, on the model's device

    def _groups(self, staging):
        """The plan's groups as BlockGroups whose coordinates are slices of one device tensor."""
        if self._coords is None:
            self._coords = torch.tensor([blk for group in self.plan.groups for blk in group],
                                        device=self.model.device).reshape(-1, 2)
        start = 0
        for blocks in self.plan.groups:
            yield BlockGroup(blocks, self._coords[start:start + len(blocks)], staging)
            start += len(blocks)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, evaluation: int = 0, step: int = 0) -> torch.Tensor:
        model, plan = self.model, self.plan
        bs = model.config.block_size
        sigma = torch.as_tensor(sigma)  # one level (0-d), or one per image (B,) as k-diffusion samplers pass
        cond = model.condition(sigma.reshape(-1).expand(x.shape[0]).to(model.device), self.vector)
        level = float(sigma.reshape(-1)[0]) if self.callback is not None else 0.0  # read once per evaluation
        kv = KeyValueStore(
            len(model.layers), keep=len(plan.groups) > 1, storage_device=self.storage, grid=plan.grid, scan=plan.scan,
            slots=plan.frontier_span(), float8=self.float8,
        )
        out = full_size_like(x)  # where x lives: the device, or the host for huge outputs
        staging = PinnedStaging(model.device) if x.device.type == "cpu" and traits(model.device).pinned_memory else None
        try:
            for g, (blocks, release) in enumerate(zip(self._groups(staging), plan.release_after)):
                if staging is not None:
                    staging.next_group()
                denoised = model.forward_blocks(x, self.u, self.lr, cond, blocks, kv)  # (B, n, 3, bs, bs)
                if staging is not None:
                    staging.to_host(denoised, lambda host, blocks=list(blocks): _paste(out, host, blocks, bs))
                else:
                    _paste(out, denoised, blocks, bs)
                kv.release(release)
                if self.callback is not None:
                    self.callback(
                        BlockGroupDone(
                            evaluation, self.evaluations, step, self.steps, level, g, len(plan.groups),
                            list(blocks), plan.grid, denoised.transpose(1, 2),
                        )
                    )
            if staging is not None:
                staging.flush()
        finally:
            kv.clear()  # also on cancel or error: nothing of this evaluation stays in memory
        return out


def _paste(out: torch.Tensor, blocks_pixels: torch.Tensor, blocks, bs: int) -> None:
    """Write (B, n, 3, bs, bs) block pixels into the full-size image at their (row, col)."""
    for i, (r, c) in enumerate(blocks):
        out[:, :, r * bs:(r + 1) * bs, c * bs:(c + 1) * bs] = blocks_pixels[:, i]
