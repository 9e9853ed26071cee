"""The bundled demo model: it is there, small, loads strictly, and upscales."""
import pytest
import torch

from infdit_core import DEMO_MODEL_PATH, load_inf_dit, upscale_image


def test_demo_model_loads_strictly_and_upscales():
    assert DEMO_MODEL_PATH.is_file(), f"the bundled demo model is missing: {DEMO_MODEL_PATH}"
    assert DEMO_MODEL_PATH.stat().st_size <= 20 * 1024**2
    model = load_inf_dit(DEMO_MODEL_PATH)  # strict: every key and shape checked
    cfg = model.config
    assert cfg.vector_dim == 0 and cfg.block_size == 128
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 10e6
    image = torch.rand(1, 8, 12, 3, generator=torch.Generator().manual_seed(0))
    out = upscale_image(model, image, steps=2)
    assert out.shape == (1, 32, 48, 3) and torch.isfinite(out).all()


def test_demo_model_beats_bicubic_on_a_held_out_crop():
    """What the README claims, on one 256 px crop it never trained on: with its own sampler settings
    the demo model's PSNR is above bicubic's and its output carries more fine detail."""
    pytest.importorskip("skimage", reason="the held-out photos come from scikit-image")
    from infdit_core.training.data import downscale
    from infdit_core.training.evaluate import held_out_images, psnr, sharpness
    from infdit_core.sampling.pipeline import upsample

    name, hr = held_out_images(crop=256)[0]
    lr = downscale(hr, 4).clamp(0, 1)
    bicubic = upsample(lr, hr.shape[-2:]).clamp(0, 1)
    out = upscale_image(load_inf_dit(DEMO_MODEL_PATH), lr.movedim(1, -1), seed=0).movedim(-1, 1)
    assert psnr(out, hr) > psnr(bicubic, hr) + 0.1, name
    assert sharpness(out, hr) > 2 * sharpness(bicubic, hr), name

