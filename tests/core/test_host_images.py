"""Huge outputs: the sampler's full-size images on the host, only each group's blocks on the device;
the estimate splits device and host bytes; host memory is checked before a run starts."""
import pytest
import torch

from conftest import TINY, lr_image, random_model
from infdit_core.planning.options import BlockOptions
from infdit_core import InfDiTConfig, sample, upscale_image
from infdit_core.planning.memory import SOLVER_IMAGE_BUFFERS, estimate_peak_bytes
from infdit_core.planning.plan import check_host_memory, host_bytes, plan_run

GIB = 1024**3


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=5)


def relative_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("offload", [False, True])
def test_host_held_images_give_the_device_held_result(model, offload):
    """CPU-only CI: the same code path with the image device given explicitly (on CUDA: the real split)."""
    lr = lr_image(40, 24, seed=2)
    device_held = sample(model, lr, steps=2, block_batch=1, offload_frontier=offload)
    host_held = sample(model, lr, steps=2, block_batch=1, offload_frontier=offload, image_device="cpu")
    assert relative_diff(host_held, device_held) <= 1e-4


def test_the_network_reads_only_the_blocks_of_a_group(model, monkeypatch):
    """forward_blocks gets the full-size images where they live and returns only the group's blocks."""
    seen = []
    real = type(model).forward_blocks

    def spy(self, x, u, lr, cond, blocks, kv):
        out = real(self, x, u, lr, cond, blocks, kv)
        seen.append((x.device, u.device, lr.device, tuple(x.shape), out.shape[1], out.device))
        return out

    monkeypatch.setattr(type(model), "forward_blocks", spy)
    sample(model, lr_image(40, 24), steps=1, block_batch=1, image_device="cpu")
    assert len(seen) == 2
    assert all(s[:3] == (torch.device("cpu"),) * 3 and s[3] == (1, 3, 256, 128) and s[4] == 1 for s in seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the host/device split for real")
def test_on_cuda_host_images_match_and_keep_the_device_small():
    model = random_model(TINY, seed=5).cuda()
    lr = lr_image(128, 128, seed=1)
    torch.cuda.reset_peak_memory_stats()
    device_held = sample(model, lr, steps=2, block_batch=4)
    device_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    host_held = sample(model, lr, steps=2, block_batch=4, image_device="cpu")
    host_peak = torch.cuda.max_memory_allocated()
    assert relative_diff(host_held.cpu(), device_held.cpu()) <= 1e-4
    assert host_peak < device_peak / 2


def test_the_estimate_moves_the_images_to_the_host():
    cfg = InfDiTConfig.released()
    on_device = estimate_peak_bytes(cfg, 8192, 8192, 1)
    on_host = estimate_peak_bytes(cfg, 8192, 8192, 1, blocks=BlockOptions(images="host"))
    full = SOLVER_IMAGE_BUFFERS["ipndm"] * 3 * 8192 * 8192 * 4  # the default solver's float32 full-size buffers
    assert on_device.images == full and on_device.host == 0
    assert on_host.host == full and on_host.images < full / 1000
    assert on_host.frontier == on_device.frontier and on_host.weights == on_device.weights
    offloaded = estimate_peak_bytes(cfg, 8192, 8192, 1, blocks=BlockOptions(offload_frontier=True, images="host"))
    assert offloaded.frontier == 0 and offloaded.host == full + on_device.frontier
    assert "host" in str(on_host)


def test_the_released_targets():
    """8192^2 within 12 GiB of device memory with the frontier on the device; 16384^2 within 4 GiB
    with it offloaded (bf16, block batch 1, images on the host)."""
    cfg = InfDiTConfig.released()
    assert estimate_peak_bytes(cfg, 8192, 8192, 1, blocks=BlockOptions(images="host")).total <= 12 * GIB
    assert estimate_peak_bytes(cfg, 16384, 16384, 1, blocks=BlockOptions(offload_frontier=True, images="host")).total <= 4 * GIB


def test_auto_places_the_images_on_the_host_only_when_needed():
    cfg = InfDiTConfig.released()
    big = plan_run(cfg, 2048, 2048, {"scale": 4}, BlockOptions(memory_budget=12 * GIB), device="cuda")
    small = plan_run(cfg, 256, 256, {"scale": 4}, BlockOptions(memory_budget=12 * GIB), device="cuda")
    cpu = plan_run(cfg, 2048, 2048, {"scale": 4}, BlockOptions(memory_budget=12 * GIB), device="cpu")
    assert big.passes[0].images_on_host and big.peak.total <= 12 * GIB
    assert not small.passes[0].images_on_host and not cpu.passes[0].images_on_host
    forced = plan_run(cfg, 256, 256, {"scale": 4}, BlockOptions(1, images="host"))
    assert forced.passes[0].images_on_host


def test_a_run_that_does_not_fit_the_host_is_refused_before_it_starts(model):
    cfg = InfDiTConfig.released()
    plan = plan_run(cfg, 4096, 4096, {"scale": 4}, BlockOptions(1, offload_frontier=True, images="host"))
    assert host_bytes(plan, compute_on_cpu=False) == plan.peak.host
    with pytest.raises(ValueError) as err:
        check_host_memory(plan, compute_on_cpu=False, available=16 * GIB)
    message = str(err.value)
    assert "4096x4096 -> 16384x16384" in message and "16.0 GiB is available" in message
    assert "needs about 35.6 GiB of host memory" in message and "at most about 10978x10978" in message
    check_host_memory(plan, compute_on_cpu=False, available=64 * GIB)  # fits: no error


def test_upscale_image_checks_the_host_before_sampling(model, monkeypatch):
    from infdit_core.planning import plan as plan_module

    monkeypatch.setattr(plan_module, "free_device_memory", lambda device: 1000)
    events = []
    with pytest.raises(ValueError, match="9x7 -> 18x14 needs about .* GiB of host memory"):
        upscale_image(model, torch.rand(1, 7, 9, 3), scale=2, steps=1, callback=events.append)
    assert events == []  # refused before the first block
