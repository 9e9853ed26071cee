"""Small random Inf-DiT models that the tests build themselves, and ways to write them to disk."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infdit_core import InfDiT, InfDiTConfig  # noqa: E402
from infdit_core.checkpoints.checkpoint import official_state_dict, save_model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def random_model(config: InfDiTConfig, seed: int = 0) -> InfDiT:
    """A model whose every parameter is drawn at random, so every path of the network shows in its
    output (a freshly initialised DiT has zeroed adaLN and output layers and hides most of them)."""
    torch.manual_seed(seed)
    model = InfDiT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # LayerNorm gains: around 1
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 / max(p.shape[-1], 1) ** 0.5))
    return model.eval()


TINY = InfDiTConfig(layers=2, hidden=32, heads=2, vector_dim=0)


@pytest.fixture
def tiny_model() -> InfDiT:
    return random_model(TINY)


def write_official_pt(model: InfDiT, path: Path, extra: dict | None = None) -> Path:
    """The official layout: a pickle whose `module` entry is the state dict under official names."""
    state = dict(official_state_dict(model))
    state.update(extra or {})
    torch.save({"module": state, "iteration": 1}, path)
    return path


def write_safetensors(model: InfDiT, path: Path) -> Path:
    save_model(model, path)
    return path


def lr_image(h: int, w: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A smooth-ish LR image in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, 3, h, w), generator=g) * 2 - 1
    return x.clamp(-1, 1)


def reference_block_attention(q, k4, v4, group_embed):
    """Attention of n blocks over their four key groups, the plain way (the oracle of the frontier tests).

    q: (B, n, T, h, d); k4, v4: (B, n, 4, T, h, d); group_embed: (4, h, d) added to every key of a
    group (after rotary), values get nothing. Returns (B, n, T, h*d).
    """
    b, n, t, h, d = q.shape
    k = k4 + group_embed[None, None, :, None].to(k4.dtype)
    q = q.reshape(b * n, t, h, d).transpose(1, 2)  # (Bn, h, T, d)
    k = k.reshape(b * n, 4 * t, h, d).transpose(1, 2)  # (Bn, h, 4T, d)
    v = v4.reshape(b * n, 4 * t, h, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), no mask
    return out.transpose(1, 2).reshape(b, n, t, h * d)
