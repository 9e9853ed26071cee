"""Follows the core's BlockGroupDone events: progress value, the block-grid message for web/, and a small
preview image assembled from the denoised estimates of the finished blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

PREVIEW_SIDE = 512  # longest side of the preview picture, pixels
EVENT = "inf_dit.blocks"  # websocket event name web/ listens to


class BlockTracker:
    """State of one image's run. `plan` is the core's BlockPlan (the same one the sampler follows)."""

    def __init__(self, plan, out_h: int, out_w: int, block_size: int, evaluations: int, image: int = 0, images: int = 1):
        self.plan, self.evaluations, self.image, self.images = plan, evaluations, image, images
        self.rows, self.cols = plan.grid
        self.groups = len(plan.groups)
        self.cell = max(4, min(block_size, PREVIEW_SIDE // max(self.rows, self.cols)))
        # Grey until a block is done; cropped to the real (unpadded) output on the way out.
        self.canvas = torch.full((3, self.rows * self.cell, self.cols * self.cell), 0.5)
        self.crop = (max(1, round(out_h * self.cell / block_size)), max(1, round(out_w * self.cell / block_size)))
        self.steps_done = 0

    @property
    def total(self) -> int:
        # A ComfyUI SAMPLER's evaluation count is an estimate: if it runs longer, the bar grows, never overflows.
        return max(self.evaluations * self.groups, self.steps_done)

    def on_group(self, event) -> dict:
        """Record a BlockGroupDone; returns the message for the browser."""
        self.steps_done = event.evaluation * event.groups + event.group + 1
        pixels = event.pixels[0].float().cpu()  # (3, n, bs, bs) in [-1, 1], first image of the batch
        small = F.interpolate(pixels.transpose(0, 1), size=(self.cell, self.cell), mode="area")  # (n, 3, cell, cell)
        for (r, c), block in zip(event.blocks, small):
            self.canvas[:, r * self.cell:(r + 1) * self.cell, c * self.cell:(c + 1) * self.cell] = (block + 1) / 2
        done = [list(b) for g in self.plan.groups[: event.group + 1] for b in g]
        running = [list(b) for b in self.plan.groups[event.group + 1]] if event.group + 1 < self.groups else []
        return {
            "image": self.image, "images": self.images,
            "evaluation": event.evaluation, "evaluations": event.evaluations,
            "grid": [self.rows, self.cols], "done": done, "running": running,
            "value": self.steps_done, "max": self.total,
        }

    def preview(self):
        """The preview as a PIL image (what ComfyUI's progress bar shows on the node)."""
        from PIL import Image

        pic = self.canvas[:, : self.crop[0], : self.crop[1]].clamp(0, 1)
        return Image.fromarray((pic.movedim(0, -1) * 255).round().to(torch.uint8).numpy())
