"""The opt-in float8 frontier: blocks stored as e4m3 with one scale per block, half the bytes of bf16,
and an error against the bf16 frontier within a stated bound on random models."""
import pytest
import torch

from conftest import TINY, lr_image, random_model
from infdit_core.planning.options import BlockOptions
from infdit_core import InfDiTConfig, sample
from infdit_core.network.frontier import KeyValueStore
from infdit_core.network.float8 import FLOAT8, dequantise, quantise
from infdit_core.planning.memory import estimate_peak_bytes

# Measured with the test below: 0.30% (TINY, bf16) - about the bf16-vs-float32 model difference (0.36%).
BOUND = 0.01  # max |float8 - bf16 frontier| / max |bf16 frontier result|


def test_quantise_round_trip_is_within_half_an_e4m3_step():
    t = torch.randn(3, 2, 64, 2, 8) * torch.tensor([0.01, 1.0, 300.0]).view(3, 1, 1, 1, 1)
    q, scale = quantise(t)
    assert q.dtype == FLOAT8 and scale.shape == (3, 2)
    back = dequantise(q, scale, torch.float32)
    # 3 mantissa bits: within 1/16 of each value, or of 2**-9 x scale in e4m3's subnormal range
    limit = torch.maximum(t.abs() / 16, scale.view(3, 2, 1, 1, 1) * 2**-9)
    assert ((back - t).abs() <= limit * 1.0001).all()
    zeros, s = quantise(torch.zeros(1, 4, 4), block_dims=1)
    assert s.item() == 1 and dequantise(zeros, s, torch.float32).abs().max() == 0


def test_the_store_keeps_float8_blocks_and_a_scale_each():
    kv = KeyValueStore(1, keep=True, grid=(2, 2), scan="rows", slots=4, float8=True)
    q, k, v = (torch.randn(2, 2, 1024, 2, 16) for _ in range(3))
    kv.attend(0, [(0, 0), (0, 1)], q, k, v, torch.zeros(4, 2, 16))
    ring_k, _ = kv.ring[0]
    scale_k, _ = kv.scales[0]
    assert ring_k.dtype == FLOAT8 and ring_k.shape == (4, 2, 1024, 2, 16) and scale_k.shape == (4, 2)
    back = kv._load(0, 0, ring_k, 1, 1)[0]  # block (0, 1) is scan position 1: ring slot 1
    assert back.dtype == k.dtype and (back - k[:, 1]).abs().max() <= k.abs().max() / 16
    assert not torch.equal(back, k[:, 1])  # really rounded to float8


@pytest.mark.parametrize("offload", [False, True])
def test_float8_frontier_stays_within_the_bound_of_the_bf16_one(offload):
    model = random_model(TINY, seed=1).to(torch.bfloat16)
    lr = lr_image(64, 96, seed=3)  # 2 x 3 blocks, one at a time: every neighbour comes from the frontier
    bf16 = sample(model, lr, steps=2, block_batch=1, offload_frontier=offload)
    f8 = sample(model, lr, steps=2, block_batch=1, offload_frontier=offload, float8_frontier=True)
    error = ((f8 - bf16).abs().max() / bf16.abs().max()).item()
    assert 0 < error <= BOUND


def test_the_estimate_halves_the_frontier():
    cfg = InfDiTConfig.released()
    bf16 = estimate_peak_bytes(cfg, 8192, 8192, 1, blocks=BlockOptions(images="host"))
    f8 = estimate_peak_bytes(cfg, 8192, 8192, 1, blocks=BlockOptions(images="host", float8_frontier=True))
    assert abs(f8.frontier / bf16.frontier - 0.5) < 0.001
    off = estimate_peak_bytes(cfg, 16384, 16384, 1, blocks=BlockOptions(offload_frontier=True, images="host", float8_frontier=True))
    assert off.frontier == 0 and off.host < estimate_peak_bytes(cfg, 16384, 16384, 1, blocks=BlockOptions(
                                                                 offload_frontier=True, images="host")).host
