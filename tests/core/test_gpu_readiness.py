"""The GPU path's rules, checked on the CPU: precision by compute capability, the attention kernel chain,
pinned memory as the host allocator takes it, non-finite passes, and the out-of-memory recovery."""
import pytest
import torch

from conftest import TINY, lr_image, random_model, write_safetensors
from infdit_core.planning.options import BlockOptions
from infdit_core import sample, upscale_image
from infdit_core.network import attention
from infdit_core.hardware import host
from infdit_core.planning import memory
from infdit_core.hardware import precision
from infdit_core.network.attention import attend_key_groups, attention_variant
from infdit_core.cli import main
from infdit_core.network.config import InfDiTConfig


@pytest.mark.parametrize("cap, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                           ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_follows_the_capability_of_that_device(monkeypatch, cap, expected):
    """sm70/sm75 only emulate bf16 (torch.cuda.is_bf16_supported says yes): they get fp16. The device's
    own index is asked, so a machine with an A100 and a T4 gets bf16 on one and fp16 on the other."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    def capability(device=None):
        asked.append(torch.device(device).index)
        return {1: cap}.get(torch.device(device).index, (9, 0))

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert precision.auto_dtype("cuda:1") == expected
    assert asked == [1]
    assert precision.auto_dtype("cuda:0") == torch.bfloat16
    kernels = attention.lse_kernels("cuda:1", expected)
    assert kernels == (("flash", "efficient") if cap >= (8, 0) else ("efficient",))  # fp16 has a fused kernel
    assert memory.attention_path("cuda:1", expected) != "math"
    if cap < (8, 0):  # forcing bf16 there: no fused kernel, the estimate counts the score matrix
        assert memory.attention_path("cuda:1", torch.bfloat16) == "math"
        forced = memory.estimate_peak_bytes(InfDiTConfig.released(), 2048, 2048, 4, torch.bfloat16, device="cuda:1")
        fused = memory.estimate_peak_bytes(InfDiTConfig.released(), 2048, 2048, 4, torch.float16, device="cuda:1")
        assert forced.activations > 5 * fused.activations


def groups(m=3, t=16, h=2, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(m, t, h, d, generator=g).to(dtype)
    keys = [torch.randn(m, t, h, d, generator=g).to(dtype) for _ in range(4)]
    values = [torch.randn(m, t, h, d, generator=g).to(dtype) for _ in range(4)]
    return q, keys, values, torch.randn(4, h, d, generator=g).to(dtype)


def test_every_step_of_the_attention_chain_equals_the_first(monkeypatch):
    """flash (CPU twin), then the next kernel, then the copied groups with one call: the same attention."""
    q, keys, values, embed = groups()
    first = attend_key_groups(q, keys, values, embed).float()
    with attention_variant("concat"):
        assert (attend_key_groups(q, keys, values, embed).float() - first).abs().max() < 1e-5
    broken = {"flash_cpu"}
    real = attention._run_kernel

    def refusing(name, *args):
        if name in broken:
            raise RuntimeError(f"{name} refused")
        return real(name, *args)

    monkeypatch.setattr(attention, "_run_kernel", refusing)
    monkeypatch.setattr(attention, "_CHOSEN", {})
    with pytest.warns(UserWarning, match="flash_cpu unavailable"):
        fallen = attend_key_groups(q, keys, values, embed)
    assert (fallen.float() - first).abs().max() < 1e-5
    assert attention._CHOSEN[("cpu", torch.float32, False)] == "concat"  # remembered for this device and dtype
    assert attention.chosen_kernel("cpu", torch.float32) == "concat"
    assert attention.chosen_kernel("cpu", torch.bfloat16) == "flash_cpu"  # another dtype keeps its own


def test_the_cuda_chain_steps_down_one_kernel_at_a_time(monkeypatch):
    """On a CUDA device: flash refuses -> the memory-efficient kernel; that refuses too -> copied groups.
    (Kernels stood in by the CPU's, so the results are checked too.)"""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(attention, "_CHOSEN", {})
    tried = []

    def kernel(name, q, k, v, scale):
        tried.append(name)
        if name == "flash":
            raise RuntimeError("flash refused")
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)

    monkeypatch.setattr(attention, "_run_kernel", kernel)
    q = torch.randn(2, 2, 16, 8, dtype=torch.bfloat16)
    cuda = torch.device("cuda:0")
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: cuda), raising=False)
    with pytest.warns(UserWarning, match="flash unavailable"):
        out, lse = attention.attention_with_lse(q, q, q, 0.3)
    assert tried == ["flash", "efficient"] and out is not None
    out, lse = attention.attention_with_lse(q, q, q, 0.3)
    assert tried == ["flash", "efficient", "efficient"]  # flash is not tried again on this device and dtype
    assert attention._CHOSEN[("cuda:0", torch.bfloat16, False)] == "efficient"


def test_pinned_memory_is_counted_as_the_allocator_rounds_it():
    assert [host.pinned_bytes(n) for n in (0, 1, 1000, 1024, 1025)] == [0, 1, 1024, 1024, 2048]
    cfg = InfDiTConfig.released()
    args = (cfg, 16384, 16384, 1, torch.bfloat16, BlockOptions(offload_frontier=True, images="host"))
    images = 6 * 3 * 16384 * 16384 * 4  # the default solver ipndm's full-size float32 images: pageable, counted as they are
    plain = memory.estimate_peak_bytes(*args)
    cuda = memory.estimate_peak_bytes(*args, device="cuda")
    ring = (plain.host - images) // (2 * cfg.layers)  # one layer's key (or value) ring
    assert ring & (ring - 1)  # not a power of two: the allocator rounds it up
    rounded = 2 * cfg.layers * host.pinned_bytes(ring)
    assert rounded > plain.host - images
    assert 0 < cuda.host - images - rounded < 64 * 2**20  # + two small staging buffers, rounded too


