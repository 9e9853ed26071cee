"""Dry runs on the devices ComfyUI users have and CI has not: Apple silicon (MPS), Intel GPUs (XPU, with and
without float64), AMD cards (ROCm answers) and a system without /proc/meminfo (Windows, macOS). The real
code runs on fake device tensors that enforce each backend's limits (benchmarks/fake_devices.py); each
finding of ../shared/docs/device-review.md has a test here that failed before its fix ("finding N")."""
import dataclasses
import sys
import warnings

import pytest
import torch

from conftest import ROOT
from infdit_core import BlockGroupDone, InfDiTConfig, sample
from infdit_core.hardware import devices
from infdit_core.hardware.precision import auto_dtype
from infdit_core.planning.memory import attention_path, choose_block_batch, estimate_peak_bytes, free_device_memory
from infdit_core.planning.options import BlockOptions
from infdit_core.planning.plan import check_host_memory, plan_run
from infdit_core.sampling.solvers import SOLVERS

sys.path.insert(0, str(ROOT / "benchmarks"))
from fake_cuda import fake_cuda, fake_model  # noqa: E402
from fake_devices import GIB, fake_device, fake_rocm  # noqa: E402
from fake_os import host_memory  # noqa: E402

RELEASED = InfDiTConfig.released()
SHRUNK = dataclasses.replace(RELEASED, layers=2, vector_dim=0)  # the released shapes per layer, two layers
DEVICE_OF = {"mps": "mps", "xpu": "xpu", "xpu-no-fp64": "xpu"}
BLOCK_SCORES = 2 * RELEASED.heads * 1024 * 4096 * 4  # float32 scores + softmax of one block's attention: 512 MiB


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_sample(kind, dtype=torch.float16, size=(64, 96), **options):
    """`sample` of the shrunk released model on an emulated device; (output, the device's Record)."""
    with fake_device(kind, attention_limit=options.pop("attention_limit", None)) as record:
        model = fake_model(SHRUNK, dtype, device=DEVICE_OF[kind])
        out = sample(model, torch.rand(1, 3, *size) * 2 - 1, **{"steps": 2, **options})
    return out, record


def node_outside_comfyui(monkeypatch, device: str):
    """The node's ComfyUI calls answered as on `device`: the model is made there already (Module.to would try
    to swap fake parameters), no browser."""
    from nodes import comfy_adapter

    monkeypatch.setattr(comfy_adapter, "send_to_browser", lambda event, data: None)
    monkeypatch.setattr(comfy_adapter, "load_to_device", lambda patcher, model, memory_required: model)
    monkeypatch.setattr(comfy_adapter, "torch_device", lambda: torch.device(device))


def run_node(kind, image_size=(32, 48), monkeypatch=None, **node_inputs):
    """The Upscale node's function on an emulated device (its ComfyUI device taken as that device)."""
    from nodes import upscale
    from nodes.load import InfDiTHandle

    node_outside_comfyui(monkeypatch, DEVICE_OF[kind])
    with fake_device(kind, attention_limit=node_inputs.pop("attention_limit", None)) as record:
        handle = InfDiTHandle(fake_model(SHRUNK, torch.float16, device=DEVICE_OF[kind]), "fake")
        result = upscale.upscale(handle, torch.rand(1, *image_size, 3), **{"scale": "4", "steps": 1, **node_inputs})
    return result, record


# ------------------------------------------------------------------ the dry runs: every device, every solver

