"""Block Size Control: settings from widgets, and an estimate that moves the right way with each setting."""
import pytest

from infdit_core import InfDiTConfig
from infdit_core.planning.memory import SOLVER_IMAGE_BUFFERS
from nodes import block_size
from nodes.block_size import GIB, BlockSettings, estimate

CFG = InfDiTConfig.released()


def total(settings, h=4096, w=4096, free=80 * GIB):
    return estimate(settings, CFG, h, w, free_bytes=free)[1].total


def test_estimate_grows_with_the_block_batch():
    totals = [total(BlockSettings(n)) for n in (1, 2, 4, 8, 16, 32)]
    assert totals == sorted(totals) and totals[0] < totals[-1]


def test_offloading_the_frontier_lowers_the_estimate():
    assert total(BlockSettings(4, offload_frontier=True)) < total(BlockSettings(4))


def test_auto_on_a_gpu_uses_more_blocks_with_a_bigger_budget():
    chosen = [estimate(BlockSettings(memory_budget=b * GIB), CFG, 4096, 4096, device="cuda")[0] for b in (4, 8, 16, 32, 64)]
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1]
    for b in (16, 32, 64):  # below 9 GiB nothing fits: 1
        assert estimate(BlockSettings(memory_budget=b * GIB), CFG, 4096, 4096, device="cuda")[1].total <= b * GIB


def test_auto_on_a_cpu_is_the_fastest_that_fits():
    chosen = {estimate(BlockSettings(memory_budget=b * GIB), CFG, 4096, 4096, device="cpu")[0] for b in (4, 16, 64)}
    assert chosen == {1}


def test_estimate_grows_with_the_output_size():
    sizes = [total(BlockSettings(4), h, h) for h in (1024, 2048, 4096, 8192)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_widgets_become_settings():
    s = block_size.settings_from_inputs(0, 0.0, block_size.FRONTIER_ON_DEVICE, "auto")
    assert s == BlockSettings()
    s = block_size.settings_from_inputs(3, 6.0, block_size.FRONTIER_OFFLOADED, "columns")
    assert s == BlockSettings(3, 6 * GIB, True, "columns")


@pytest.mark.parametrize("args,match", [
    ((0, 0.0, "in the cloud", "auto"), "frontier"),
    ((0, 0.0, block_size.FRONTIER_ON_DEVICE, "diagonal"), "scan"),
])
def test_bad_widgets_are_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        block_size.settings_from_inputs(*args)


def test_node_outputs_settings_and_shows_the_estimate():
    result = block_size.control(2, 0.0, block_size.FRONTIER_OFFLOADED, "rows", 2048, 1024)
    assert result.outputs == (BlockSettings(2, None, True, "rows"),)
    (text,) = result.ui["text"]
    assert text.startswith("2048x1024 output, 2 block(s) per pass: device peak about ") and "GiB" in text
    assert "host about " in text  # the offloaded frontier lives there


def test_estimate_route_answers_the_frontend():
    answer = block_size.estimate_query({"block_batch": "4", "frontier": block_size.FRONTIER_ON_DEVICE, "width": "4096", "height": "2048"})
    assert answer["block_batch"] == 4
    assert answer["total"] == answer["weights"] + answer["frontier"] + answer["activations"] + answer["images"]
    assert answer["host"] == 0  # frontier and images on the device
    lower = block_size.estimate_query({"block_batch": "1", "width": "4096", "height": "2048"})
    assert lower["total"] < answer["total"]
    with pytest.raises(ValueError, match="bad estimate query"):
        block_size.estimate_query({"block_batch": "many"})
    with pytest.raises(ValueError, match="output size"):
        block_size.estimate_query({"width": "0"})


def test_on_a_gpu_a_huge_output_shows_its_images_on_the_host():
    n, est = estimate(BlockSettings(memory_budget=12 * GIB), CFG, 8192, 8192, device="cuda")
    assert est.total <= 12 * GIB and est.host >= SOLVER_IMAGE_BUFFERS["heun"] * 3 * 8192 * 8192 * 4
    n, small = estimate(BlockSettings(memory_budget=12 * GIB), CFG, 1024, 1024, device="cuda")
    assert small.host == 0


def test_float8_frontier_choices_keep_the_old_values_and_halve_the_frontier():
    assert block_size.spec().input("frontier").options[:2] == (block_size.FRONTIER_ON_DEVICE, block_size.FRONTIER_OFFLOADED)
    plain = block_size.settings_from_inputs(1, 0.0, block_size.FRONTIER_ON_DEVICE, "auto")
    f8 = block_size.settings_from_inputs(1, 0.0, block_size.FRONTIER_FLOAT8, "auto")
    off8 = block_size.settings_from_inputs(1, 0.0, block_size.FRONTIER_OFFLOADED_FLOAT8, "auto")
    assert not plain.float8_frontier and f8.float8_frontier and not f8.offload_frontier
    assert off8.float8_frontier and off8.offload_frontier
    assert estimate(f8, CFG, 4096, 4096)[1].frontier * 2 == pytest.approx(estimate(plain, CFG, 4096, 4096)[1].frontier, rel=1e-3)


@pytest.mark.parametrize("query", [{"memory_budget_gb": "inf"}, {"memory_budget_gb": "nan"}, {"width": "1e300"},
                                   {"height": "-5"}, {"block_batch": "2.5"}, {"block_batch": "1e9"},
                                   {"width": "65537"}, {"scan": "diagonal"}, {"frontier": "somewhere"}])
def test_junk_estimate_queries_are_clear_errors(query):
    """Each is a ValueError (the route answers 400 with its message), never an OverflowError (a 500)."""
    with pytest.raises(ValueError, match="bad estimate query|scan must|frontier must"):
        block_size.estimate_query(query)


def test_the_largest_estimate_query_is_quick():
    import time

    from infdit_core.planning.scheduler import plan_stats

    plan_stats.cache_clear()
    t0 = time.perf_counter()
    answer = block_size.estimate_query({"width": "65536", "height": "65536", "block_batch": "1"})
    assert time.perf_counter() - t0 < 1.0  # about 10 ms here; the bound is loose for a loaded CI machine
    assert answer["block_batch"] == 1 and answer["total"] > 0
