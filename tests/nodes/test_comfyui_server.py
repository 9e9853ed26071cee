"""The pack inside a real ComfyUI server (skipped unless COMFYUI_DIR points at a ComfyUI checkout).

Starts `main.py --cpu` with COMFYUI_PYTHON (default: this interpreter), links this repository into
custom_nodes/ if it is not there, writes a tiny model and a 16x16 image, runs the shipped workflow
"Load Image -> Inf-DiT x4 -> Save" through /prompt and reads the 64x48 result back from /history; then
the bundled demo model on a 64x48 photo: x8 (512x384) and the fit-to-long-side workflow at 1000 px.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from workflow_tools import definitions, to_api

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run the pack in it")
REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "infdit-test-tiny.safetensors"
PACK_NAME = None  # the folder name under custom_nodes/, set by the server fixture


def http(url, data=None, timeout=30):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        return json.loads(raw) if r.headers.get_content_type() == "application/json" else raw


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = Path(COMFYUI_DIR)
    linked = [p for p in (root / "custom_nodes").iterdir() if p.resolve() == REPO]
    if not linked:
        linked = [root / "custom_nodes" / "ComfyUI-Inf-DiT"]
        linked[0].symlink_to(REPO, target_is_directory=True)
    global PACK_NAME
    PACK_NAME = linked[0].name
    from infdit_core import InfDiT, InfDiTConfig
    from infdit_core.checkpoint import save_model
    from PIL import Image

    (root / "models" / "inf_dit").mkdir(parents=True, exist_ok=True)
    model = InfDiT(InfDiTConfig(layers=1, hidden=64, heads=2, vector_dim=0))
    model.initialize_weights()
    save_model(model, root / "models" / "inf_dit" / MODEL_NAME)
    Image.new("RGB", (16, 12), (200, 80, 40)).save(root / "input" / "infdit-test.png")
    with Image.open(REPO / "docs" / "images" / "chelsea_lr.png") as photo:  # a real 64x48 picture
        photo.convert("RGB").resize((64, 48), Image.LANCZOS).save(root / "input" / "infdit-test-64x48.png")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("comfyui") / "server.log", "w")
    proc = subprocess.Popen(
        [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch"], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}; see {log.name}")
            try:
                http(url + "/system_stats", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"ComfyUI did not start within 4 minutes; see {log.name}")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_nodes_are_registered(server):
    info = http(server + "/object_info")
    for node in ("InfDiTLoader", "InfDiTUpscale", "InfDiTBlockSize"):
        assert info[node]["category"] == "image/upscaling/Inf-DiT"
    assert MODEL_NAME in info["InfDiTLoader"]["input"]["required"]["model_name"][1]["options"]
    assert info["InfDiTUpscale"]["input"]["required"]["seed"][1]["control_after_generate"] is True


def test_templates_and_web_extension_are_served(server):
    templates = http(server + "/workflow_templates")[PACK_NAME]
    assert sorted(templates) == sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    assert any("inf_dit" in e for e in http(server + "/extensions"))
    assert http(server + "/inf_dit/estimate?block_batch=1&width=1024&height=1024")["block_batch"] == 1


def run_workflow(server, name, image, model_name, **upscale_inputs):
    """Queue a shipped workflow with this input image and model; returns the saved image's size."""
    workflow = json.loads((REPO / "workflows" / name).read_text())
    prompt = to_api(workflow, definitions(http(server + "/object_info")))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
        if node["class_type"] == "InfDiTLoader":
            node["inputs"]["model_name"] = model_name
        if node["class_type"] == "InfDiTUpscale":
            # steps as shipped (0 = the model's own); a new seed: ComfyUI caches identical prompts
            node["inputs"].update(seed=int(time.time() * 1000) % 2**32, **upscale_inputs)
    prompt_id = http(server + "/prompt", {"prompt": prompt})["prompt_id"]
    for _ in range(600):
        history = http(server + f"/history/{prompt_id}").get(prompt_id)
        if history and history["status"].get("completed") is not None:
            break
        time.sleep(1)
    assert history["status"]["status_str"] == "success", history["status"]
    (saved,) = [img for out in history["outputs"].values() for img in out.get("images", [])]
    png = http(server + "/view?" + urllib.parse.urlencode(saved))
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(png)).size


def test_shipped_workflow_runs_and_returns_the_image(server):
    assert run_workflow(server, "load_image_infdit_x4.json", "infdit-test.png", MODEL_NAME) == (64, 48)  # 4x 16x12


def test_demo_model_x8_gives_exactly_eight_times_the_size(server):
    size = run_workflow(server, "load_image_infdit_x4.json", "infdit-test-64x48.png", "infdit-demo (bundled)", scale="8")
    assert size == (512, 384)  # x4 then x2


def test_demo_model_fits_a_1000_px_long_side(server):
    workflow = json.loads((REPO / "workflows" / "fit_4k_long_side.json").read_text())
    assert next(n for n in workflow["nodes"] if n["type"] == "InfDiTUpscale")["widgets_values"][4] == "4096"
    size = run_workflow(server, "fit_4k_long_side.json", "infdit-test-64x48.png", "infdit-demo (bundled)", target="1000")
    assert size == (1000, 750)  # x4, x4, then resized down to the exact size


@pytest.mark.parametrize("args,name,size", [(["--scale", "8"], "photo_x8.png", (512, 384)),
                                            (["--long-side", "1000"], "photo_1000x750.png", (1000, 750))])
def test_the_same_runs_from_the_cli(tmp_path, args, name, size):
    """The CLI on the demo model: the 64x48 photo x8 and to a 1000 px long side (kept with the real-server
    runs: together they take minutes on a CPU)."""
    from PIL import Image

    from infdit_core.cli import main

    with Image.open(REPO / "docs" / "images" / "chelsea_lr.png") as photo:
        photo.convert("RGB").resize((64, 48), Image.LANCZOS).save(tmp_path / "photo.png")
    assert main(["upscale", str(tmp_path / "photo.png"), *args]) == 0
    with Image.open(tmp_path / name) as out:
        assert out.size == size
