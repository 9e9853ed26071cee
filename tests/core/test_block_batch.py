"""block_batch="auto": the fastest block batch for the device kind, never above what fits the budget."""
import pytest
import torch

from infdit_core.planning.options import BlockOptions
from infdit_core import InfDiTConfig

from infdit_core.planning import memory
from infdit_core.planning.memory import choose_block_batch, estimate_peak_bytes, largest_fitting_block_batch

RELEASED = InfDiTConfig.released()
GIB = 1024**3


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("size", [(1024, 1024), (2048, 4096), (4096, 4096)])
@pytest.mark.parametrize("budget_gib", [3, 6, 24])
@pytest.mark.parametrize("offload", [False, True])
def test_auto_respects_the_budget(device, size, budget_gib, offload):
    budget = budget_gib * GIB
    n = choose_block_batch(RELEASED, *size, budget, torch.bfloat16, BlockOptions(offload_frontier=offload), device=device)
    assert n >= 1
    est = estimate_peak_bytes(RELEASED, *size, n, torch.bfloat16, BlockOptions(offload_frontier=offload))
    if n > 1:  # more than one block per group only when it fits
        assert est.total <= budget
    assert n <= largest_fitting_block_batch(RELEASED, *size, budget, torch.bfloat16, BlockOptions(offload_frontier=offload))


def test_cpu_takes_one_block_and_the_gpu_stops_at_its_cap():
    """CUDA: the largest block batch up to its cap (hardware/devices.py) that fits; past it groups cut no
    kernel launches per block, they only take memory."""
    args = (RELEASED, 2048, 2048, 24 * GIB, torch.bfloat16)
    largest = largest_fitting_block_batch(*args)
    assert largest > memory.fastest_block_batch("cuda")
    assert choose_block_batch(*args, device="cpu") == memory.fastest_block_batch("cpu") == 1
    assert choose_block_batch(*args, device="cuda") == memory.fastest_block_batch("cuda") == 16
    small = (RELEASED, 1024, 1024, 24 * GIB, torch.bfloat16)  # 8 x 8 blocks: more than the cap fit
    assert choose_block_batch(*small, device="cuda") == 16


@pytest.mark.parametrize("card_gb", [80, 141])
def test_auto_never_plans_more_than_the_whole_image(card_gb):
    """4096^2 on an 80 GB and a 141 GB card: the whole image as one group (no frontier) fits both; auto's
    plan must not need more than it (before: n=352 at 70 GiB and n=685 at 125 GiB against 45.4 GiB)."""
    budget = int(card_gb * 1e9 * 0.9)
    whole = estimate_peak_bytes(RELEASED, 4096, 4096, 32 * 32, torch.bfloat16, device="cuda").total
    assert whole <= budget
    for device in ("cuda", None):
        n = choose_block_batch(RELEASED, 4096, 4096, budget, torch.bfloat16, device=device)
        assert estimate_peak_bytes(RELEASED, 4096, 4096, n, torch.bfloat16, device="cuda").total <= whole
    assert largest_fitting_block_batch(RELEASED, 4096, 4096, budget, torch.bfloat16) == 32 * 32


@pytest.mark.parametrize("grid", [(3, 5), (8, 8), (6, 13)])
def test_largest_fitting_agrees_with_trying_every_block_batch(grid):
    """The binary search of largest_fitting_block_batch against an exhaustive scan, for budgets between
    the smallest and the largest estimate (so every shape of the curve is met)."""
    cfg = InfDiTConfig(layers=4, hidden=256, heads=4, vector_dim=0)
    h, w = grid[0] * 128, grid[1] * 128
    total = grid[0] * grid[1]
    sizes = [estimate_peak_bytes(cfg, h, w, n, torch.float32).total for n in range(1, total + 1)]
    for budget in sorted(set(sizes))[:: max(1, len(set(sizes)) // 12)]:
        best = max(n for n in range(1, total + 1) if sizes[n - 1] <= budget)
        assert largest_fitting_block_batch(cfg, h, w, budget, torch.float32) == best, (grid, budget)


def test_a_budget_too_small_for_the_fastest_still_gets_one_block():
    assert choose_block_batch(RELEASED, 4096, 4096, 1 * GIB, torch.bfloat16, device="cuda") == 1


def test_default_1024_needs_a_third_of_the_whole_image():
    """The must-show of issue 12 as the estimator sees it (benchmarks/speed.py measures it)."""
    cfg = InfDiTConfig(layers=4, hidden=512, heads=8, vector_dim=0)
    whole = estimate_peak_bytes(cfg, 1024, 1024, 64, torch.float32)
    auto = choose_block_batch(cfg, 1024, 1024, 24 * GIB, torch.float32, device="cpu")
    ours = estimate_peak_bytes(cfg, 1024, 1024, auto, torch.float32)
    assert (ours.frontier + ours.activations) * 3 <= whole.frontier + whole.activations
