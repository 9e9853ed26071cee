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


@lru_cache(maxsize=1024)
def plan_stats(rows: int, cols: int, block_batch: int, scan: str = "auto") -> PlanStats:
    """`plan_blocks(rows, cols, block_batch, scan)`'s figures in closed form per group (arithmetic on arrays of
    group numbers): a 512 x 512 grid (a 64K output) in milliseconds instead of seconds of Python per block.
    tests/core/test_scheduler.py compares every figure with the listed plan on many grids.

    A column scan is a row scan of the transposed grid (top and left swap roles, the top-left stays), so
    only the row scan is worked out: W blocks a line, H lines, position p = row * W + col. Block p is
    read by p + 1 (right), p + W (below) and p + W + 1 (below-right) where those exist; the border clamp
    only repeats one of these."""
    if rows < 1 or cols < 1 or block_batch < 1:
        raise ValueError(f"need a grid of at least 1x1 and block_batch >= 1, got {rows}x{cols}, {block_batch}")
    scan = resolve_scan(rows, cols, scan)
    lines, width = (rows, cols) if scan == "rows" else (cols, rows)
    total = lines * width
    n = min(block_batch, total)
    groups = -(-total // n)
    return PlanStats(groups, n, _frontier_span(lines, width, n, groups), _cached_reads(width, n, groups, total))


def _frontier_span(lines: int, width: int, n: int, groups: int) -> int:
    """Kept after group g (not the last): blocks p < T = (g + 1) n whose last reader lies at or past T. Every
    block of the lines but the last is last read by p + W + 1 (p + W at a line's end), so the first kept
    block is T - W - 1, or T - W when that one ends a line, or 0; the last is T - 1."""
    if groups == 1:
        return 1
    if lines == 1:  # one line: each block is last read by the next one
        return 1
    ends = n * np.arange(1, groups, dtype=np.int64)  # T for every group but the last
    first = ends - width - 1
    first = np.where(first < 0, 0, first + (first % width == width - 1))
    return max(1, int((ends - first).max()))


def _cached_reads(width: int, n: int, groups: int, total: int) -> int:
    """Most distinct cached blocks one group [a, b] reads: those whose reader lies in the group. From below:
    [a - W, b - W] (clipped to before a); from below-right: that interval shifted by one, which adds at
    most a - W - 1 (not when it ends a line); from the right: a - 1 (not when a starts a line), unless
    already counted."""
    a = n * np.arange(groups, dtype=np.int64)
    b = np.minimum(a + n, total) - 1
    lo, hi = np.maximum(a - width, 0), np.minimum(a - 1, b - width)
    below = np.maximum(hi - lo + 1, 0)
    q = a - width - 1  # the below-right reader's extra block
    extra = (q >= 0) & (q <= np.minimum(a - 1, b - width - 1)) & (q % width != width - 1)
    left = a - 1
    in_below = (left >= lo) & (left <= hi)
    in_below_right = (left >= a - width - 1) & (left <= b - width - 1) & (left % width != width - 1)
    right = (a >= 1) & (a % width != 0) & ~in_below & ~in_below_right
    return int((below + extra + right).max())
