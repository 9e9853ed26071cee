"""Any factor or target size: the passes chosen, exact output sizes, chaining on the unquantised image,
progress across passes, and clear errors for sizes out of reach."""
import pytest
import torch

from conftest import TINY, random_model
from infdit_core.planning.options import BlockOptions
from infdit_core import BlockGroupDone, EvaluationDone, sample, upscale_image
from infdit_core.network.config import InfDiTConfig
from infdit_core.sampling.pipeline import upsample
from infdit_core.planning.plan import fallback, native_passes, output_size, parse_target, plan_run


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=3)


def picture(h=7, w=5, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("factor,passes", [(1, (2,)), (1.5, (2,)), (2, (2,)), (2.01, (4,)), (3, (4,)), (4, (4,)),
                                           (4.5, (4, 2)), (6, (4, 2)), (8, (4, 2)), (8.5, (4, 4)), (16, (4, 4))])
def test_fewest_native_passes_reach_the_factor(factor, passes):
    assert native_passes(factor) == passes


@pytest.mark.parametrize("factor", [1, 1.5, 2, 3, 4, 6, 8, 16])
def test_every_factor_gives_exactly_the_requested_size(model, factor):
    h, w = 7, 5  # odd sides: 1.5 x 5 = 7.5 rounds half up to 8
    out = upscale_image(model, picture(h, w), scale=factor, steps=1, block_batch=4)
    expected = (int(h * factor + 0.5), int(w * factor + 0.5))
    assert out.shape == (1, *expected, 3)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("target,expected", [
    (dict(size=(41, 23)), (41, 23)),
    (dict(long_side=100), (100, 71)),  # 7x5 -> long side 100: 5 * 100/7 = 71.4
    (dict(megapixels=0.005), (86, 61)),  # 5242.88 px at 7:5: x12.24
    (dict(size=(7, 5)), (7, 5)),  # the input size itself: a re-render
])
def test_target_sizes_are_exact(model, target, expected):
    out = upscale_image(model, picture(), steps=1, **target)
    assert out.shape[1:3] == expected


def test_long_side_of_a_wide_image():
    assert output_size(5, 7, long_side=100) == (71, 100)
    assert output_size(48, 64, long_side=1000) == (750, 1000)
    assert output_size(48, 64, scale=8) == (384, 512)


def test_chained_x8_is_x4_then_x2_on_the_unquantised_image(model):
    lr = picture(9, 7, seed=1) * 2 - 1
    x4 = sample(model, lr.movedim(-1, 1), scale=4, steps=1, seed=5, block_batch=2)
    by_hand = sample(model, x4.clamp(-1, 1), scale=2, steps=1, seed=6, block_batch=2)  # pass k uses seed + k
    chained = upscale_image(model, (lr + 1) / 2, scale=8, steps=1, seed=5, block_batch=2)
    expected = ((by_hand + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert chained.shape == (1, 72, 56, 3)
    assert (chained - expected).abs().max().item() < 1e-5
    # and it is not what a quantised intermediate gives
    quantised = (((x4 + 1) * 127.5).clamp(0, 255).floor() / 127.5 - 1)
    other = sample(model, quantised, scale=2, steps=1, seed=6, block_batch=2)
    assert (other - by_hand).abs().max().item() > 1e-4


def test_a_resized_factor_is_the_passes_then_an_antialiased_resize(model):
    image = picture(9, 7, seed=2)
    x4 = upscale_image(model, image, scale=4, steps=1, seed=0, block_batch=2)
    x3 = upscale_image(model, image, scale=3, steps=1, seed=0, block_batch=2)
    down = upsample(x4.movedim(-1, 1) * 2 - 1, (27, 21)).clamp(-1, 1)
    assert (x3 - ((down + 1) / 2).clamp(0, 1).movedim(1, -1)).abs().max().item() < 1e-5


def test_events_cover_every_pass(model):
    events = []
    upscale_image(model, picture(), scale=8, steps=3, block_batch=1, callback=events.append)
    groups = [e for e in events if isinstance(e, BlockGroupDone)]
    evals = [e for e in events if isinstance(e, EvaluationDone)]
    assert {(e.pass_index, e.passes) for e in evals} == {(0, 2), (1, 2)}
    assert len(evals) == 2 * 3  # 2 passes of 3 network evaluations
    assert [e.grid for e in groups if e.pass_index == 0][0] == (1, 1)  # 28x20 -> one block
    assert [e.grid for e in groups if e.pass_index == 1][0] == (1, 1)  # 56x40
    single = []
    upscale_image(model, picture(), scale=4, steps=1, callback=single.append)
    assert all(e.pass_index == 0 and e.passes == 1 for e in single)  # one pass: as before


def test_block_batch_and_estimate_are_chosen_per_pass():
    cfg = InfDiTConfig.released()
    plan = plan_run(cfg, 256, 256, {"scale": 8}, BlockOptions(memory_budget=12 * 1024**3), torch.bfloat16)
    first, second = plan.passes
    assert (first.scale, second.scale) == (4, 2)
    assert first.grid == (8, 8) and second.grid == (16, 16)
    assert second.estimate.images > first.estimate.images
    assert first.block_batch >= second.block_batch
    assert plan.peak == second.estimate and plan.out_size == (2048, 2048)
    smaller = fallback(plan, cfg)
    assert smaller.block_batch == max(1, plan.block_batch // 2)


def test_fallback_offloads_the_frontier_at_block_batch_one():
    cfg = InfDiTConfig.released()
    plan = plan_run(cfg, 64, 64, {"scale": 8}, BlockOptions(1))
    retry = fallback(plan, cfg)
    assert retry.offload_frontier and retry.block_batch == 1
    assert fallback(retry, cfg) is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(scale=0), "from 1 to 16"),
    (dict(scale=-2), "from 1 to 16"),
    (dict(scale=17), "from 1 to 16"),
    (dict(scale=float("nan")), "number from 1 to 16"),
    (dict(scale="big"), "number from 1 to 16"),
    (dict(size=(6, 100)), "smaller than the input"),
    (dict(size=(0, 5)), "must be positive"),
    (dict(size=(200, 5)), "more than x16"),
    (dict(long_side=3), "smaller than the input"),
    (dict(long_side=-5), "positive number of pixels"),
    (dict(megapixels=0), "positive number"),
    (dict(scale=2, long_side=40), "not scale and long side"),
])
def test_bad_factors_and_sizes_are_clear_errors(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        upscale_image(model, picture(), steps=1, **kwargs)


@pytest.mark.parametrize("text,parsed", [
    ("", {}), ("  ", {}), ("2.5x", {"scale": 2.5}), ("x8", {"scale": 8.0}), ("1000", {"long_side": 1000}),
    ("1920x1080", {"size": (1080, 1920)}), ("4 MP", {"megapixels": 4.0}), ("0.5mp", {"megapixels": 0.5}),
])
def test_target_text(text, parsed):
    assert parse_target(text) == parsed


def test_unreadable_target_text_says_what_is_accepted():
    with pytest.raises(ValueError, match="'1920x1080' \\(width x height\\)"):
        parse_target("big please")
