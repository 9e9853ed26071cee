"""What the Comfy Registry and ComfyUI read from the pack: license and pyproject fields, the pack id on
every node of the shipped workflows, a thumbnail beside each workflow, Chinese docs and display names."""
import json
from pathlib import Path

import pytest
from PIL import Image

from nodes import block_size, load, upscale

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SPECS = [load.spec(), block_size.spec(), upscale.spec()]


def test_the_registry_fields_are_there():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
    assert project["license"] == {"file": "LICENSE"}
    assert "Environment :: GPU :: NVIDIA CUDA" in project["classifiers"]
    assert comfy.get("requires-comfyui", "").startswith(">=")
    icon = comfy["Icon"]
    assert icon.endswith("docs/images/icon.png") and (ROOT / "docs" / "images" / "icon.png").is_file()
    from infdit_core.checkpoints.download import OFFICIAL_URL

    assert [m["model_url"] for m in comfy["Models"]] == [OFFICIAL_URL]
    assert (ROOT / ".github" / "workflows" / "publish.yml").is_file()


@pytest.mark.parametrize("path", sorted((ROOT / "workflows").glob("*.json")), ids=lambda p: p.stem)
def test_every_workflow_names_the_pack_and_has_a_thumbnail(path):
    """A user without the pack is offered to install it (cnr_id, ver); the template browser shows the .jpg."""
    nodes = [n for n in json.loads(path.read_text(encoding="utf-8"))["nodes"] if str(n["type"]).startswith("InfDiT")]
    assert nodes
    for node in nodes:
        assert node["properties"]["cnr_id"] == PYPROJECT["project"]["name"]
        assert node["properties"]["ver"] == PYPROJECT["project"]["version"]
    with Image.open(path.with_suffix(".jpg")) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (512, 256)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.node_id)
def test_chinese_docs_and_display_names(spec):
    page = ROOT / "web" / "docs" / spec.node_id / "zh.md"
    assert page.is_file() and page.read_text(encoding="utf-8").startswith("# ")
    for image in ("../images/",):
        for line in page.read_text(encoding="utf-8").splitlines():
            if image in line:
                target = line.split("(", 1)[1].split(")", 1)[0]
                assert (page.parent / target).is_file(), target
    names = json.loads((ROOT / "locales" / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))[spec.node_id]
    assert names["display_name"]
    assert set(names["inputs"]) <= {i.name for i in spec.inputs}


@pytest.mark.parametrize("path", sorted((ROOT / "subgraphs").glob("*.json")), ids=lambda p: p.stem)
def test_blueprints_are_whole_graphs(path):
    """Each blueprint (ComfyUI lists <pack>/subgraphs/*.json): one node standing for a subgraph whose links
    join its input to Inf-DiT Upscale's image, Load Inf-DiT's model to Upscale, Upscale's image to the output."""
    data = json.loads(path.read_text(encoding="utf-8"))
    (outer,) = data["nodes"]
    (graph,) = data["definitions"]["subgraphs"]
    assert outer["type"] == graph["id"] and graph["name"] and graph["description"]
    inner = {n["id"]: n for n in graph["nodes"]}
    assert {n["type"] for n in inner.values()} == {"InfDiTLoader", "InfDiTUpscale"}
    specs = {s.node_id: s for s in SPECS}
    links = {link["id"]: link for link in graph["links"]}
    for link in links.values():
        for end, slot, kind in (("origin_id", "origin_slot", "outputs"), ("target_id", "target_slot", "inputs")):
            node = link[end]
            if node in (-10, -20):
                continue
            assert inner[node][kind][link[slot]]["type"] == link["type"] or kind == "inputs", link
    assert [links[i]["origin_id"] for g in graph["inputs"] for i in g["linkIds"]] == [-10]
    assert [links[i]["target_id"] for g in graph["outputs"] for i in g["linkIds"]] == [-20]
    for node in inner.values():
        widget_inputs = [i.name for i in specs[node["type"]].inputs if i.kind not in ("INF_DIT", "image", "INF_DIT_BLOCKS", "SAMPLER", "SIGMAS")]
        assert len(node["widgets_values"]) <= len(widget_inputs) + 1  # + control_after_generate of the seed
    for node_id, widget in outer["properties"]["proxyWidgets"]:
        assert int(node_id) in inner and widget in {i.name for i in specs[inner[int(node_id)]["type"]].inputs}
