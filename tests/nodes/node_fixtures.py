"""Tiny Inf-DiT checkpoints built by the tests themselves, and the node pack set up without ComfyUI.

A plain module imported by the test files, not a conftest.py: tests/conftest.py is imported as the module
`conftest`, and a second conftest.py here would replace it in sys.modules for the core tests."""
import pytest
import torch

from infdit_core import InfDiT, InfDiTConfig
from infdit_core.checkpoints.checkpoint import official_state_dict, save_model
from nodes import comfy_adapter

TINY = InfDiTConfig(layers=1, hidden=64, heads=2, vector_dim=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """models/inf_dit with the same tiny model as .safetensors and as the official DeepSpeed .pt."""
    root = tmp_path_factory.mktemp("inf_dit")
    torch.manual_seed(0)
    model = InfDiT(TINY)
    model.initialize_weights()
    with torch.no_grad():  # initialize_weights zeroes the output layer: make the model do something
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    save_model(model, root / "tiny.safetensors")
    (root / "official").mkdir()
    torch.save({"module": official_state_dict(model)}, root / "official" / "mp_rank_00_model_states.pt")
    (root / "notes.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # valid header, no tensors
    (root / "broken.pt").write_bytes(b"not a checkpoint at all")
    return root


@pytest.fixture(autouse=True)
def folders(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(comfy_adapter, "FALLBACK_FOLDERS", {"inf_dit": [str(model_dir)], "clip_vision": [str(tmp_path)]})
    monkeypatch.setattr(comfy_adapter, "_interrupt_requested", False)


@pytest.fixture(scope="session")
def tiny_handle(model_dir):
    from nodes import load

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comfy_adapter, "FALLBACK_FOLDERS", {"inf_dit": [str(model_dir)], "clip_vision": []})
        return load.load("tiny.safetensors", "fp32").outputs[0]