@pytest.mark.parametrize("kind", ["mps", "xpu", "xpu-no-fp64"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_with_every_built_in_solver(kind, solver):
    """Finding 4: ipndm, ipndm_v and deis made float64 on the device (TypeError on MPS, "Required aspect fp64"
    on Arc A-series); now float64 only ever lives on the host."""
    out, record = run_sample(kind, sampler=solver)
    assert out.shape == (1, 3, 256, 384) and out.device.type == DEVICE_OF[kind]
    assert record.calls > 100


@pytest.mark.parametrize("kind", ["mps", "xpu", "xpu-no-fp64"])
@pytest.mark.parametrize("frontier", ["on device", "offloaded to CPU", "on device, float8", "offloaded to CPU, float8"])
def test_the_upscale_node_with_every_frontier(kind, frontier, monkeypatch):
    from nodes.block_size import control

    settings = control(frontier=frontier).outputs[0]
    if kind == "mps" and settings.float8_frontier:  # finding 5: refused in one line, before any work
        with pytest.raises(ValueError, match="float8 frontier is not available on mps.*Block Size Control") as e:
            run_node(kind, monkeypatch=monkeypatch, block_control=settings)
        assert "\n" not in str(e.value)
        return
    result, record = run_node(kind, monkeypatch=monkeypatch, block_control=settings)
    assert result.outputs[0].shape == (1, 128, 192, 3)
    assert record.unsafe_copies == 0  # finding 6: no non-blocking copy to or from pageable memory


def test_float8_is_refused_on_mps_before_any_work():
    """Finding 5: quantising the frontier ran on the device (TypeError), also when it was offloaded."""
    for offload in (False, True):
        with fake_device("mps") as record:
            model = fake_model(SHRUNK, torch.float16, device="mps")
            with pytest.raises(ValueError, match="float8"):
                sample(model, torch.rand(1, 3, 64, 96) * 2 - 1, steps=1, float8_frontier=True, offload_frontier=offload,
                       block_batch=1)  # several groups: a frontier to quantise
        assert record.attention == []
    from nodes.block_size import spec

    frontier = next(i for i in spec().inputs if i.name == "frontier")
    assert "Apple" in frontier.tooltip  # the widget says so


@pytest.mark.parametrize("case", ["rocm-gfx942", "rocm-gfx1100", "rocm-gfx1030", "rocm-gfx906"])
def test_the_upscale_node_on_rocm(case, monkeypatch):
    """Finding 9: on a HIP build cuDNN's attention kernel was tried (sm90+ by the made-up capability of an
    MI300); now never. Older cards (RDNA2, Vega) get fp16 and their estimate counts the math path."""
    from nodes import upscale
    from nodes.load import InfDiTHandle

    arch = case.split("-")[1]
    node_outside_comfyui(monkeypatch, "cuda")
    monkeypatch.setattr(upscale.BlockTracker, "preview_if_due", lambda self: None)  # fake_cuda reads no pixels
    with fake_rocm(arch) as rec:
        dtype = auto_dtype("cuda")
        modern = arch in ("gfx942", "gfx1100")
        assert dtype == (torch.bfloat16 if modern else torch.float16)
        assert attention_path("cuda", dtype) == ("concat" if modern else "math")
        handle = InfDiTHandle(fake_model(SHRUNK, dtype), "fake")
        out = upscale.upscale(handle, torch.rand(1, 32, 48, 3), scale="4", steps=1).outputs[0]
        assert out.shape == (1, 128, 192, 3)
    assert rec.cudnn_calls["cudnn"] == 0


def test_nvidia_still_tries_cudnn_first_on_hopper():
    """The ROCm rule must not take cuDNN away from NVIDIA: the fake-CUDA op model still sees its kernel."""
    with fake_cuda((9, 0)) as rec:
        model = fake_model(SHRUNK, torch.bfloat16)
        sample(model, torch.rand(1, 3, 64, 64), steps=1)
    assert rec.current.ops["_scaled_dot_product_cudnn_attention"] > 0


# ------------------------------------------------------------------ finding 1: MPS's attention path and auto

def test_mps_estimate_counts_the_math_path_scores():
    assert devices.traits("mps").fused_attention is False
    assert attention_path("mps", torch.float16) == "math"
    assert attention_path("xpu", torch.bfloat16) == "concat"
    plain = estimate_peak_bytes(RELEASED, 2048, 2048, 4, torch.float16, device="cpu")
    mps = estimate_peak_bytes(RELEASED, 2048, 2048, 4, torch.float16, device="mps")
    assert mps.activations - plain.activations >= 4 * BLOCK_SCORES * 0.9


def test_auto_on_a_32_gb_mac_picks_a_block_batch_that_fits():
    """The review's case: the node on a 32 GB Mac, 512^2 x4 at the released shapes, took block batch 256 and
    planned 12.3 GiB while one attention call alone needed 128 GiB of scores."""
    budget = int(32 * GIB * 2 / 3)  # Metal's working-set limit on a 32 GB Mac
    n = choose_block_batch(RELEASED, 2048, 2048, budget, torch.float16, device="mps")
    assert 1 <= n <= devices.traits("mps").block_batch_cap
    est = estimate_peak_bytes(RELEASED, 2048, 2048, n, torch.float16, device="mps")
    assert est.total <= budget and n * BLOCK_SCORES <= est.activations


def test_the_node_on_an_emulated_mac_runs_within_its_attention_memory(monkeypatch):
    """End to end: 128x128 -> 512x512 (16 blocks); an attention call with more than 4 GiB of scores runs out of
    memory. Before: the whole image in one group (8 GiB of scores), and the error was not recovered."""
    result, record = run_node("mps", (128, 128), monkeypatch, attention_limit=4 * GIB)
    assert result.outputs[0].shape == (1, 512, 512, 3)
    assert result.extra["retried"] is None and result.extra["block_batch"] <= 4
    assert max(scores for _, _, _, scores in record.attention) <= 4 * GIB


def test_a_manual_block_batch_never_makes_a_tensor_mps_cannot_hold():
    """MPS aborts the process for a tensor over 4 GiB; a block batch of 32 would make 8 GiB of scores."""
    plan = plan_run(RELEASED, 512, 512, None, BlockOptions(block_batch=32), torch.float16, device="mps")
    assert plan.block_batch * BLOCK_SCORES // 2 < 4 * GIB


# ------------------------------------------------------------------ finding 2: MPS out of memory is recovered

def test_mps_out_of_memory_is_recovered_and_empties_its_cache(monkeypatch):
    """MPS raises a plain RuntimeError("MPS backend out of memory ..."): before, no retry and the node failed.
    Scores over 1.5 GiB run out here: block batch 4 (2 GiB) fails, 2 (1 GiB) runs."""
    result, record = run_node("mps", (128, 128), monkeypatch, attention_limit=int(1.5 * GIB))
    assert result.outputs[0].shape == (1, 512, 512, 3)
    assert result.extra["retried"] == (2, False)
    assert record.empty_caches >= 1


def test_recovery_outside_comfyui_uses_the_backend_cache_call():
    from infdit_core.planning.plan import plan_run as plan
    from infdit_core.sampling.recovery import run_with_recovery

    calls = []

    def run(p):
        calls.append(p.block_batch)
        if len(calls) == 1:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GiB, other allocations: 1.2 GiB, max "
                               "allowed: 18.13 GiB). Tried to allocate 512.00 MiB on private pool.")
        return "done"

    with fake_device("mps") as record:
        start = plan(RELEASED, 256, 256, None, BlockOptions(block_batch=4), torch.float16, device="mps")
        result, ran = run_with_recovery(run, start, RELEASED, torch.float16, True, "mps")
    assert result == "done" and calls == [4, 2] and ran.block_batch == 2
    assert record.empty_caches == 1


def test_mps_out_of_memory_does_not_turn_compile_off(monkeypatch):
    from infdit_core.network import compiled

    monkeypatch.setattr(compiled, "_unavailable", None)  # as in a new process

    def failing(*args):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GiB). Tried to allocate 2 GiB on private pool.")

    run = compiled._guarded(failing, lambda *a: "eager")
    with pytest.raises(RuntimeError, match="MPS backend out of memory"):
        run()
    assert compiled.compile_unavailable_reason() is None
    assert not devices.is_out_of_memory(RuntimeError("expected scalar type Half but found Float"))


