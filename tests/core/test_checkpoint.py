"""Checkpoints: the official .pt and .safetensors load strictly, convert round-trips, bad files say so."""
import argparse

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, lr_image, random_model, write_official_pt, write_safetensors
from infdit_core import CheckpointError, InfDiTConfig, convert, inspect_checkpoint, load_inf_dit, sample
from infdit_core.checkpoints.checkpoint import official_state_dict
from infdit_core.network.layers import rotary_table


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=5)


def unused_entries(cfg: InfDiTConfig, rotary_size: int = 64):
    """What the release stores but inference never reads (rotary tables, position table, k norms, text CLIP)."""
    cos, sin = rotary_table(cfg.head_dim, rotary_size)
    extra = {
        "mixins.adaln_layer.rope.freqs_cos": cos,
        "mixins.adaln_layer.rope.freqs_sin": sin,
        "transformer.position_embeddings.weight": torch.randn(256, cfg.hidden),
        "image_encoder.model.token_embedding.weight": torch.randn(10, 8),
    }
    for i in range(cfg.layers):
        extra[f"mixins.adaln_layer.k_layer_norm.{i}.weight"] = torch.ones(cfg.head_dim)
        extra[f"mixins.adaln_layer.k_layer_norm.{i}.bias"] = torch.zeros(cfg.head_dim)
    return extra


def output(model):
    return sample(model, lr_image(32, 40), steps=1, seed=3, block_batch=2)


def same(a, b):
    """Equal up to float summation order (a loaded tensor's memory layout may pick another kernel)."""
    return (a - b).abs().max().item() <= 2e-5 * b.abs().max().item()


def test_official_pt_loads_strictly_and_gives_the_in_memory_output(model, tmp_path):
    path = write_official_pt(model, tmp_path / "mp_rank_00_model_states.pt", unused_entries(TINY))
    loaded = load_inf_dit(path)
    assert loaded.config.layers == 2 and loaded.config.hidden == 32 and loaded.config.heads == 2
    assert loaded.config.vector_dim == 0
    assert same(output(loaded), output(model))


def test_config_comes_from_the_shapes_with_no_flags(tmp_path):
    cfg = InfDiTConfig(layers=3, hidden=48, heads=3, vector_dim=0)
    path = write_official_pt(random_model(cfg), tmp_path / "m.pt")
    got = inspect_checkpoint(path)
    assert (got.layers, got.hidden, got.heads, got.vector_dim) == (3, 48, 3, 0)


def test_safetensors_loads_and_matches(model, tmp_path):
    loaded = load_inf_dit(write_safetensors(model, tmp_path / "m.safetensors"))
    assert same(output(loaded), output(model))


def test_convert_round_trips_exactly_and_drops_what_inference_never_reads(model, tmp_path):
    src = write_official_pt(model, tmp_path / "mp_rank_00_model_states.pt", unused_entries(TINY))
    dst = tmp_path / "infdit.safetensors"
    info = convert(src, dst)
    written = load_file(dst)
    official = official_state_dict(model)
    assert set(written) == set(official)
    assert all(torch.equal(written[k], official[k]) for k in official)
    assert info["dropped"] == len(unused_entries(TINY))
    assert same(output(load_inf_dit(dst)), output(model))


def test_convert_to_bf16_casts_every_weight(model, tmp_path):
    src = write_official_pt(model, tmp_path / "m.pt")
    dst = tmp_path / "m_bf16.safetensors"
    convert(src, dst, "bf16")
    written = load_file(dst)
    assert all(v.dtype == torch.bfloat16 for v in written.values())
    official = official_state_dict(model)
    assert all(torch.equal(written[k], official[k].to(torch.bfloat16)) for k in official)


def test_a_wrong_rotary_table_is_refused(model, tmp_path):
    extra = unused_entries(TINY)
    extra["mixins.adaln_layer.rope.freqs_cos"] = extra["mixins.adaln_layer.rope.freqs_cos"].double().float() + 1e-3
    path = write_official_pt(model, tmp_path / "m.pt", extra)
    with pytest.raises(CheckpointError, match="rotary table"):
        load_inf_dit(path)


def one_line_error(path, match):
    with pytest.raises(CheckpointError) as info:
        load_inf_dit(path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert match in message, message
    return message


def test_missing_file(tmp_path):
    one_line_error(tmp_path / "nope.safetensors", "not found")


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error(tmp_path / "empty.pt", "empty")


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_truncated_file(model, tmp_path, fmt):
    path = write_official_pt(model, tmp_path / "m.pt") if fmt == "pt" else write_safetensors(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    one_line_error(path, "truncated or corrupt")


def test_sdxl_checkpoint(tmp_path):
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77),
            "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3),
        },
        str(path),
    )
    msg = one_line_error(path, "Stable Diffusion")
    assert "expected the official Inf-DiT" in msg


def test_lora(tmp_path):
    path = tmp_path / "detail_lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8), "lora_unet_down_blocks_0.alpha": torch.tensor(4.0)}, str(path))
    one_line_error(path, "a LoRA")


def test_pickle_with_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"module": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1e-4)}, path)
    one_line_error(path, "not loaded for safety")


def test_missing_and_unexpected_keys_are_named(model, tmp_path):
    state = dict(official_state_dict(model))
    del state["transformer.layers.1.mlp.dense_h_to_4h.weight"]
    state["mixins.adaln_layer.something_new"] = torch.zeros(3)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    msg = one_line_error(path, "missing 1 keys")
    assert "transformer.layers.1.mlp.dense_h_to_4h.weight" in msg and "something_new" in msg
    del state["mixins.final_layer.linear.weight"]  # a key the shapes are read from
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    one_line_error(path, "missing key 'mixins.final_layer.linear.weight'")


def test_clip_model_without_clip_weights_says_which_file_to_get(tmp_path):
    cfg = InfDiTConfig(layers=1, hidden=32, heads=2, vector_dim=16)
    path = write_official_pt(random_model(cfg), tmp_path / "m.pt")
    msg = one_line_error(path, "ViT-L-14")
    assert "clip_vision" in msg or "--clip" in msg
    with pytest.raises(CheckpointError, match="not found"):
        load_inf_dit(path, clip_path=tmp_path / "missing_clip.safetensors")


def test_convert_failure_leaves_no_output(tmp_path):
    src = tmp_path / "bad.pt"
    src.write_bytes(b"\x80garbage")
    dst = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError):
        convert(src, dst)
    assert list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_differs_from_fp32_by_rounding_only(model, tmp_path, dtype):
    path = write_safetensors(model, tmp_path / "m.safetensors")
    ref = output(load_inf_dit(path))
    low = output(load_inf_dit(path, dtype=dtype))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max().item() < 0.15
