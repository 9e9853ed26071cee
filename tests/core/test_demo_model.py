"""The bundled demo model: it is there, small, loads strictly, and upscales."""
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
