"""The four key groups at every border, the attention over them, and the LR window at edges."""
import pytest
import torch
import torch.nn.functional as F

from conftest import reference_block_attention as block_attention
from infdit_core.network.attention import lr_window, neighbour_blocks


@pytest.mark.parametrize(
    "block, expected",
    [
        # (self, top-left, left, top), with the reference's clamping
        ((0, 0), [(0, 0), (0, 0), (0, 0), (0, 0)]),  # corner: every group is self
        ((0, 3), [(0, 3), (0, 2), (0, 2), (0, 3)]),  # row 0: top = self, top-left = left
        ((4, 0), [(4, 0), (3, 0), (4, 0), (3, 0)]),  # column 0: left = self, top-left = top
        ((2, 5), [(2, 5), (1, 4), (2, 4), (1, 5)]),  # interior
        ((1, 1), [(1, 1), (0, 0), (1, 0), (0, 1)]),
    ],
)
def test_neighbour_blocks_clamp_at_the_border(block, expected):
    assert list(neighbour_blocks(*block)) == expected


def test_block_attention_equals_a_plain_softmax_over_the_four_groups():
    torch.manual_seed(0)
    b, n, t, h, d = 1, 2, 8, 2, 4
    q = torch.randn(b, n, t, h, d)
    k4, v4 = torch.randn(b, n, 4, t, h, d), torch.randn(b, n, 4, t, h, d)
    group = torch.randn(4, h, d)
    out = block_attention(q, k4, v4, group)
    for blk in range(n):
        for head in range(h):
            keys = torch.cat([k4[0, blk, g, :, head] + group[g, head] for g in range(4)])  # (4t, d)
            vals = torch.cat([v4[0, blk, g, :, head] for g in range(4)])
            weights = torch.softmax(q[0, blk, :, head] @ keys.T / d**0.5, dim=-1)
            expected = weights @ vals
            assert torch.allclose(out[0, blk, :, head * d:(head + 1) * d], expected, atol=1e-5)


@pytest.mark.parametrize("row, col", [(r, c) for r in range(3) for c in range(4)])
def test_lr_window_is_the_zero_padded_feature_map(row, col):
    """Every block of a 3x4 grid (corners, edges, interior) against features computed once on the whole
    LR image and padded with 16 zero features on every side."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 5, kernel_size=2, stride=2)
    lr = torch.randn(1, 3, 3 * 32, 4 * 32)
    feats = F.pad(conv(lr), (16, 16, 16, 16))  # zero *features* outside, not features of zero pixels
    expected = feats[:, :, row * 16:row * 16 + 48, col * 16:col * 16 + 48]
    window = lr_window(conv, lr, row, col, 32)
    assert window.shape == (1, 5, 48, 48)
    assert torch.allclose(window, expected, atol=1e-6)
    if row == 0:
        assert torch.count_nonzero(window[:, :, :16]) == 0
