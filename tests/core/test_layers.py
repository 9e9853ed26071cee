"""Embeddings and small building blocks against independent computations of the reference formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from infdit_core.network.layers import (
    apply_signed_rotary,
    block_rotary,
    layer_norm,
    noise_features,
    pair_swap_index,
    rotary_table,
    signed_rotary,
    unpatchify,
)


def formula_table(head_dim: int, size: int):
    """The rotary table built per axis as section 3.2 of the reference states it, in float32."""
    half = head_dim // 2
    w = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    pos = torch.arange(size)
    ang = (pos.float()[:, None] * w).repeat_interleave(2, dim=-1)  # (size, half)
    rows = ang[:, None, :].expand(size, size, half)
    cols = ang[None, :, :].expand(size, size, half)
    full = torch.cat([rows, cols], dim=-1)
    return full.cos(), full.sin()


def test_rotary_table_is_bit_equal_to_the_formula_for_the_released_head_dim():
    cos, sin = rotary_table(80, 1024)
    ref_cos, ref_sin = formula_table(80, 1024)
    assert cos.shape == (1024, 1024, 80) and cos.dtype == torch.float32
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_rotary_table_in_float64_would_differ():
    """Why float32 matters: a table computed in float64 and rounded is not bit-equal."""
    half = 40
    w64 = 1.0 / (10000 ** (torch.arange(0, half, 2).double() / half))
    ang64 = (torch.arange(1024).double()[:, None] * w64).repeat_interleave(2, -1)
    cos, _ = rotary_table(80, 1024)
    assert not torch.equal(cos[:, 0, :40], ang64.cos().float())


@pytest.mark.parametrize("block", [(0, 0), (2, 5), (31, 31), (32, 1), (40, 77)])
def test_block_rotary_reads_the_table_at_positions_modulo_1024(block):
    head_dim = 16
    cos_t, sin_t = rotary_table(head_dim, 1024)
    r, c = block
    cos, sin = block_rotary(torch.tensor([r]), torch.tensor([c]), head_dim)
    rows = (r * 32 + torch.arange(32)) % 1024
    cols = (c * 32 + torch.arange(32)) % 1024
    expected_cos = cos_t[rows][:, cols].reshape(1024, head_dim)  # tokens row-major in the block
    expected_sin = sin_t[rows][:, cols].reshape(1024, head_dim)
    assert torch.equal(cos[0], expected_cos) and torch.equal(sin[0], expected_sin)


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (a, b) -> (-b, a): the reference's rotary, written plainly."""
    pairs = t.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def test_rotate_half_maps_interleaved_pairs():
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rotate_half(t).tolist() == [-2.0, 1.0, -4.0, 3.0]


@pytest.mark.parametrize("swap", [False, True])
def test_signed_rotary_equals_the_plain_formula(swap):
    torch.manual_seed(0)
    t, cos, sin = torch.randn(2, 16, 3, 8), torch.randn(16, 1, 8), torch.randn(16, 1, 8)
    cos_s, signed_sin = signed_rotary(cos, sin, t.dtype)
    out = apply_signed_rotary(t, cos_s, signed_sin, pair_swap_index(8, t.device) if swap else None)
    assert torch.allclose(out, t * cos + rotate_half(t) * sin, atol=1e-6)


def test_layer_norm_uses_eps_1e_minus_6():
    x = torch.randn(4, 8) * 1e-3  # small variance: eps matters
    assert torch.allclose(layer_norm(x), F.layer_norm(x, (8,), eps=1e-6), atol=1e-6)
    assert not torch.allclose(layer_norm(x), F.layer_norm(x, (8,), eps=1e-5), atol=1e-3)


def test_noise_features_are_cos_then_sin_of_96_frequencies():
    c = torch.tensor([0.3, -1.2])
    e = noise_features(c)
    assert e.shape == (2, 192)
    for k in (0, 1, 50, 95):
        f = (1 / 10000) ** (k / 96)
        assert math.isclose(e[1, k].item(), math.cos(-1.2 * f), abs_tol=1e-6)
        assert math.isclose(e[1, 96 + k].item(), math.sin(-1.2 * f), abs_tol=1e-6)


def test_unpatchify_lays_tokens_out_as_row_col_channel():
    tokens = torch.zeros(1, 1, 1024, 4 * 4 * 3)
    token = 1 * 32 + 2  # token row 1, column 2
    tokens[0, 0, token, (3 * 4 + 1) * 3 + 2] = 1.0  # p_row 3, p_col 1, channel 2
    img = unpatchify(tokens, 4, 3)
    assert img.shape == (1, 1, 3, 128, 128)
    assert img[0, 0, 2, 1 * 4 + 3, 2 * 4 + 1] == 1.0 and img.sum() == 1.0
