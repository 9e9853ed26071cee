"""The FLOP count from the config equals torch's own FLOP counter on real evaluations."""
import pytest
import torch
from conftest import random_model

from infdit_core import InfDiTConfig
from infdit_core.sampling.denoiser import BlockwiseDenoiser
from infdit_core.network.flops import evaluation_flops, torch_counted_flops
from infdit_core.planning.scheduler import plan_blocks

CONFIGS = [
    InfDiTConfig(layers=2, hidden=32, heads=2, vector_dim=0),
    InfDiTConfig(layers=1, hidden=64, heads=4, vector_dim=16, patch_size=2),
]


@pytest.mark.parametrize("config, grid, block_batch", [(CONFIGS[0], (2, 3), 4), (CONFIGS[1], (3, 1), 1)],
                         ids=["plain-2x3", "vector-patch2-3x1"])
def test_count_from_config_equals_flop_counter(config, grid, block_batch):
    model = random_model(config)
    rows, cols = grid
    bs = config.block_size
    x = torch.randn(2, 3, rows * bs, cols * bs)
    u, lr = torch.randn_like(x), torch.randn(2, 3, rows * bs // 4, cols * bs // 4)
    vector = torch.randn(2, config.vector_dim) if config.vector_dim else None
    den = BlockwiseDenoiser(model, u, lr, vector, plan_blocks(rows, cols, block_batch))
    with torch.inference_mode():
        counted = torch_counted_flops(lambda: den(x, torch.tensor(1.0)))
    expected = evaluation_flops(config, rows, cols, batch=2)
    assert counted == expected.total
    assert expected.attention > 0 and expected.conv > 0 and expected.linear > 0


def test_released_evaluation_at_1024px_is_dominated_by_layer_matmuls_and_attention():
    cfg = InfDiTConfig.released()
    t, c = 1024, 1280
    per_block = cfg.layers * (2 * t * c * 12 * c + 16 * t * t * c + 8 * t * c)  # qkv+proj+MLP, QK^T+AV over 4T keys, q.e_g
    flops = evaluation_flops(cfg, 8, 8).total
    assert 64 * per_block < flops < 1.02 * 64 * per_block  # 112.8 TFLOP; layer-0 cross-attention etc. < 2%
