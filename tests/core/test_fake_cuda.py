"""The dry run: the real sampling code on fake CUDA tensors (no GPU needed, benchmarks/fake_cuda.py), with the
released layer shapes (hidden 1280, 16 heads) and two layers. It must meet no device mismatch and no
missing kernel, and the host must never wait for a device value inside the block loop: the count of value
reads and blocking copies does not grow with the number of block groups."""
import dataclasses
import sys
import warnings

import pytest
import torch

from conftest import ROOT
from infdit_core import BlockGroupDone, InfDiTConfig, sample, upscale_image

sys.path.insert(0, str(ROOT / "benchmarks"))
from fake_cuda import fake_cuda, fake_model  # noqa: E402

SHRUNK = dataclasses.replace(InfDiTConfig.released(), layers=2, vector_dim=0)


def dry_run(run, dtype=torch.bfloat16, capability=(9, 0)):
    """run(model, callback) on fake CUDA; returns ([(group index, Counts)] for every group, Counts after the last)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fake_cuda(capability) as rec:
            model = fake_model(SHRUNK, dtype)
            groups = []

            def callback(event):
                if isinstance(event, BlockGroupDone):
                    groups.append((event.group, rec.section()))

            out = run(model, callback)
            assert out.device.type in ("cuda", "cpu")
    return groups, rec.current


CASES = {
    "bf16": dict(dtype=torch.bfloat16),
    "fp16 on sm75": dict(dtype=torch.float16, capability=(7, 5)),
    "offloaded": dict(offload_frontier=True),
    "float8": dict(float8_frontier=True),
    "offloaded float8": dict(offload_frontier=True, float8_frontier=True),
    "host images": dict(image_device="cpu"),
    "host images offloaded": dict(image_device="cpu", offload_frontier=True),
    "lse merge": dict(variant="lse_merge"),
}


@pytest.mark.parametrize("case", CASES)
def test_sample_on_fake_cuda_never_waits_inside_the_block_loop(case):
    options = dict(CASES[case])
    dtype, capability = options.pop("dtype", torch.bfloat16), options.pop("capability", (9, 0))
    variant = options.pop("variant", "auto")
    from infdit_core.network.attention import attention_variant

    def run(model, callback):
        with attention_variant(variant):
            return sample(model, torch.rand(1, 3, 64, 96), steps=1, block_batch=1, callback=callback, **options)

    groups, _ = dry_run(run, dtype, capability)
    assert len(groups) % 6 == 0 and groups[5][0] == 5  # 2 x 3 blocks, one at a time, per evaluation
    # an evaluation's first group also carries its one read of sigma (for the callback) and the solver's step
    later = [g for i, g in groups if i > 0]
    assert all(g.value_reads == 0 and g.blocking_copies == 0 for g in later), [(g.value_reads, g.blocking_copies) for g in later]
    assert all(g.value_reads <= 4 for i, g in groups if i == 0)  # per evaluation, not per group
    if "host" in case:
        assert all(g.h2d_bytes > 0 and g.d2h_bytes > 0 for g in later)  # only the group's blocks move, asynchronously
    if "offloaded" in case:
        assert any(g.h2d_bytes > 0 for g in later) and any(g.d2h_bytes > 0 for g in later)
    else:
        assert all(g.d2h_bytes == 0 for g in later if "host" not in case)


def test_reads_do_not_grow_with_the_number_of_groups():
    """One evaluation at 2 x 3 blocks and at 4 x 6 blocks: the same number of value reads in total."""
    reads = []
    for side in (64, 128):
        groups, _ = dry_run(lambda m, cb: sample(m, torch.rand(1, 3, side, side * 3 // 2), steps=1, block_batch=1,
                                                 callback=cb))
        reads.append(sum(g.value_reads for _, g in groups))
    assert reads[0] == reads[1] <= 8


def test_upscale_image_x8_in_two_passes_and_the_node_on_fake_cuda(monkeypatch):
    """x8 = x4 then x2 through upscale_image, then the Upscale node itself (its device taken as cuda)."""
    groups, outside = dry_run(lambda m, cb: upscale_image(m, torch.rand(1, 64, 96, 3), scale=8, steps=1, block_batch=2,
                                                          callback=cb))
    assert [i for i, _ in groups].count(0) >= 2 and max(i for i, _ in groups) >= 2  # both passes ran, block by block
    assert all(g.value_reads == 0 and g.blocking_copies == 0 for i, g in groups if i > 0)

    from nodes import comfy_adapter, upscale
    from nodes.load import InfDiTHandle

    monkeypatch.setattr(comfy_adapter, "torch_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(comfy_adapter, "send_to_browser", lambda event, data: None)
    monkeypatch.setattr(upscale.BlockTracker, "preview_if_due", lambda self: None)  # fake tensors hold no pixels

    def node(model, callback):
        handle = InfDiTHandle(model, "fake")
        return upscale.upscale(handle, torch.rand(1, 64, 96, 3), scale="4", steps=1).outputs[0]

    dry_run(node)
