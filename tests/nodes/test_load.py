"""Load Inf-DiT end to end on tiny checkpoints: both formats, the cache, dtypes, and readable errors."""
import pytest
import torch
from node_fixtures import folders, model_dir, tiny_handle  # noqa: F401 (fixtures)

from infdit_core import CheckpointError
from nodes import load


def test_lists_models_in_the_folder(model_dir):
    options = load.model_options()
    assert "tiny.safetensors" in options
    assert "official/mp_rank_00_model_states.pt" in options


def test_bundled_demo_is_offered_when_present(tmp_path, monkeypatch, model_dir):
    demo = tmp_path / "infdit-demo.safetensors"
    monkeypatch.setattr(load, "DEMO_MODEL_PATH", demo)
    assert load.DEMO_OPTION not in load.model_options()
    demo.write_bytes((model_dir / "tiny.safetensors").read_bytes())
    assert load.DEMO_OPTION in load.model_options()
    handle = load.load(load.DEMO_OPTION, "fp32").outputs[0]
    assert handle.path == str(demo)


def test_safetensors_and_official_pt_give_the_same_model():
    a = load.load("tiny.safetensors", "fp32").outputs[0]
    b = load.load("official/mp_rank_00_model_states.pt", "fp32").outputs[0]
    assert a is not b
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.config.layers == 1 and a.config.hidden == 64


def test_same_file_is_loaded_once_per_dtype():
    first = load.load("tiny.safetensors", "fp32")
    again = load.load("tiny.safetensors", "fp32")
    assert again.outputs[0] is first.outputs[0] and again.extra["cached"]
    half = load.load("tiny.safetensors", "bf16").outputs[0]
    assert half is not first.outputs[0]
    assert half.model.dtype == torch.bfloat16


def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch):
    """auto = bf16 on a CPU that multiplies bf16 natively (AMX / AVX512-BF16), fp32 on one that doesn't."""
    from infdit_core.hardware import precision

    for native, expected in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert load.load("tiny.safetensors", "auto").outputs[0].model.dtype == expected


def test_missing_file_names_the_folder():
    with pytest.raises(FileNotFoundError, match="models/inf_dit"):
        load.load("gone.safetensors", "fp32")


def test_nothing_selected_says_where_to_put_models():
    with pytest.raises(FileNotFoundError, match="models/inf_dit"):
        load.load("", "fp32")


@pytest.mark.parametrize("name", ["notes.safetensors", "broken.pt"])
def test_wrong_file_is_a_one_line_checkpoint_error(name):
    with pytest.raises(CheckpointError) as err:
        load.load(name, "fp32")
    assert name in str(err.value) and "\n" not in str(err.value)


def test_missing_clip_file_is_reported():
    with pytest.raises(FileNotFoundError, match="clip_vision"):
        load.load("tiny.safetensors", "fp32", clip_name="vit-l-14.safetensors")


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="weight_dtype"):
        load.load("tiny.safetensors", "fp8")
