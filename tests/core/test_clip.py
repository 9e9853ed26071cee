"""CLIP preprocessing arithmetic against torchvision's own Resize + CenterCrop, and the vector."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

from infdit_core.network.clip import CLIP_MEAN, CLIP_STD, clip_preprocess, clip_vector


@pytest.mark.parametrize("size", [(64, 96), (300, 200), (17, 500), (224, 224), (1024, 1023)])
def test_preprocess_equals_torchvision(size):
    lr = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tv = Normalize(CLIP_MEAN, CLIP_STD)(CenterCrop(224)(Resize(224, InterpolationMode.BICUBIC, antialias=True)((lr + 1) / 2)))
    ours = clip_preprocess(lr)
    assert ours.shape == (1, 3, 224, 224)
    assert torch.allclose(ours, tv, atol=1e-5)


class FakeTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    def forward(self, x):
        assert x.shape[-2:] == (224, 224)
        return self.proj(x.mean(dim=(2, 3))) * 10


def test_vector_is_unit_length():
    v = clip_vector(FakeTower(), torch.rand(2, 3, 40, 70) * 2 - 1)
    assert v.shape == (2, 4)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-6)


def small_open_clip_tower(out_dim=16):
    """A small open_clip VisionTransformer (plain GELU), shaped like ViT-L-14 but narrow and shallow."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    torch.manual_seed(0)
    cfg = CLIPVisionCfg(layers=1, width=128, head_width=64, patch_size=14, image_size=224)  # ViT-L heads are 64 wide
    return _build_vision_tower(out_dim, cfg, quick_gelu=False).eval()


def test_clip_model_from_the_checkpoint_or_a_separate_open_clip_file(tmp_path):
    from safetensors.torch import save_file

    from conftest import random_model, write_official_pt
    from infdit_core import InfDiTConfig, load_inf_dit, sample

    tower = small_open_clip_tower()
    visual = {k: v.detach().clone().contiguous() for k, v in tower.state_dict().items()}
    model = random_model(InfDiTConfig(layers=1, hidden=32, heads=2, vector_dim=16), seed=1)
    with_clip = write_official_pt(model, tmp_path / "with_clip.pt", {"image_encoder.model.visual." + k: v for k, v in visual.items()})
    without = write_official_pt(model, tmp_path / "without_clip.pt")
    clip_file = tmp_path / "open_clip_model.safetensors"
    save_file({"visual." + k: v for k, v in visual.items()}, str(clip_file))

    lr = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(2)) * 2 - 1
    a = load_inf_dit(with_clip)
    b = load_inf_dit(without, clip_path=clip_file)
    expected = F.normalize(tower(Normalize(CLIP_MEAN, CLIP_STD)(CenterCrop(224)(Resize(224, antialias=True, interpolation=InterpolationMode.BICUBIC)((lr + 1) / 2)))), dim=-1)
    assert torch.allclose(clip_vector(a.clip, lr), expected, atol=1e-5)
    out_a = sample(a, lr, steps=1, seed=0)
    out_b = sample(b, lr, steps=1, seed=0)
    assert out_a.shape == (1, 3, 96, 160) and torch.allclose(out_a, out_b, atol=1e-5)
