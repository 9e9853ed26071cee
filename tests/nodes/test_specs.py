"""What ComfyUI shows: ids, names, category, descriptions, a tooltip on every input; and that only the
adapter touches ComfyUI."""
import re
import sys
from pathlib import Path

import pytest

from nodes import SPECS

PACK = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("factory", SPECS)
def test_every_node_is_documented(factory):
    spec = factory()
    assert spec.category == "image/upscaling/Inf-DiT"
    assert spec.display_name and len(spec.description) > 40
    for item in spec.inputs:
        assert len(item.tooltip) > 20, f"{spec.node_id}.{item.name} needs a tooltip"
        if item.kind == "combo" and item.default is not None:
            assert item.default in item.options
    for item in spec.outputs:
        assert item.tooltip


def test_node_ids_are_stable():
    # Saved workflows refer to these: never rename them.
    assert [f().node_id for f in SPECS] == ["InfDiTLoader", "InfDiTUpscale", "InfDiTBlockSize"]


def test_upscale_inputs():
    spec = SPECS[1]()
    assert spec.input("seed").control_after_generate
    assert spec.input("block_control").optional and spec.input("block_control").kind == "INF_DIT_BLOCKS"
    assert spec.input("model").kind == "INF_DIT"
    assert spec.input("scale").options[:2] == ("4", "2")  # saved workflows hold these strings
    assert spec.input("scale").default == "4"
    names = [i.name for i in spec.inputs]
    assert names[:6] == ["model", "image", "scale", "steps", "seed", "block_control"]  # new inputs come after
    assert spec.input("target").optional and spec.input("target").default == ""


def test_only_the_adapter_imports_comfyui():
    pattern = re.compile(r"^\s*(from|import)\s+(comfy|comfy_api|folder_paths|server|nodes)\b", re.M)
    offenders = [p.name for p in (PACK / "nodes").glob("*.py") if p.name != "comfy_adapter.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_root_registers_v3_only_and_serves_web():
    """The pack's root module as ComfyUI loads it (a package from custom_nodes/<folder>/__init__.py): what
    ComfyUI reads from it. The real server's registration is tested in test_comfyui_server.py."""
    import asyncio
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("infdit_pack_root", PACK / "__init__.py",
                                                  submodule_search_locations=[str(PACK)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    try:
        spec.loader.exec_module(pack)
    finally:
        sys.modules.pop(spec.name, None)
    assert inspect.iscoroutinefunction(pack.comfy_entrypoint)
    assert (PACK / pack.WEB_DIRECTORY / "inf_dit.js").is_file()
    # ComfyUI ignores comfy_entrypoint when NODE_CLASS_MAPPINGS exists (nodes.py load_custom_node)
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")
    assert asyncio.iscoroutine(coroutine := pack.comfy_entrypoint())
    coroutine.close()  # building the extension needs comfy_api: the real-server test runs it


@pytest.mark.parametrize("factory", SPECS)
def test_every_node_has_an_in_app_docs_page(factory):
    """ComfyUI's node-docs panel reads WEB_DIRECTORY/docs/<node id>.md: one page per node, naming every input,
    with images that exist and stay small."""
    spec = factory()
    page = PACK / "web" / "docs" / f"{spec.node_id}.md"
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# {spec.display_name}\n")
    for item in spec.inputs:
        assert f"`{item.name}`" in text, f"{page.name} does not describe {item.name}"
    assert "## What to pick" in text
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        image = page.parent / target
        assert image.is_file() and image.stat().st_size < 100_000, target
