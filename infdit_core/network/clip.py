"""The CLIP ViT-L-14 image vector that conditions the released model (section 5 of the reference).

The tower is open_clip's plain-GELU VisionTransformer (not QuickGELU), built with no pretrained
download and filled from the Inf-DiT checkpoint or from a separate open_clip weights file.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import resize_bicubic

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISUAL_PREFIX = "visual."


def build_clip_visual(visual_state: dict[str, torch.Tensor]) -> nn.Module:
    """An open_clip VisionTransformer shaped like `visual_state` (keys without the `visual.` prefix)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    conv = visual_state["conv1.weight"]  # (width, 3, patch, patch)
    width, patch = conv.shape[0], conv.shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in visual_state if k.startswith("transformer.resblocks."))
    grid = int(round((visual_state["positional_embedding"].shape[0] - 1) ** 0.5))
    mlp = visual_state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    cfg = CLIPVisionCfg(
        layers=layers, width=width, head_width=64, mlp_ratio=mlp / width, patch_size=patch, image_size=grid * patch
    )
    tower = _build_vision_tower(visual_state["proj"].shape[1], cfg, quick_gelu=False)
    tower.load_state_dict(visual_state, strict=True)
    return tower.eval().requires_grad_(False)


def clip_preprocess(lr: torch.Tensor) -> torch.Tensor:
    """LR image (B, 3, h, w) in [-1, 1] -> normalised (B, 3, 224, 224), like torchvision's
    Resize(224, BICUBIC) + CenterCrop(224) on a tensor."""
    x = (lr.float() + 1) / 2
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    long_new = int(CLIP_SIZE * long / short)  # truncated, as torchvision does
    size = (CLIP_SIZE, long_new) if h <= w else (long_new, CLIP_SIZE)
    x = resize_bicubic(x, size)
    nh, nw = x.shape[-2:]
    top, left = int(round((nh - CLIP_SIZE) / 2)), int(round((nw - CLIP_SIZE) / 2))
    if nh < CLIP_SIZE or nw < CLIP_SIZE:  # cannot happen after the resize, kept as a guard
        raise ValueError(f"CLIP input resized to {nh}x{nw}, smaller than {CLIP_SIZE}")
    x = x[:, :, top:top + CLIP_SIZE, left:left + CLIP_SIZE]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_vector(tower: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) LR in [-1, 1] -> (B, D) unit vectors (normalised twice, as the reference does)."""
    dtype = next(tower.parameters()).dtype
    feats = tower(clip_preprocess(lr).to(dtype)).float()
    return F.normalize(F.normalize(feats, dim=-1), dim=-1)
