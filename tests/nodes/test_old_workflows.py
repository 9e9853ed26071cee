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
    prompt = to_api(json.loads(path.read_text(encoding="utf-8")), definitions())
    inputs = next(n["inputs"] for n in prompt.values() if n["class_type"] == "InfDiTUpscale")
    assert inputs["scale"] in ("4", "2") and inputs["target"] == ""
    pic = torch.rand(1, 9, 7, 3, generator=torch.Generator().manual_seed(0))
    out = upscale.upscale(tiny_handle, pic, inputs["scale"], 1, 0, None, inputs["target"]).outputs[0]
    s = int(inputs["scale"])
    assert out.shape == (1, 9 * s, 7 * s, 3)


FIXTURES = sorted(OLD.glob("*.json"))


def upscale_inputs(path):
    prompt = to_api(json.loads(path.read_text(encoding="utf-8")), definitions())
    return next(n["inputs"] for n in prompt.values() if n["class_type"] == "InfDiTUpscale")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_0_1_0_workflows_load_with_their_saved_values_and_new_defaults(path):
    saved = next(n for n in json.loads(path.read_text(encoding="utf-8"))["nodes"] if n["type"] == "InfDiTUpscale")["widgets_values"]
    inputs = upscale_inputs(path)
    # 0.1.0 saved [scale, steps, seed, control]: they keep their meaning; the widgets added later take their defaults
    assert [inputs["scale"], inputs["steps"], inputs["seed"]] == saved[:3]
    assert (inputs["target"], inputs["solver"], inputs["denoise"], inputs["color_fix"]) == ("", "ipndm", 1.0, "none")  # 0.1.0 had no solver: the new default
    assert "sampler" not in inputs and "sigmas" not in inputs


def run_inf_dit_part(path, picture):
    """Execute a UI workflow's Inf-DiT nodes with the node functions (what ComfyUI's executor calls), the
    image source replaced by `picture`; returns the images reaching SaveImage."""
    from nodes import SPECS

    runs = {f().node_id: f().run for f in SPECS}
    prompt = to_api(json.loads(path.read_text(encoding="utf-8")), definitions())
    done = {}

    def value(node_id):
        if node_id not in done:
            node = prompt[node_id]
            if node["class_type"] in runs:
                args = {k: value(v[0])[v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
                done[node_id] = runs[node["class_type"]](**args, node_id=node_id).outputs
            else:  # LoadImage, or the SDXL part's VAEDecode: the picture
                done[node_id] = (picture,)
        return done[node_id]

    return [value(n["inputs"]["images"][0])[n["inputs"]["images"][1]] for n in prompt.values() if n["class_type"] == "SaveImage"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_0_1_0_workflows_run_unchanged(path):
    picture = torch.rand(1, 12, 16, 3, generator=torch.Generator().manual_seed(0))
    (out,) = run_inf_dit_part(path, picture)
    scale = int(upscale_inputs(path)["scale"])
    assert out.shape == (1, 12 * scale, 16 * scale, 3) and torch.isfinite(out).all()