# ------------------------------------------------------------------ finding 3: previews at every size

@pytest.mark.parametrize("out_size", [(640, 640), (768, 768), (1280, 1280), (720, 1280), (1080, 1920), (300, 448)])
def test_previews_at_every_output_size_on_mps(out_size):
    """MPS's area resize needs sizes that divide: 640, 768 and 1280 px outputs crashed the live preview."""
    from infdit_core.planning.scheduler import plan_blocks
    from nodes.progress import BlockTracker

    bs = RELEASED.block_size
    rows, cols = -(-out_size[0] // bs), -(-out_size[1] // bs)
    plan = plan_blocks(rows, cols, block_batch=4)
    with fake_device("mps"):
        tracker = BlockTracker(plan, *out_size, bs, evaluations=1)
        for g, blocks in enumerate(plan.groups):
            pixels = torch.zeros(1, 3, len(blocks), bs, bs, device="mps")
            tracker.on_group(BlockGroupDone(0, 1, 0, 1, 1.0, g, len(plan.groups), list(blocks), (rows, cols), pixels))
        picture = tracker.preview()
    assert max(picture.size) <= 512 and min(picture.size) >= 1
    assert bs % tracker.cell == 0


# ------------------------------------------------------------------ finding 6: offloaded copies on MPS

def test_offloaded_frontier_on_mps_makes_only_blocking_copies():
    """Non-blocking copies to and from pageable memory (80 in one run before) can corrupt data on MPS."""
    out, record = run_sample("mps", offload_frontier=True, block_batch=1)
    assert record.unsafe_copies == 0
    assert record.ops["_to_copy"] + record.ops["copy_"] > 20  # the frontier did go back and forth


def test_xpu_gets_pinned_staging_and_the_copy_stream():
    """Finding 10: pinned staging and the side stream were CUDA-only although XPU has both."""
    out, record = run_sample("xpu", dtype=torch.bfloat16, offload_frontier=True, image_device="cpu", block_batch=1)
    assert record.unsafe_copies == 0 and len(record.pinned) > 0


# ------------------------------------------------------------------ finding 7: memory on every OS

def test_a_large_upscale_is_not_refused_without_proc_meminfo():
    """Windows/macOS: /proc/meminfo does not exist, and 8 GiB was assumed: 1024^2 x16 (about 15 GiB of host
    memory) and 1024^2 x8 with the frontier offloaded were refused on a 64 GB PC."""
    with host_memory(64 * GIB), fake_cuda((8, 9), total_memory=24 * GIB):
        assert free_device_memory("cpu") == 64 * GIB
        for factor, blocks in ((16, BlockOptions(memory_budget=20 * GIB)),
                               (8, BlockOptions(memory_budget=20 * GIB, offload_frontier=True))):
            plan = plan_run(RELEASED, 1024, 1024, {"scale": factor}, blocks, torch.bfloat16, device="cuda")
            check_host_memory(plan, compute_on_cpu=False)  # no ValueError
    with host_memory(4 * GIB):
        with pytest.raises(ValueError, match=r"4\.0 GiB is available"):  # a real shortage is still refused
            check_host_memory(plan, compute_on_cpu=False)


def test_device_memory_comes_from_each_backend():
    with fake_device("xpu", memory=16 * GIB):
        assert free_device_memory("xpu") == 16 * GIB  # torch.xpu.mem_get_info, not host RAM
    with fake_device("mps", memory=32 * GIB):
        assert free_device_memory("mps") == int(32 * GIB * 2 / 3)  # Metal's working set, within the RAM left
    with fake_device("mps", memory=32 * GIB), host_memory(6 * GIB):
        assert free_device_memory("mps") == 6 * GIB


def test_unified_memory_is_one_budget():
    """On MPS device and host needs were checked apart against the same RAM: each fit, together they did not."""
    plan = plan_run(RELEASED, 512, 512, {"scale": 4}, BlockOptions(block_batch=1, offload_frontier=True),
                    torch.float16, device="mps")
    peak = max(plan.passes, key=lambda p: p.estimate.host).estimate
    device_part, host_part = peak.total - peak.weights, peak.host
    available = max(device_part, host_part) + (min(device_part, host_part) // 2)
    with pytest.raises(ValueError, match="shares the host's memory"):
        check_host_memory(plan, devices.traits("mps").unified_memory, available)
    assert plan.passes[0].images_on_host is False  # "auto" never moves images to the same RAM


def test_the_node_runs_on_cuda_without_proc_meminfo(monkeypatch):
    """The dry run of a system without /proc/meminfo: the Upscale node, x16, on fake CUDA."""
    from nodes import upscale
    from nodes.load import InfDiTHandle

    node_outside_comfyui(monkeypatch, "cuda")
    monkeypatch.setattr(upscale.BlockTracker, "preview_if_due", lambda self: None)
    with host_memory(64 * GIB), fake_cuda((8, 9)):
        handle = InfDiTHandle(fake_model(SHRUNK, torch.bfloat16), "fake")
        out = upscale.upscale(handle, torch.rand(1, 16, 24, 3), scale="16", steps=1).outputs[0]
    assert out.shape == (1, 256, 384, 3)


# ------------------------------------------------------------------ finding 8: device choice and precision

@pytest.mark.parametrize("kind,expected", [("mps", "mps"), ("xpu", "xpu")])
def test_cli_and_training_pick_the_gpu_this_machine_has(kind, expected):
    from infdit_core.cli import build_parser, resolve_device

    with fake_device(kind):
        args = build_parser().parse_args(["upscale", "in.png"])
        resolve_device(args)
        assert args.device == expected
        train_args = build_parser().parse_args(["train", "--out", "x"])
        assert train_args.device is None  # train() resolves it the same way
        assert devices.default_device().type == expected


def test_an_absent_device_is_a_clear_error():
    from infdit_core.cli import main

    for name in ("mps", "xpu", "cuda:0"):
        with pytest.raises(ValueError, match=f"this machine has no {name.split(':')[0]} device"):
            devices.check_device(name)
    with pytest.raises(ValueError, match="unknown device"):
        devices.check_device("tpu")
    assert main(["upscale", "x.png", "--device", "mps"]) == 2


def test_auto_precision_is_native_on_every_device():
    with fake_device("mps"):
        assert auto_dtype("mps") == torch.float16  # every Apple GPU multiplies fp16 natively
    with fake_device("xpu"):
        assert auto_dtype("xpu") == torch.bfloat16
    with fake_device("xpu", bf16=False):
        assert auto_dtype("xpu") == torch.float16
    for arch, dtype in (("gfx942", torch.bfloat16), ("gfx90a", torch.bfloat16), ("gfx1100", torch.bfloat16),
                        ("gfx1030", torch.float16), ("gfx906", torch.float16)):
        with fake_rocm(arch):
            assert auto_dtype("cuda") == dtype, arch
    with fake_cuda((7, 5)):
        assert auto_dtype("cuda") == torch.float16  # NVIDIA unchanged


def test_estimate_plans_for_a_named_kind_of_device(capsys):
    from infdit_core.cli import main

    assert main(["estimate", "2048", "--block-batch", "auto", "--budget", "16", "--dtype", "fp16", "--device", "mps"]) == 0
    mps = capsys.readouterr().out
    assert main(["estimate", "2048", "--block-batch", "auto", "--budget", "16", "--dtype", "fp16"]) == 0
    cuda = capsys.readouterr().out
    assert "block_batch 4:" in mps and "block_batch 16:" in cuda


# ------------------------------------------------------------------ finding 10: XPU's attention and caps

def test_xpu_makes_one_attention_call_per_group_and_layer():
    """Off CUDA the lse_merge variant fell back per run: 24 attention calls instead of 12 per evaluation."""
    out, record = run_sample("xpu", dtype=torch.bfloat16, steps=1, block_batch=6, size=(64, 96))  # 6 blocks, 1 group
    block_calls = [a for a in record.attention if a[2] == 4 * 1024]
    assert len(block_calls) == SHRUNK.layers  # one call per layer over the group's four key groups
    assert devices.traits("xpu").block_batch_cap == 16


def test_empty_cache_reaches_every_backend():
    with fake_device("xpu") as record:
        devices.empty_cache("xpu")
    assert record.empty_caches == 1
    with fake_device("mps") as record:
        devices.empty_cache("mps")
    assert record.empty_caches == 1


# ------------------------------------------------------------------ finding 13: MPS before torch 2.8

def test_antialiased_bicubic_runs_on_the_cpu_for_mps_before_torch_2_8(monkeypatch):
    monkeypatch.setattr(devices, "torch_version", lambda: (2, 7))
    with fake_device("mps", torch_before_2_8=True):
        model = fake_model(SHRUNK, torch.float16, device="mps")
        out = sample(model, torch.rand(1, 3, 64, 96) * 2 - 1, steps=1)
    assert out.device.type == "mps"
