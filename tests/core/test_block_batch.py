"""block_batch="auto": the fastest block batch for the device kind, never above what fits the budget."""
import pytest
import torch

from infdit_core import InfDiTConfig, memory
from infdit_core.memory import choose_block_batch, estimate_peak_bytes, largest_fitting_block_batch

RELEASED = InfDiTConfig.released()
GIB = 1024**3


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("size", [(1024, 1024), (2048, 4096), (4096, 4096)])
@pytest.mark.parametrize("budget_gib", [3, 6, 24])
@pytest.mark.parametrize("offload", [False, True])
def test_auto_respects_the_budget(device, size, budget_gib, offload):
    budget = budget_gib * GIB
    n = choose_block_batch(RELEASED, *size, budget, torch.bfloat16, offload, device=device)
    assert n >= 1
    est = estimate_peak_bytes(RELEASED, *size, n, torch.bfloat16, offload)
    if n > 1:  # more than one block per group only when it fits
        assert est.total <= budget
    assert n <= largest_fitting_block_batch(RELEASED, *size, budget, torch.bfloat16, offload)


def test_cpu_takes_the_measured_fastest_and_the_gpu_the_largest_that_fits():
    args = (RELEASED, 2048, 2048, 24 * GIB, torch.bfloat16)
    largest = largest_fitting_block_batch(*args)
    assert largest > 1
    assert choose_block_batch(*args, device="cpu") == memory.FASTEST_BLOCK_BATCH["cpu"] == 1
    assert choose_block_batch(*args, device="cuda") == largest


def test_a_budget_too_small_for_the_fastest_still_gets_one_block():
    assert choose_block_batch(RELEASED, 4096, 4096, 1 * GIB, torch.bfloat16, device="cuda") == 1


def test_default_1024_needs_a_third_of_the_whole_image():
    """The must-show of issue 12 as the estimator sees it (benchmarks/speed.py measures it)."""
    cfg = InfDiTConfig(layers=4, hidden=512, heads=8, vector_dim=0)
    whole = estimate_peak_bytes(cfg, 1024, 1024, 64, torch.float32)
    auto = choose_block_batch(cfg, 1024, 1024, 24 * GIB, torch.float32, device="cpu")
    ours = estimate_peak_bytes(cfg, 1024, 1024, auto, torch.float32)
    assert (ours.frontier + ours.activations) * 3 <= whole.frontier + whole.activations
