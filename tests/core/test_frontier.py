"""The copy-free frontier (KeyValueStore) against the store it replaced: stack + concatenate + index."""
import pytest
import torch

from conftest import TINY, random_model
from infdit_core.network import frontier as attention  # the store calls attend_key_groups from here
from infdit_core.sampling import denoiser
from conftest import reference_block_attention as block_attention
from infdit_core.network.attention import neighbour_blocks
from infdit_core.network.frontier import KeyValueStore
from infdit_core.sampling.denoiser import BlockwiseDenoiser
from infdit_core.planning.scheduler import plan_blocks
from test_scheduler import GRIDS, inputs


class GatheringStore:
    """The previous KeyValueStore: cached blocks in a dict, the four key groups of every block built
    by stacking the cached ones, concatenating them to the group and indexing (the reference)."""

    def __init__(self, layers, keep=False, storage_device=None, **_):
        self.layers = [dict() for _ in range(layers)]
        self.keep = keep

    def attend(self, layer, blocks, q, k, v, group_embed):
        store = self.layers[layer]
        position = {blk: i for i, blk in enumerate(blocks)}
        stored, index = [], []
        for blk in blocks:
            row = []
            for nb in neighbour_blocks(*blk):
                if nb not in position:
                    position[nb] = len(blocks) + len(stored)
                    stored.append(nb)
                row.append(position[nb])
            index.append(row)
        k_pool, v_pool = k, v
        if stored:
            k_pool = torch.cat([k, torch.stack([store[nb][0] for nb in stored], 1)], dim=1)
            v_pool = torch.cat([v, torch.stack([store[nb][1] for nb in stored], 1)], dim=1)
        if self.keep:
            for i, blk in enumerate(blocks):
                store[blk] = (k[:, i].clone(), v[:, i].clone())
        idx = torch.tensor(index)
        return block_attention(q, k_pool[:, idx], v_pool[:, idx], group_embed)

    def release(self, blocks):
        for store in self.layers:
            for blk in blocks:
                store.pop(blk, None)

    def clear(self):
        for store in self.layers:
            store.clear()


def run_plan(store, plan, tokens, layers=2):
    """Every group of `plan` through `layers` attention layers of `store`; tokens: per block (q, k, v),
    each (B, T, h, d). Returns the attention output of every block and layer."""
    embed = torch.randn(layers, 4, *tokens[plan.groups[0][0]][0].shape[-2:], generator=torch.Generator().manual_seed(9))
    out = {}
    for group, release in zip(plan.groups, plan.release_after):
        q, k, v = (torch.stack([tokens[blk][j] for blk in group], 1) for j in range(3))
        for layer in range(layers):
            res = store.attend(layer, list(group), q + layer, k * (layer + 1), v - layer, embed[layer])
            for i, blk in enumerate(group):
                out[blk, layer] = res[:, i]
        store.release(release)
    store.clear()
    return out


def block_tokens(rows, cols, batch=1, t=8, h=2, d=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(rows * 100 + cols)
    return {(r, c): tuple(torch.randn(batch, t, h, d, generator=g).to(dtype) for _ in range(3))
            for r in range(rows) for c in range(cols)}


@pytest.mark.parametrize("grid", GRIDS + [(3, 7), (6, 6)])
def test_frontier_equals_the_gathering_store(grid):
    """Every grid, block batch and scan of the scheduler tests (and two more), frontier on the device
    and offloaded: within 1e-5 of the old store's result, relative to its largest value (float32)."""
    tokens = block_tokens(*grid)
    for n in (1, 2, 3, 7, grid[0] * grid[1]):
        for scan in ("rows", "columns"):
            plan = plan_blocks(*grid, n, scan)
            keep = len(plan.groups) > 1
            expected = run_plan(GatheringStore(2, keep), plan, tokens)
            scale = max(t.abs().max().item() for t in expected.values())
            for storage in (None, "cpu"):
                store = KeyValueStore(2, keep, storage, grid=plan.grid, scan=plan.scan, slots=plan.frontier_span())
                out = run_plan(store, plan, tokens)
                worst = max((out[key] - expected[key]).abs().max().item() for key in expected)
                assert worst <= 1e-5 * scale, (grid, n, scan, storage)
                assert store.cached_blocks() == 0 and store.ring == [None, None]


def test_batch_of_two_and_bf16():
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        tokens = block_tokens(3, 4, batch=2, dtype=dtype)
        plan = plan_blocks(3, 4, 2, "columns")
        expected = run_plan(GatheringStore(2, True), plan, tokens)
        for storage in (None, "cpu"):
            out = run_plan(KeyValueStore(2, True, storage, grid=(3, 4), scan="columns", slots=plan.frontier_span()), plan, tokens)
            assert max((out[key].float() - expected[key].float()).abs().max().item() for key in expected) <= tol * 4


def test_model_with_the_frontier_equals_the_gathering_store(monkeypatch):
    """End to end through the model: one grid, on device and offloaded."""
    model = random_model(TINY, seed=5)
    x, u, lr = inputs(2, 3, seed=2)
    plan = plan_blocks(2, 3, 2, "rows")

    def run(offload):
        with torch.inference_mode():
            return BlockwiseDenoiser(model, u, lr, None, plan, offload)(x, torch.tensor(0.7))

    monkeypatch.setattr(denoiser, "KeyValueStore", GatheringStore)
    expected = run(False)
    monkeypatch.undo()
    for offload in (False, True):
        assert (run(offload) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_cached_key_groups_are_read_in_place(monkeypatch):
    """On the device, every key/value group handed to the attention is a view of the group's own k/v or
    of the frontier ring: no block is copied to be read."""
    allowed, seen = set(), []
    original_attend = attention.attend_key_groups

    def attend(q, keys, values, group_embed):
        seen.extend(t.untyped_storage().data_ptr() for t in (*keys, *values))
        return original_attend(q, keys, values, group_embed)

    class Recording(KeyValueStore):
        def attend(self, layer, blocks, q, k, v, group_embed):
            out = super().attend(layer, blocks, q, k, v, group_embed)
            allowed.update(t.untyped_storage().data_ptr() for t in (k, v, *self.ring[layer]))
            return out

    monkeypatch.setattr(attention, "attend_key_groups", attend)
    plan = plan_blocks(3, 5, 2, "columns")
    run_plan(Recording(2, True, grid=(3, 5), scan="columns", slots=plan.frontier_span()), plan, block_tokens(3, 5))
    assert seen and set(seen) <= allowed


def test_ring_is_as_small_as_the_frontier():
    for rows, cols in [(5, 4), (4, 9), (8, 8)]:
        for n in (1, 2, 5):
            plan = plan_blocks(rows, cols, n)
            assert plan.frontier_span() <= plan.peak_cached_blocks() + 1 < rows * cols
