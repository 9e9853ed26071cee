"""Thumbnails of the shipped workflows, made from real runs of the pack: the bundled sample photo upscaled by
the bundled demo model at each workflow's factor (the x8 poster: x8; the 4096 px long side: a 1024 px long
side, the sample being 112 px wide), shown as input (enlarged, pixelated) | Inf-DiT's result on one crop.
Writes workflows/<name>.jpg, which ComfyUI's template browser shows beside the workflow.

Run: python scripts/thumbnails.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from infdit_core import DEMO_MODEL_PATH, load_inf_dit, upscale_image  # noqa: E402
from infdit_core.planning.plan import parse_target  # noqa: E402

SIZE = (512, 256)  # thumbnail: two 256 px squares


def target_of(workflow: dict) -> dict:
    node = next(n for n in workflow["nodes"] if n["type"] == "InfDiTUpscale")
    values = node["widgets_values"]
    target = parse_target(values[4]) if len(values) > 4 and isinstance(values[4], str) and values[4] else {}
    if "long_side" in target:
        return {"long_side": 1024}  # the sample is 112 px wide: 4096 would be over x16
    return target or {"scale": float(values[0])}


def thumbnail(model, photo: Image.Image, target: dict) -> Image.Image:
    image = torch.from_numpy(__import__("numpy").asarray(photo, dtype="float32") / 255)[None]
    out = upscale_image(model, image, seed=0, **target)[0]
    result = Image.fromarray((out.clamp(0, 1) * 255).round().byte().numpy())
    side = min(result.size) // 2  # the centre crop, and the same region of the input
    box = ((result.width - side) // 2, (result.height - side) // 2)
    crop = result.crop((*box, box[0] + side, box[1] + side)).resize((256, 256), Image.LANCZOS)
    fx, fy = photo.width / result.width, photo.height / result.height
    source = photo.crop((round(box[0] * fx), round(box[1] * fy), round((box[0] + side) * fx),
                         round((box[1] + side) * fy))).resize((256, 256), Image.NEAREST)
    sheet = Image.new("RGB", SIZE)
    sheet.paste(source, (0, 0))
    sheet.paste(crop, (256, 0))
    return sheet


def main() -> int:
    model = load_inf_dit(DEMO_MODEL_PATH)
    photo = Image.open(ROOT / "docs" / "images" / "chelsea_lr.png").convert("RGB")
    for path in sorted((ROOT / "workflows").glob("*.json")):
        target = target_of(json.loads(path.read_text(encoding="utf-8")))
        thumbnail(model, photo, target).save(path.with_suffix(".jpg"), quality=85)
        print(f"wrote {path.with_suffix('.jpg').name} ({target})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