def test_failed_pinned_allocation_is_out_of_memory(monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")

    monkeypatch.setattr(torch, "empty", refuse)
    with pytest.raises(torch.OutOfMemoryError, match="page-lock"):
        host.pinned_empty((4, 4), torch.float32)


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=3)


def test_a_non_finite_pass_names_fp16_overflow_and_writes_nothing(model, tmp_path, monkeypatch):
    from infdit_core.sampling import pipeline

    real = pipeline.sample
    monkeypatch.setattr(pipeline, "sample", lambda *a, **k: real(*a, **k) * float("inf"))
    half = random_model(TINY, seed=3).to(torch.float16)
    with pytest.raises(precision.NonFiniteOutput, match="fp16 overflow.*use fp32"):
        upscale_image(half, torch.rand(1, 8, 8, 3), steps=1)
    with pytest.raises(precision.NonFiniteOutput, match="NaN/infinite") as err:
        upscale_image(model, torch.rand(1, 8, 8, 3), steps=1)
    assert "bf16" not in str(err.value).split(":")[-1]  # never recommends another 16-bit precision for broken output
    path = write_safetensors(model, tmp_path / "m.safetensors")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", str(path),
                 "--steps", "1", "--dtype", "fp32"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "m.safetensors"]  # nothing written


def flaky_upscale(monkeypatch, fails_when):
    """upscale_image raising CUDA's out-of-memory error for the plans `fails_when` picks."""
    from infdit_core.sampling import pipeline
    from infdit_core.sampling import recovery

    calls, real = [], pipeline.upscale_image

    def flaky(model, image, plan=None, **kw):
        calls.append((plan.block_batch, plan.offload_frontier))
        if fails_when(plan.block_batch, plan.offload_frontier):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(model, image, plan=plan, **kw)

    monkeypatch.setattr(pipeline, "upscale_image", flaky)
    monkeypatch.setattr(recovery, "empty_device_cache", lambda device: calls.append("emptied"))
    return calls


def test_the_cli_recovers_from_out_of_memory_by_halving(model, tmp_path, monkeypatch):
    from PIL import Image

    path = write_safetensors(model, tmp_path / "m.safetensors")
    Image.new("RGB", (40, 24)).save(tmp_path / "in.png")
    calls = flaky_upscale(monkeypatch, lambda n, off: n > 1)
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", str(path),
                 "--steps", "1", "--block-batch", "4", "--scan", "rows"]) == 0
    assert calls == [(2, False), "emptied", (1, False)]  # 2 blocks in the grid: block batch 2, then halved
    assert Image.open(tmp_path / "out.png").size == (160, 96)


def test_the_batch_runner_recovers_and_reports_what_does_not_fit(model, tmp_path, monkeypatch, capsys):
    from PIL import Image

    path = write_safetensors(model, tmp_path / "m.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 24)).save(src / name)
    calls = flaky_upscale(monkeypatch, lambda n, off: n > 1)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(path), "--steps", "1",
                 "--block-batch", "2"]) == 0
    assert calls.count("emptied") == 2 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png", "b_x4.png"]
    calls.clear()
    flaky_upscale(monkeypatch, lambda n, off: True)  # nothing fits: halved, offloaded, then a clear message
    assert main(["upscale", str(src), "-o", str(tmp_path / "out2"), "--model", str(path), "--steps", "1",
                 "--block-batch", "2"]) == 1
    err = capsys.readouterr().err
    assert "failed a.png: Inf-DiT ran out of memory" in err and "--offload-frontier" in err
    assert not list((tmp_path / "out2").glob("*.png"))


@pytest.mark.parametrize("batch", [1, 2])
def test_the_concat_store_path_equals_the_default_on_every_plan(batch):
    """CUDA's default (one attention call per group over copied key groups) against the CPU default, through
    the frontier store: on the device and offloaded, several block batches and both scans."""
    from infdit_core.network.frontier import KeyValueStore
    from infdit_core.planning.scheduler import plan_blocks
    from test_frontier import block_tokens, run_plan

    tokens = block_tokens(3, 4, batch=batch)
    for n, scan in ((1, "rows"), (2, "columns"), (5, "rows"), (12, "rows")):
        plan = plan_blocks(3, 4, n, scan)
        keep = len(plan.groups) > 1
        expected = run_plan(KeyValueStore(2, keep, grid=plan.grid, scan=plan.scan, slots=plan.frontier_span()), plan, tokens)
        scale = max(t.abs().max().item() for t in expected.values())
        for storage in (None, "cpu"):
            with attention_variant("concat"):
                store = KeyValueStore(2, keep, storage, grid=plan.grid, scan=plan.scan, slots=plan.frontier_span())
                out = run_plan(store, plan, tokens)
            worst = max((out[key] - expected[key]).abs().max().item() for key in expected)
            assert worst <= 1e-5 * scale, (n, scan, storage)

