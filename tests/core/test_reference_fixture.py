"""End to end against the reference implementation's own output (tests/fixtures/reference-tiny)."""
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import FIXTURES
from infdit_core import load_inf_dit, sample

CASE = FIXTURES / "reference-tiny"


@pytest.fixture(scope="module")
def case():
    tensors = load_file(CASE / "case.safetensors")
    with safe_open(CASE / "case.safetensors", "pt") as f:
        meta = f.metadata()
    return tensors, meta


@pytest.fixture(scope="module")
def model():
    return load_inf_dit(CASE / "mp_rank_00_model_states.pt")


def relative_error(out, expected):
    return ((out - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("block_batch", [None, 1])
def test_matches_reference_output(case, model, block_batch):
    tensors, meta = case
    assert int(meta["scale"]) == 4 and int(meta["steps"]) == 3
    # The release's sampler, named: the default solver is another (solvers.DEFAULT_SOLVER).
    out = sample(model, tensors["lr"], scale=4, steps=3, noise=tensors["noise"], block_batch=block_batch, sampler="heun")
    assert out.shape == tensors["expected"].shape
    assert relative_error(out, tensors["expected"]) <= 1e-4


def test_plain_bicubic_would_not_match(case, model, monkeypatch):
    """The check is sharp enough to catch a quiet trap: bicubic without antialias changes the output."""
    import torch.nn.functional as F

    from infdit_core.sampling import pipeline

    tensors, _ = case
    monkeypatch.setattr(
        pipeline, "upsample", lambda x, size: F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    )
    out = sample(model, tensors["lr"], scale=4, steps=3, noise=tensors["noise"], sampler="heun")
    assert relative_error(out, tensors["expected"]) > 1e-3
