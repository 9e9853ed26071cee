"""Images in, images out: any size, batch and channel count; seeds; clear errors for bad input."""
import dataclasses

import pytest
import torch

from conftest import TINY, lr_image, random_model
from infdit_core import InfDiTConfig, block_grid, sample, upscale_image
from infdit_core.sampling import solvers
from infdit_core.sampling.sampler import EvaluationDone
from infdit_core.sampling.pipeline import pad_to_multiple, upsample


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=7)


@pytest.mark.parametrize("size", [(37, 53), (32, 32), (5, 300), (1, 1)])
@pytest.mark.parametrize("scale", [4, 2])
def test_output_is_exactly_scale_times_the_input(model, size, scale):
    h, w = size
    out = sample(model, lr_image(h, w), scale=scale, steps=1, block_batch=4)
    assert out.shape == (1, 3, scale * h, scale * w)
    assert torch.isfinite(out).all()


def test_whole_block_input_uses_the_given_noise_and_the_result_starts_from_u(model):
    lr = lr_image(32, 64)
    noise = torch.zeros(1, 3, 128, 256)
    a = sample(model, lr, steps=2, noise=noise)
    b = sample(model, lr, steps=2, noise=noise)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="noise must have the padded output shape"):
        sample(model, lr, steps=2, noise=torch.zeros(1, 3, 128, 128))


def test_same_seed_same_result_other_seed_other_result(model):
    lr = lr_image(20, 30)
    a, b = sample(model, lr, steps=2, seed=11), sample(model, lr, steps=2, seed=11)
    c = sample(model, lr, steps=2, seed=12)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_batch_items_are_independent(model):
    lr = lr_image(16, 24, batch=2, seed=3)
    noise = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    both = sample(model, lr, steps=1, noise=noise)
    first = sample(model, lr[:1], steps=1, noise=noise[:1])
    assert both.shape == (2, 3, 64, 96)
    assert (both[:1] - first).abs().max().item() < 1e-4


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_upscale_image_keeps_channels_and_range(model, channels):
    image = torch.rand(2, 9, 13, channels, generator=torch.Generator().manual_seed(channels))
    out = upscale_image(model, image, scale=4, steps=1)
    assert out.shape == (2, 36, 52, channels)
    assert out.min() >= 0 and out.max() <= 1
    if channels in (2, 4):  # alpha is upscaled bicubically and reattached
        alpha = image[..., -1:].movedim(-1, 1)
        expected = upsample(alpha, (36, 52)).clamp(0, 1).movedim(1, -1)
        assert torch.allclose(out[..., -1:], expected, atol=1e-6)


def test_without_steps_the_model_samples_with_its_own_number(model):
    """steps=None: the model's own. Its stored Heun steps (config.sampler_steps: 20 for the released model, a demo
    model stores its own) for the release's heun; for the default solver as many evaluations, at most 13."""
    tuned = random_model(dataclasses.replace(TINY, sampler_steps=3), seed=7)

    def evaluations(**kwargs):
        seen = []
        sample(tuned, lr_image(8, 8), callback=lambda e: seen.append(e.evaluations) if isinstance(e, EvaluationDone) else None, **kwargs)
        return seen

    assert evaluations() == [5] * 5  # ipndm: 5 steps, the evaluations of 3 Heun steps
    assert evaluations(sampler="heun") == [5] * 5  # 3 Heun steps = 5 network passes
    assert evaluations(sampler="euler") == [3] * 3
    assert torch.equal(sample(tuned, lr_image(8, 8)), sample(tuned, lr_image(8, 8), steps=5, sampler="ipndm"))
    assert torch.equal(sample(tuned, lr_image(8, 8), sampler="heun"), sample(tuned, lr_image(8, 8), steps=3, sampler="heun"))
    released = InfDiTConfig()
    assert released.sampler_steps == 20
    assert solvers.evaluations_for("heun", solvers.own_steps("heun", released.sampler_steps)) == 39  # the release
    assert solvers.own_steps(solvers.DEFAULT_SOLVER, released.sampler_steps) == 13 == solvers.DEFAULT_EVALUATIONS
    assert solvers.own_steps(solvers.DEFAULT_SOLVER, 1) == 1  # the demo model's one step stays one


def test_padding_reflects_and_replicates_when_too_small():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 1]  # reflect
    assert padded[0, 0, :, 0].tolist() == [0, 3, 0, 0]  # reflect one row, then replicate
    assert block_grid(37, 53) == (2, 2) and block_grid(5, 300, 2) == (1, 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": torch.zeros(1, 4, 8, 8)}, "lr must be a"),
        ({"lr": torch.zeros(3, 8, 8)}, "lr must be a"),
        ({"lr": torch.zeros(1, 3, 0, 8)}, "empty"),
        ({"lr": torch.full((1, 3, 8, 8), float("nan"))}, "NaN"),
        ({"scale": 3}, "scale must be 2 or 4"),
        ({"steps": 0}, "steps must be"),
        ({"scan": "diagonal"}, "scan must be"),
    ],
)
def test_bad_input_is_a_clear_error(model, kwargs, message):
    args = {"lr": lr_image(8, 8), "steps": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample(model, **args)


def test_bad_image_is_a_clear_error(model):
    with pytest.raises(ValueError, match="1 to 4 channels"):
        upscale_image(model, torch.zeros(1, 8, 8, 5), steps=1)
