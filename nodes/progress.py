"""Follows the core's BlockGroupDone events: progress value, the block-grid message for web/, and a small
preview image assembled from the denoised estimates of the finished blocks.

The preview is assembled where the blocks are (on the GPU: no copy, no sync per group) and copied to the
host at most PREVIEWS_PER_SECOND times; the message to the browser carries only the group just done and
the next one, never the whole done-list (web/ keeps the grid)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

PREVIEW_SIDE = 512  # longest side of the preview picture, pixels
PREVIEWS_PER_SECOND = 4  # ComfyUI shows the latest one; more only costs copies and JPEG encodes
EVENT = "inf_dit.blocks"  # websocket event name web/ listens to


def preview_cell(block_size: int, blocks_across: int) -> int:
    """Pixels per block in the preview: the largest divisor of the block size that keeps the preview within
    PREVIEW_SIDE (at least 4 px where the block allows). A divisor makes the area resize an exact average of
    whole pixel squares, which every backend runs (MPS's needs sizes that divide: 640, 768, 1280 px outputs
    crashed it)."""
    target = max(min(4, block_size), PREVIEW_SIDE // blocks_across)
    return max(d for d in range(1, block_size + 1) if block_size % d == 0 and d <= target)


class BlockTracker:
    """State of one image's run. `plan` is the core's BlockPlan (the same one the sampler follows)."""

    def __init__(self, plan, out_h: int, out_w: int, block_size: int, evaluations: int, image: int = 0, images: int = 1):
        self.plan, self.evaluations, self.image, self.images = plan, evaluations, image, images
        self.rows, self.cols = plan.grid
        self.groups = len(plan.groups)
        self.cell = preview_cell(block_size, max(self.rows, self.cols))
        # Grey until a block is done; cropped to the real (unpadded) output on the way out. Made on the
        # device of the first blocks.
        self.canvas = None
        self.last_preview = float("-inf")
        self.crop = (max(1, round(out_h * self.cell / block_size)), max(1, round(out_w * self.cell / block_size)))
        self.steps_done = 0

    @property
    def total(self) -> int:
        # A ComfyUI SAMPLER's evaluation count is an estimate: if it runs longer, the bar grows, never overflows.
        return max(self.evaluations * self.groups, self.steps_done)

    def on_group(self, event) -> dict:
        """Record a BlockGroupDone; returns the message for the browser (only what changed)."""
        self.steps_done = event.evaluation * event.groups + event.group + 1
        pixels = event.pixels[0]  # (3, n, bs, bs) in [-1, 1], first image of the batch, where the model left it
        if self.canvas is None:
            self.canvas = torch.full((3, self.rows * self.cell, self.cols * self.cell), 0.5, device=pixels.device)
        small = F.interpolate(pixels.float().transpose(0, 1), size=(self.cell, self.cell), mode="area")
        for (r, c), block in zip(event.blocks, small):
            self.canvas[:, r * self.cell:(r + 1) * self.cell, c * self.cell:(c + 1) * self.cell] = (block + 1) / 2
        running = [list(b) for b in self.plan.groups[event.group + 1]] if event.group + 1 < self.groups else []
        return {
            "image": self.image, "images": self.images,
            "evaluation": event.evaluation, "evaluations": event.evaluations,
            "grid": [self.rows, self.cols], "group": event.group, "groups": self.groups,
            "done": [list(b) for b in event.blocks], "running": running,
            "value": self.steps_done, "max": self.total,
        }

    def preview_if_due(self):
        """The preview (a PIL image) at most PREVIEWS_PER_SECOND times a second and at the last group, else None."""
        now = time.monotonic()
        last = self.steps_done >= self.total
        if self.canvas is None or (now - self.last_preview < 1 / PREVIEWS_PER_SECOND and not last):
            return None
        self.last_preview = now
        return self.preview()

    def preview(self):
        """The preview as a PIL image (what ComfyUI's progress bar shows on the node)."""
        from PIL import Image

        pic = self.canvas[:, : self.crop[0], : self.crop[1]].clamp(0, 1).cpu()
        return Image.fromarray((pic.movedim(0, -1) * 255).round().to(torch.uint8).numpy())
