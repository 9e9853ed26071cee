"""The full-size images a real run keeps alive at once: exactly what the estimator counts per solver and
colour fix (memory.SOLVER_IMAGE_BUFFERS / COLOR_FIX_BUFFERS), so huge outputs are planned right."""
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY, lr_image, random_model
from infdit_core import sample
from infdit_core.sampling import solvers
from infdit_core.planning.memory import COLOR_FIX_BUFFERS, SOLVER_IMAGE_BUFFERS, image_buffers


class FullSizeImages(TorchDispatchMode):
    """Counts, after every torch operation, the distinct storages of live tensors of one shape (the
    padded output image), and keeps the largest count seen."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.refs, self.peak = tuple(shape), [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and tuple(t.shape) == self.shape:
                self.refs.append(weakref.ref(t))
        self.refs = [r for r in self.refs if r() is not None]
        self.peak = max(self.peak, len({r().untyped_storage().data_ptr() for r in self.refs}))
        return out


@pytest.fixture(scope="module")
def model():
    return random_model(TINY)


def peak_images(model, lr, **kwargs) -> int:
    h, w = lr.shape[-2:]
    counter = FullSizeImages((1, 3, 4 * h, 4 * w))
    with counter:
        sample(model, lr, block_batch=1, **kwargs)
    return counter.peak


@pytest.mark.parametrize("name", solvers.SOLVERS)
def test_each_solver_keeps_the_images_the_estimator_counts(model, name):
    # 2x3 blocks, so no block-sized tensor has the image's shape; 5 steps reach every method's full order
    assert peak_images(model, lr_image(64, 96), steps=5, sampler=name) == SOLVER_IMAGE_BUFFERS[name]


@pytest.mark.parametrize("fix", ["wavelet", "adain", "lab"])
def test_the_colour_fix_keeps_the_images_the_estimator_counts(model, fix, monkeypatch):
    monkeypatch.setattr("infdit_core.sampling.color.STRIP_ROWS", 128)  # several strips in a small image
    got = peak_images(model, lr_image(64, 96), steps=1, sampler="euler", color_fix=fix)
    assert got == max(SOLVER_IMAGE_BUFFERS["euler"], COLOR_FIX_BUFFERS[fix]) == image_buffers("euler", fix)


def test_in_place_solvers_leave_a_callers_noise_alone(model):
    lr = lr_image(32, 32)
    noise = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    kept = noise.clone()
    a = sample(model, lr, steps=2, noise=noise)
    assert torch.equal(noise, kept) and torch.equal(a, sample(model, lr, steps=2, noise=noise))


def test_strip_wise_colour_fixes_equal_the_whole_image_ones(monkeypatch):
    from infdit_core.sampling import color

    g = torch.Generator().manual_seed(0)
    out, ref = torch.rand(2, 3, 300, 200, generator=g) * 2 - 1, torch.rand(2, 3, 300, 200, generator=g) * 2 - 1
    monkeypatch.setattr(color, "STRIP_ROWS", 64)
    for name, whole in (("lab", color.lab_fix), ("adain", color.adain_fix)):
        kept = out.clone()
        assert torch.allclose(color.apply_color_fix(name, out, ref), whole(out, ref), atol=1e-5)
        assert torch.equal(out, kept)  # not in place unless asked
        strips = color.apply_color_fix(name, out.clone(), ref, in_place=True)
        assert torch.allclose(strips, whole(out, ref), atol=1e-5)


def test_an_estimate_not_told_the_solver_counts_the_default_solvers_images(model):
    from infdit_core.planning.memory import DEFAULT_IMAGE_BUFFERS

    assert DEFAULT_IMAGE_BUFFERS == SOLVER_IMAGE_BUFFERS[solvers.DEFAULT_SOLVER] == image_buffers(solvers.DEFAULT_SOLVER, "none")
    assert peak_images(model, lr_image(64, 96), steps=5) == DEFAULT_IMAGE_BUFFERS  # sample() with no sampler named
