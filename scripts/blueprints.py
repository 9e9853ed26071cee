"""The subgraph blueprints in subgraphs/ (ComfyUI lists `<pack>/subgraphs/*.json` as blueprints: one node
that holds a small graph). Made from the shipped workflows' own Load Inf-DiT and Inf-DiT Upscale nodes, so
their widget values stay what the nodes expect. Run: python scripts/blueprints.py"""
from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLUEPRINTS = {  # file name: (name, description, source workflow)
    "inf_dit_x4": ("Inf-DiT x4", "Upscales an image x4 with Inf-DiT, block by block (Load Inf-DiT + Inf-DiT Upscale).",
                   "load_image_infdit_x4.json"),
    "inf_dit_fit_4k": ("Inf-DiT to a 4K long side", "Upscales any image to a 4096 px long side with Inf-DiT "
                       "(x4/x2 passes, then an exact resize).", "fit_4k_long_side.json"),
}


def blueprint(name: str, description: str, workflow: dict) -> dict:
    nodes = {n["type"]: copy.deepcopy(n) for n in workflow["nodes"] if n["type"].startswith("InfDiT")}
    loader, upscale = nodes["InfDiTLoader"], nodes["InfDiTUpscale"]
    loader.update(id=1, pos=[0, 0], order=0)
    upscale.update(id=2, pos=[380, 0], order=1)
    loader["outputs"][0]["links"] = [1]
    upscale["inputs"] = [dict(i, link={"model": 1, "image": 2}[i["name"]]) for i in upscale["inputs"]]
    upscale["outputs"][0]["links"] = [3]
    graph_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"inf-dit/{name}"))
    slot = lambda kind, key: str(uuid.uuid5(uuid.NAMESPACE_URL, f"inf-dit/{name}/{kind}/{key}"))  # noqa: E731
    return {
        "revision": 0, "last_node_id": 3, "last_link_id": 0,
        "nodes": [{
            "id": 3, "type": graph_id, "pos": [0, 0], "size": [260, 120], "flags": {}, "order": 0, "mode": 0,
            "inputs": [{"label": "image", "localized_name": "image", "name": "image", "type": "IMAGE", "link": None}],
            "outputs": [{"label": "IMAGE", "localized_name": "IMAGE", "name": "IMAGE", "type": "IMAGE", "links": []}],
            "properties": {"proxyWidgets": [["1", "model_name"], ["2", "seed"]]}, "widgets_values": [], "title": name,
        }],
        "links": [], "version": 0.4,
        "definitions": {"subgraphs": [{
            "id": graph_id, "version": 1, "revision": 0, "config": {}, "name": name, "description": description,
            "category": "image/upscaling/Inf-DiT",
            "state": {"lastGroupId": 0, "lastNodeId": 2, "lastLinkId": 3, "lastRerouteId": 0},
            "inputNode": {"id": -10, "bounding": [-200, 60, 120, 60]},
            "outputNode": {"id": -20, "bounding": [760, 60, 120, 60]},
            "inputs": [{"id": slot("in", "image"), "name": "image", "type": "IMAGE", "linkIds": [2],
                        "localized_name": "image", "label": "image", "pos": [-100, 80]}],
            "outputs": [{"id": slot("out", "IMAGE"), "name": "IMAGE", "type": "IMAGE", "linkIds": [3],
                         "localized_name": "IMAGE", "label": "IMAGE", "pos": [780, 80]}],
            "widgets": [], "groups": [], "nodes": [loader, upscale],
            "links": [
                {"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INF_DIT"},
                {"id": 2, "origin_id": -10, "origin_slot": 0, "target_id": 2, "target_slot": 1, "type": "IMAGE"},
                {"id": 3, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
            ],
            "extra": {},
        }]},
        "extra": {},
    }


def main() -> int:
    for stem, (name, description, source) in BLUEPRINTS.items():
        workflow = json.loads((ROOT / "workflows" / source).read_text(encoding="utf-8"))
        out = ROOT / "subgraphs" / f"{stem}.json"
        out.write_text(json.dumps(blueprint(name, description, workflow), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
