"""Block order for UniBA: which blocks are computed together and when cached keys/values can go.

Pure Python. A block (r, c) reads the keys/values of (r, c-1), (r-1, c) and (r-1, c-1) in every
layer, so any order in which those come earlier is valid. We scan along the longer side, so the blocks
still needed form one column (wide image) or one row (tall image) of the shorter side, and cut the
scan into consecutive groups of `block_batch` blocks: a block's neighbours are then either in its own
group (computed in the same layer pass) or in the cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..network.attention import Block, neighbour_blocks

SCANS = ("auto", "rows", "columns")


@dataclass(frozen=True)
class BlockPlan:
    grid: tuple[int, int]  # (rows, cols) of blocks
    scan: str  # "rows" or "columns"
    groups: tuple[tuple[Block, ...], ...]
    release_after: tuple[tuple[Block, ...], ...]  # blocks no later group reads, dropped after each group

    @property
    def block_batch(self) -> int:
        return max(len(g) for g in self.groups)

    def peak_cached_blocks(self) -> int:
        """Most blocks held in the cache at once (the frontier): those a later group still reads, after
        each group (a group's other blocks are never stored)."""
        held, peak = 0, 0
        for group, release in zip(self.groups, self.release_after):
            held += len(group) - len(release)
            peak = max(peak, held)
        return peak


    def frontier_span(self) -> int:
        """Ring slots the frontier needs: the widest span of scan positions kept after a group (stored and
        not released). A group reads its cached neighbours before it writes its own blocks (KeyValueStore),
        so only the blocks some later group reads have to be kept apart."""
        live: set[int] = set()
        position = {blk: p for p, blk in enumerate(blk for group in self.groups for blk in group)}
        span = 1
        for group, release in zip(self.groups, self.release_after):
            live.update(position[blk] for blk in group)
            live.difference_update(position[blk] for blk in release)
            if live:
                span = max(span, max(live) - min(live) + 1)
        return span


def resolve_scan(rows: int, cols: int, scan: str = "auto") -> str:
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    if scan == "auto":
        return "columns" if cols > rows else "rows"  # frontier = one line of the shorter side
    return scan


def scan_order(rows: int, cols: int, scan: str) -> list[Block]:
    if scan == "rows":
        return [(r, c) for r in range(rows) for c in range(cols)]
    return [(r, c) for c in range(cols) for r in range(rows)]


def plan_blocks(rows: int, cols: int, block_batch: int, scan: str = "auto") -> BlockPlan:
    if rows < 1 or cols < 1:
        raise ValueError(f"block grid must be at least 1x1, got {rows}x{cols}")
    if not isinstance(block_batch, int) or block_batch < 1:
        raise ValueError(f"block_batch must be an integer >= 1, got {block_batch!r}")
    scan = resolve_scan(rows, cols, scan)
    order = scan_order(rows, cols, scan)
    groups = [tuple(order[i:i + block_batch]) for i in range(0, len(order), block_batch)]
    group_of = {blk: g for g, group in enumerate(groups) for blk in group}
    last_reader = {blk: group_of[blk] for blk in order}
    for blk in order:
        for nb in neighbour_blocks(*blk):
            last_reader[nb] = max(last_reader[nb], group_of[blk])
    release = [[] for _ in groups]
    for blk in order:
        release[last_reader[blk]].append(blk)
    return BlockPlan((rows, cols), scan, tuple(groups), tuple(tuple(r) for r in release))


@dataclass(frozen=True)
class PlanStats:
    """What the memory estimate needs of a plan, computed without listing its blocks (`plan_stats`)."""

    groups: int
    block_batch: int  # the largest group
    frontier_span: int  # ring slots: BlockPlan.frontier_span()
    cached_reads: int  # most distinct cached blocks one group reads (fetched once each when offloaded)


@lru_cache(maxsize=256)
def plan_stats(rows: int, cols: int, block_batch: int, scan: str = "auto") -> PlanStats:
    """`plan_blocks(rows, cols, block_batch, scan)`'s figures in vectorised form: a 512 x 512 grid (a 64K
    output) in milliseconds instead of seconds of Python per block (tests compare both on many grids).

    Along the scan, block p is last read by the block at position L(p) (itself, or its right, lower or
    lower-right neighbour), so it is kept after groups p // n .. L(p) // n - 1. After group g the kept
    blocks end at the group's last block (it always has a later reader, unless it is the very last one)
    and begin at the first p whose last reader lies beyond the group: the first p where the running
    maximum of L // n exceeds g."""
    if rows < 1 or cols < 1 or block_batch < 1:
        raise ValueError(f"need a grid of at least 1x1 and block_batch >= 1, got {rows}x{cols}, {block_batch}")
    scan = resolve_scan(rows, cols, scan)
    total = rows * cols
    n = min(block_batch, total)
    groups = -(-total // n)
    p = np.arange(total, dtype=np.int64)
    r, c = (p // cols, p % cols) if scan == "rows" else (p % rows, p // rows)

    def position(rr, cc):
        return rr * cols + cc if scan == "rows" else cc * rows + rr

    last = p.copy()
    for dr, dc in ((0, 1), (1, 0), (1, 1)):  # readers: right, below, below-right
        inside = (r + dr < rows) & (c + dc < cols)
        last = np.where(inside, np.maximum(last, position(r + dr, c + dc)), last)
    span = 1
    if groups > 1:
        g = np.arange(groups - 1, dtype=np.int64)
        first = np.searchsorted(np.maximum.accumulate(last // n), g, side="right")
        top = np.minimum((g + 1) * n, total) - 1
        span = max(1, int((top - first + 1).max()))
    # distinct cached blocks each group reads: block q is read from the cache by every later group holding
    # one of its readers (the border clamp only repeats a neighbour another role already names)
    own = p // n
    reader_groups = []
    for dr, dc in ((0, 1), (1, 0), (1, 1)):
        inside = (r + dr < rows) & (c + dc < cols)
        reader_groups.append(np.where(inside, position(r + dr, c + dc) // n, -1))
    a, b, d = reader_groups
    counts = np.zeros(groups + 1, dtype=np.int64)
    for grp, first_time in ((a, True), (b, b != a), (d, (d != a) & (d != b))):
        hit = first_time & (grp > own)
        counts += np.bincount(grp[hit], minlength=groups + 1)
    reads = int(counts.max())
    return PlanStats(groups, n, span, reads)
