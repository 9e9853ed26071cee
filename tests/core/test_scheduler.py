"""The block scheduler gives the whole-image forward, for any grid, block batch and scan order."""
import pytest
import torch

from conftest import TINY, lr_image, random_model
from infdit_core import BlockGroupDone, SamplingCancelled, sample
from infdit_core.network.frontier import KeyValueStore
from infdit_core.sampling.denoiser import BlockwiseDenoiser
from infdit_core.planning.scheduler import plan_blocks
from infdit_core.sampling.pipeline import upsample

GRIDS = [(1, 1), (1, 5), (5, 1), (2, 3), (5, 4)]


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=3)


def inputs(rows, cols, seed=0):
    lr = lr_image(rows * 32, cols * 32, seed=seed)
    u = upsample(lr, (rows * 128, cols * 128)).clamp(-1, 1)
    x = u + 0.8 * torch.randn(u.shape, generator=torch.Generator().manual_seed(seed + 1))
    return x, u, lr


@pytest.fixture(scope="module")
def whole_image(model):
    """Reference results of the whole-image forward (all blocks in one pass) per grid."""
    out = {}
    with torch.inference_mode():
        for rows, cols in GRIDS:
            x, u, lr = inputs(rows, cols)
            out[(rows, cols)] = (x, u, lr, model(x, torch.tensor(0.8), u, lr))
    return out


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("scan", ["rows", "columns"])
def test_scheduler_equals_whole_image_forward(model, whole_image, grid, n, scan):
    x, u, lr, expected = whole_image[grid]
    plan = plan_blocks(*grid, n, scan)
    with torch.inference_mode():
        out = BlockwiseDenoiser(model, u, lr, None, plan)(x, torch.tensor(0.8))
    assert (out - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("rows, cols", [(3, 8), (8, 3), (4, 4)])
def test_frontier_is_one_line_of_the_shorter_side(rows, cols):
    short = min(rows, cols)
    for n in (1, 2, 5):
        plan = plan_blocks(rows, cols, n)
        assert plan.peak_cached_blocks() <= short + n + 1  # a line, the block diagonal to it, the group
        assert {blk for g in plan.release_after for blk in g} == {blk for g in plan.groups for blk in g}
    # the auto scan keeps the frontier independent of the long side: three times as long, the same frontier
    longer = plan_blocks(rows * 3 if rows >= cols else rows, cols * 3 if cols > rows else cols, 2)
    assert longer.peak_cached_blocks() == plan_blocks(rows, cols, 2).peak_cached_blocks()


def test_every_group_only_reads_computed_blocks():
    for rows, cols in GRIDS + [(3, 7)]:
        for n in (1, 2, 3, 7, 100):
            for scan in ("rows", "columns"):
                plan = plan_blocks(rows, cols, n, scan)
                done = set()
                for group in plan.groups:
                    for r, c in group:
                        for nb in ((r - 1, c - 1), (r, c - 1), (r - 1, c)):
                            if min(nb) >= 0:
                                assert nb in done or nb in group
                    done.update(group)
                assert len(done) == rows * cols


@pytest.mark.parametrize("size", [(37, 53), (32, 32), (5, 300)])
def test_sampling_is_equal_for_every_block_batch_and_offload(model, size):
    h, w = size
    lr = lr_image(h, w, seed=4)
    results = [
        sample(model, lr, steps=1, seed=1, block_batch=n, scan=scan, offload_frontier=off)
        for n, scan, off in [(1, "auto", False), (3, "rows", True), (7, "columns", False), ("auto", "auto", False)]
    ]
    for r in results:
        assert r.shape == (1, 3, 4 * h, 4 * w)
        assert (r - results[0]).abs().max().item() <= 1e-4


def test_group_callback_reports_every_block_once_per_evaluation(model):
    events = []
    sample(model, lr_image(64, 96), steps=3, block_batch=2, callback=lambda e: events.append(e))
    groups = [e for e in events if isinstance(e, BlockGroupDone)]
    per_eval = {}
    for e in groups:
        per_eval.setdefault(e.evaluation, []).extend(e.blocks)
        assert e.grid == (2, 3) and e.pixels.shape == (1, 3, len(e.blocks), 128, 128)
    assert sorted(per_eval) == [0, 1, 2]
    for blocks in per_eval.values():
        assert sorted(blocks) == [(r, c) for r in range(2) for c in range(3)]


def test_cancel_between_groups_leaves_no_cached_blocks(model, monkeypatch):
    stores = []
    original = KeyValueStore.__init__

    def tracking_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        stores.append(self)

    monkeypatch.setattr(KeyValueStore, "__init__", tracking_init)

    def cancel(event):
        if isinstance(event, BlockGroupDone) and event.group == 2:
            assert stores[-1].cached_blocks() > 0  # the frontier is in use when the user cancels
            raise SamplingCancelled

    with pytest.raises(SamplingCancelled):
        sample(model, lr_image(96, 96), steps=2, block_batch=1, callback=cancel)
    assert stores and all(s.cached_blocks() == 0 for s in stores)


def test_invalid_block_batch_is_a_clear_error(model):
    for bad in (0, -2, 1.5, "many"):
        with pytest.raises(ValueError, match="block_batch"):
            sample(model, lr_image(32, 32), steps=1, block_batch=bad)


def test_plan_stats_equal_the_listed_plan():
    """The vectorised figures the estimate uses against the plan with every block listed."""
    from infdit_core.network.attention import neighbour_blocks
    from infdit_core.planning.scheduler import plan_stats

    for rows, cols in [(1, 1), (1, 5), (5, 1), (2, 2), (3, 4), (4, 3), (5, 9), (8, 8), (7, 12), (13, 6), (2, 9),
                       (9, 2), (3, 3), (6, 17)]:
        for n in sorted({1, 2, 3, 4, 5, 7, 8, 9, 11, 16, 17, 18, rows * cols - 1, rows * cols}):
            for scan in ("rows", "columns", "auto"):
                if n < 1:
                    continue
                plan = plan_blocks(rows, cols, n, scan)
                stats = plan_stats(rows, cols, n, scan)
                reads = max(len({nb for blk in g for nb in neighbour_blocks(*blk) if nb not in set(g)})
                            for g in plan.groups)
                assert (stats.groups, stats.block_batch, stats.frontier_span, stats.cached_reads) == \
                    (len(plan.groups), plan.block_batch, plan.frontier_span(), reads), (rows, cols, n, scan)


def test_plan_stats_of_a_64k_output_come_fast():
    import time

    from infdit_core.planning.scheduler import plan_stats

    t0 = time.perf_counter()
    stats = plan_stats(512, 512, 16, "auto")
    assert time.perf_counter() - t0 < 5  # seconds of Python per block before; here milliseconds (a loose bound)
    assert stats.groups == 512 * 512 // 16 and stats.frontier_span <= 512 + 2
