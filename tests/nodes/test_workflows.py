"""The shipped workflows load in ComfyUI's frontend: every node, input, link and widget value exists."""
import json
from pathlib import Path

import pytest

from workflow_tools import definitions, to_api

FOLDER = Path(__file__).resolve().parents[2] / "workflows"  # the design card's folder; ComfyUI serves it as templates
WORKFLOWS = sorted(FOLDER.glob("*.json"))


def test_all_workflows_ship():
    assert {p.stem for p in WORKFLOWS} == {"sdxl_txt2img_infdit_x4", "load_image_infdit_x4", "infdit_x2_small_gpu",
                                           "sdxl_poster_x8_24gb", "fit_4k_long_side", "infdit_x4_ksampler_karras"}


def test_ksampler_karras_workflow_wires_a_comfyui_sampler_and_schedule():
    nodes = by_type("infdit_x4_ksampler_karras.json")
    prompt = to_api(json.loads((FOLDER / "infdit_x4_ksampler_karras.json").read_text(encoding="utf-8")), definitions())
    ids = {v["class_type"]: k for k, v in prompt.items()}
    assert nodes["InfDiTUpscale"]["sampler"] == [ids["KSamplerSelect"], 0]
    assert nodes["InfDiTUpscale"]["sigmas"] == [ids["KarrasScheduler"], 0]
    assert nodes["InfDiTUpscale"]["denoise"] == 1.0  # required with sigmas wired
    assert nodes["KarrasScheduler"]["rho"] == 7.0


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_references_only_existing_nodes_and_inputs(path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    prompt = to_api(workflow, definitions())
    assert any(n["class_type"] == "InfDiTUpscale" for n in prompt.values())
    assert any(n["class_type"] == "SaveImage" for n in prompt.values())
    assert workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])


def by_type(path):
    prompt = to_api(json.loads((FOLDER / path).read_text(encoding="utf-8")), definitions())
    return {n["class_type"]: n["inputs"] for n in prompt.values()}


def test_sdxl_workflow_generates_1024_and_upscales_4x():
    nodes = by_type("sdxl_txt2img_infdit_x4.json")
    assert (nodes["EmptyLatentImage"]["width"], nodes["EmptyLatentImage"]["height"]) == (1024, 1024)
    assert nodes["InfDiTUpscale"]["scale"] == "4" and nodes["InfDiTUpscale"]["image"][0] in {
        k for k, v in to_api(json.loads((FOLDER / "sdxl_txt2img_infdit_x4.json").read_text(encoding="utf-8")), definitions()).items()
        if v["class_type"] == "VAEDecode"}


def test_small_gpu_workflow_upscales_2x_with_block_control():
    nodes = by_type("infdit_x2_small_gpu.json")
    assert nodes["InfDiTUpscale"]["scale"] == "2" and "block_control" in nodes["InfDiTUpscale"]
    assert nodes["InfDiTBlockSize"]["block_batch"] == 1 and nodes["InfDiTBlockSize"]["frontier"] == "offloaded to CPU"


def test_a_wrong_input_name_is_caught():
    workflow = json.loads((FOLDER / "load_image_infdit_x4.json").read_text(encoding="utf-8"))
    upscale = next(n for n in workflow["nodes"] if n["type"] == "InfDiTUpscale")
    upscale["inputs"][1]["name"] = "picture"
    with pytest.raises(ValueError, match="no input named picture"):
        to_api(workflow, definitions())


OLD = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "workflows-0.1.0").glob("*.json"))


@pytest.mark.parametrize("path", OLD, ids=lambda p: p.stem)
def test_workflows_saved_before_the_compile_toggle_load_with_it_off(path):
    prompt = to_api(json.loads(path.read_text(encoding="utf-8")), definitions())
    upscale = [n["inputs"] for n in prompt.values() if n["class_type"] == "InfDiTUpscale"]
    assert upscale and all(inputs["compile"] is False for inputs in upscale)

def test_poster_workflow_upscales_sdxl_1024_to_8192_within_a_24_gb_card():
    from infdit_core import InfDiTConfig
    from infdit_core.planning.plan import plan_run
    from nodes.block_size import settings_from_inputs

    nodes = by_type("sdxl_poster_x8_24gb.json")
    assert (nodes["EmptyLatentImage"]["width"], nodes["EmptyLatentImage"]["height"]) == (1024, 1024)
    assert nodes["InfDiTUpscale"]["scale"] == "8" and "block_control" in nodes["InfDiTUpscale"]
    blocks = nodes["InfDiTBlockSize"]
    settings = settings_from_inputs(blocks["block_batch"], blocks["memory_budget_gb"], blocks["frontier"], blocks["scan"])
    plan = plan_run(InfDiTConfig.released(), 1024, 1024, {"scale": 8}, settings.options(), device="cuda")
    assert plan.out_size == (8192, 8192) and [p.scale for p in plan.passes] == [4, 2]
    # on a 24 GB card at full speed: the CUDA cap of 16 blocks per group in both passes, no image pushed to the
    # host (the budget would do that when the estimate outgrew it), within the workflow's 20 GiB budget
    assert [p.block_batch for p in plan.passes] == [16, 16] and not any(p.images_on_host for p in plan.passes)
    assert plan.peak.total <= settings.memory_budget == 20 * 1024**3


def test_fit_4k_workflow_asks_for_a_4096_long_side():
    nodes = by_type("fit_4k_long_side.json")
    assert nodes["InfDiTUpscale"]["target"] == "4096" and "LoadImage" in nodes
