"""How a run walks the blocks: one small frozen object that the node, the CLI and the batch runner build once
and planning, the memory estimate and sampling take, instead of the same keywords passed along five
signatures."""
from __future__ import annotations

from dataclasses import dataclass

from .scheduler import SCANS

IMAGE_PLACES = ("auto", "device", "host")


@dataclass(frozen=True)
class BlockOptions:
    """block_batch: blocks per network pass, "auto" (the fastest that fits `memory_budget`) or >= 1;
    memory_budget: bytes "auto" may plan for (None: the device's free memory, read when planning);
    offload_frontier: cached keys/values in host memory; float8_frontier: stored as float8 e4m3;
    scan: "auto" (along the longer side), "rows" or "columns"; images: where the full-size images live,
    "auto" (on the host when they would not fit the device), "device" or "host"."""

    block_batch: int | str = "auto"
    memory_budget: int | None = None
    offload_frontier: bool = False
    float8_frontier: bool = False
    scan: str = "auto"
    images: str = "auto"

    def __post_init__(self):
        n = self.block_batch
        if isinstance(n, bool) or not (n == "auto" or (isinstance(n, int) and n >= 1)):
            raise ValueError(f"block_batch must be 'auto' or an integer >= 1, got {n!r}")
        if self.images not in IMAGE_PLACES:
            raise ValueError(f"images must be one of {', '.join(IMAGE_PLACES)}, got {self.images!r}")
        if self.scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {self.scan!r}")

    @property
    def images_on_host(self) -> bool:
        return self.images == "host"
