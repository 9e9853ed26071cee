"""Workflows saved with 0.1.0 (tests/fixtures/workflows-0.1.0) load with today's nodes and keep their
meaning: scale "4" and "2" are x4 and x2, and inputs added since take their defaults."""
import json
from pathlib import Path

import pytest
import torch
from node_fixtures import folders, model_dir, tiny_handle  # noqa: F401 (fixtures)
from workflow_tools import definitions, to_api

from nodes import upscale

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "workflows-0.1.0"


@pytest.mark.parametrize("path", sorted(OLD.glob("*.json")), ids=lambda p: p.stem)
def test_old_workflow_runs_with_the_same_meaning(tiny_handle, path):
    prompt = to_api(json.loads(path.read_text()), definitions())
    inputs = next(n["inputs"] for n in prompt.values() if n["class_type"] == "InfDiTUpscale")
    assert inputs["scale"] in ("4", "2") and inputs["target"] == ""
    pic = torch.rand(1, 9, 7, 3, generator=torch.Generator().manual_seed(0))
    out = upscale.upscale(tiny_handle, pic, inputs["scale"], 1, 0, None, inputs["target"]).outputs[0]
    s = int(inputs["scale"])
    assert out.shape == (1, 9 * s, 7 * s, 3)
