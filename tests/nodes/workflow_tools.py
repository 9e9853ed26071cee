"""Reading UI-format workflows the way ComfyUI's frontend does: widget values in input order (plus one
control value after a control_after_generate widget), links by slot. `to_api` turns one into the API
format /prompt takes, and fails on any node, input, link type or widget count that does not exist."""
from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CORE_NODES = Path(__file__).with_name("comfyui_core_nodes.json")  # from ComfyUI 0.8.0's /object_info
KIND_TO_TYPE = {"combo": "COMBO", "int": "INT", "float": "FLOAT", "boolean": "BOOLEAN", "string": "STRING",
                "image": "IMAGE"}


def spec_definitions() -> dict:
    from nodes import SPECS

    defs = {}
    for factory in SPECS:
        spec = factory()
        defs[spec.node_id] = {
            "inputs": {i.name: {"type": KIND_TO_TYPE.get(i.kind, i.kind), "optional": i.optional,
                                "control_after_generate": i.control_after_generate, "options": list(i.options),
                                "default": i.default}
                       for i in spec.inputs},
            "outputs": [KIND_TO_TYPE.get(o.kind, o.kind) for o in spec.outputs],
        }
    return defs


def definitions(object_info: dict | None = None) -> dict:
    if object_info is None:
        return {**json.loads(CORE_NODES.read_text(encoding="utf-8")), **spec_definitions()}
    defs = {}
    for name, info in object_info.items():
        inputs = {}
        for section in ("required", "optional"):
            for key, spec in info["input"].get(section, {}).items():
                kind, opts = spec[0], spec[1] if len(spec) > 1 else {}
                inputs[key] = {"type": "COMBO" if isinstance(kind, list) else kind, "optional": section == "optional",
                               "control_after_generate": bool(opts.get("control_after_generate")),
                               "default": opts.get("default")}
        defs[name] = {"inputs": inputs, "outputs": info["output"]}
    return defs


FRONTEND_ONLY = {"Note", "MarkdownNote"}  # virtual nodes: the frontend never sends them to the server


def to_api(workflow: dict, defs: dict) -> dict:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            if node.get("inputs") or node.get("outputs"):
                raise ValueError(f"node {node['id']} ({node['type']}) is a note: it cannot have inputs or outputs")
            continue
        if node["type"] not in defs:
            raise ValueError(f"node {node['id']}: unknown node type {node['type']}")
        d = defs[node["type"]]
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for i in node.get("inputs", []):
            if i["name"] not in d["inputs"]:
                raise ValueError(f"node {node['id']} ({node['type']}): no input named {i['name']}")
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, spec in d["inputs"].items():
            if spec["type"] not in WIDGET_TYPES or name in linked:
                continue
            if not values:
                # A workflow saved before this widget existed: the frontend keeps the widget's default.
                if spec.get("default") is None:
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name}")
                inputs[name] = spec["default"]
                continue
            inputs[name] = values.pop(0)
            if spec.get("options") and name != "model_name" and inputs[name] not in spec["options"]:
                raise ValueError(f"node {node['id']}: {name}={inputs[name]!r} is not one of {spec['options']}")
            if spec["control_after_generate"]:
                values.pop(0)  # "fixed" / "randomize": a frontend-only widget
        if node["type"] in spec_definitions_names() and values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget value(s) too many: {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        src_def, dst_node = defs[nodes[src]["type"]], nodes[dst]
        name = dst_node["inputs"][dst_slot]["name"]
        if src_def["outputs"][src_slot] != kind or defs[dst_node["type"]]["inputs"][name]["type"] != kind:
            raise ValueError(f"link {link_id}: {kind} does not fit {nodes[src]['type']}[{src_slot}] -> {dst_node['type']}.{name}")
        if dst_node["inputs"][dst_slot]["link"] != link_id:
            raise ValueError(f"link {link_id}: node {dst} input {name} does not point back to it")
        prompt[str(dst)]["inputs"][name] = [str(src), src_slot]
    for node_id, entry in prompt.items():
        for name, spec in defs[entry["class_type"]]["inputs"].items():
            if not spec["optional"] and name not in entry["inputs"]:
                raise ValueError(f"node {node_id} ({entry['class_type']}): required input {name} is not connected")
    return prompt


def spec_definitions_names() -> set:
    return {"InfDiTLoader", "InfDiTUpscale", "InfDiTBlockSize"}
