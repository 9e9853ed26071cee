"""dtype "auto": bf16 only where the device multiplies it natively; one rule for CLI, API and node."""
import pytest
import torch

from conftest import TINY, random_model, write_safetensors
from infdit_core import load_inf_dit
from infdit_core.hardware import precision
from infdit_core.cli import _dtype


@pytest.fixture
def no_bf16_probes(monkeypatch):
    """A CPU whose torch reports neither AMX tiles nor AVX512-BF16."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)


def test_cpu_without_native_bf16_gets_fp32(no_bf16_probes, tmp_path):
    assert not precision.cpu_has_native_bf16()
    assert precision.auto_dtype("cpu") == torch.float32
    assert _dtype("auto", "cpu") == torch.float32
    path = write_safetensors(random_model(TINY), tmp_path / "m.safetensors")
    assert load_inf_dit(path, dtype="auto").dtype == torch.float32


@pytest.mark.parametrize("probe", ["_is_amx_tile_supported", "_is_avx512_bf16_supported"])
def test_cpu_with_amx_or_avx512_bf16_gets_bf16(no_bf16_probes, monkeypatch, probe):
    monkeypatch.setattr(torch.cpu, probe, lambda: True)
    assert precision.auto_dtype("cpu") == torch.bfloat16
    assert _dtype("auto", "cpu") == torch.bfloat16


def test_old_torch_without_the_probes_gets_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert precision.auto_dtype("cpu") == torch.float32


def test_explicit_dtypes_and_the_api_default_are_kept(tmp_path):
    assert precision.resolve_dtype("fp16", "cpu") == torch.float16
    assert precision.resolve_dtype(torch.float32, "cpu") == torch.float32
    path = write_safetensors(random_model(TINY), tmp_path / "m.safetensors")
    assert load_inf_dit(path).dtype == torch.float32  # the API default stays the reference's float32
    with pytest.raises(ValueError, match="dtype must be"):
        precision.resolve_dtype("float8", "cpu")
