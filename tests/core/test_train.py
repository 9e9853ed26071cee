"""Training: a few steps lower the loss on a fixed batch, and a resumed run equals an uninterrupted one."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from infdit_core import load_inf_dit
from infdit_core.cli import build_parser
from infdit_core.training.train import edm_loss, train


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A few smooth synthetic photos (so the test needs no downloads and no scikit-image)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:320] / 40.0
    for i in range(3):
        a, b = rng.uniform(0.5, 2, size=2)
        img = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(a * xx * b * 0.3 + yy)], -1)
        img = (img * 0.4 + 0.5 + rng.normal(0, 0.03, img.shape)).clip(0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def train_args(out, images, *extra):
    return build_parser().parse_args(
        ["train", "--out", str(out), "--images", str(images), "--layers", "1", "--hidden", "32", "--heads", "2",
         "--batch", "2", "--crop", "256", "--warmup", "1", "--log-every", "1", "--save-every", "2", "--threads", "2",
         "--seed", "3", *extra]
    )


def fixed_loss(model_path, images):
    """Loss on one fixed batch with fixed noise levels: comparable across checkpoints."""
    from infdit_core.training.data import CropSampler, folder_image_paths, load_rgb
    from infdit_core.training.train import training_batch

    model = load_inf_dit(model_path)
    args = train_args("unused", images)
    sampler = CropSampler([load_rgb(p) for p in folder_image_paths(images)], 256)
    gen = torch.Generator().manual_seed(123)
    y, u, l = training_batch(sampler, args, gen, torch.device("cpu"))
    with torch.no_grad():
        return edm_loss(model, y, u, l, torch.Generator().manual_seed(7), -1.0, 1.4, False).item()


def test_a_few_steps_lower_the_loss(tmp_path, image_folder):
    before = tmp_path / "before"
    train(train_args(before, image_folder, "--steps", "0"))
    after = tmp_path / "after"
    train(train_args(after, image_folder, "--steps", "12", "--lr", "2e-3", "--ema", "0"))
    assert fixed_loss(after / "model.safetensors", image_folder) < 0.9 * fixed_loss(before / "model.safetensors", image_folder)
    log = (after / "train_log.csv").read_text(encoding="utf-8").splitlines()
    assert log[0] == "step,minutes,loss,lr" and len(log) == 13


def test_resume_is_exact(tmp_path, image_folder):
    straight = tmp_path / "straight"
    train(train_args(straight, image_folder, "--steps", "4", "--ema", "0.5"))
    split = tmp_path / "split"
    train(train_args(split, image_folder, "--steps", "2", "--ema", "0.5"))
    train(train_args(split, image_folder, "--steps", "4", "--ema", "0.5", "--resume"))
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(straight / "train_state.pt", weights_only=True)
    state_b = torch.load(split / "train_state.pt", weights_only=True)
    assert state_a["step"] == state_b["step"] == 4
    assert all(torch.equal(state_a["model"][k], state_b["model"][k]) for k in state_a["model"])


def test_the_saved_model_carries_its_config(tmp_path, image_folder):
    out = tmp_path / "cfg"
    train(train_args(
        out, image_folder, "--steps", "1", "--residual", "--lr-input-unscaled", "--sampler-sigma-max", "0.5",
        "--sigma-data", "0.125",
    ))
    cfg = load_inf_dit(out / "model.safetensors").config
    assert cfg.residual and not cfg.lr_input_scaled and cfg.vector_dim == 0
    assert cfg.sigma_max == 0.5 and cfg.sigma_data == 0.125


def test_init_keeps_the_weights_and_takes_new_noise_settings(tmp_path, image_folder):
    first = tmp_path / "first"
    train(train_args(first, image_folder, "--steps", "1", "--residual", "--hidden", "48"))
    tuned = tmp_path / "tuned"
    train(train_args(
        tuned, image_folder, "--steps", "0", "--init", str(first / "model.safetensors"),
        "--sigma-data", "0.2", "--sampler-sigma-max", "2",
    ))
    before, after = load_inf_dit(first / "model.safetensors"), load_inf_dit(tuned / "model.safetensors")
    assert after.config == dataclasses.replace(before.config, sigma_data=0.2, sigma_max=2.0)
    assert after.config.hidden == 48 and after.config.residual  # the architecture comes from the file
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_loss_weight_follows_the_models_sigma_data(tmp_path, image_folder):
    """Same weights, same batch, same noise: only sigma_data differs, and so does the weighted loss."""
    from infdit_core.training.data import CropSampler, folder_image_paths, load_rgb
    from infdit_core.network.precond import edm_loss_weight
    from infdit_core.training.train import training_batch

    out = tmp_path / "m"
    train(train_args(out, image_folder, "--steps", "0", "--residual"))
    model = load_inf_dit(out / "model.safetensors")
    sampler = CropSampler([load_rgb(p) for p in folder_image_paths(image_folder)], 256)
    y, u, l = training_batch(sampler, train_args("unused", image_folder), torch.Generator().manual_seed(1), "cpu")
    for sigma_data in (0.5, 0.125):
        model.config = dataclasses.replace(model.config, sigma_data=sigma_data)
        with torch.no_grad():
            loss = edm_loss(model, y, u, l, torch.Generator().manual_seed(5), -1.0, 1.4, False).item()
            g = torch.Generator().manual_seed(5)
            sigma = torch.exp(torch.randn(2, generator=g) * 1.4 - 1.0)
            noise = torch.randn(y.shape, generator=g) * sigma.view(-1, 1, 1, 1)
            per_sample = ((model(y + noise, sigma, u, l) - y) ** 2).mean(dim=(1, 2, 3))
        assert loss == pytest.approx((edm_loss_weight(sigma, sigma_data) * per_sample).mean().item(), rel=1e-5)


def test_crop_must_cover_two_blocks(tmp_path, image_folder):
    with pytest.raises(SystemExit, match="2x2 blocks"):
        train(train_args(tmp_path / "x", image_folder, "--crop", "128"))
