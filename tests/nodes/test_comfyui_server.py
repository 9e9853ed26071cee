"""The pack inside a real ComfyUI server (skipped unless COMFYUI_DIR points at a ComfyUI checkout).

Starts `main.py --cpu` with COMFYUI_PYTHON (default: this interpreter), links this repository into
custom_nodes/ if it is not there, writes a tiny model and a 16x16 image, runs the shipped workflow
"Load Image -> Inf-DiT x4 -> Save" through /prompt and reads the 64x64 result back from /history.
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


def test_shipped_workflow_runs_and_returns_the_image(server):
    workflow = json.loads((REPO / "workflows" / "load_image_infdit_x4.json").read_text())
    prompt = to_api(workflow, definitions(http(server + "/object_info")))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = "infdit-test.png"
        if node["class_type"] == "InfDiTLoader":
            node["inputs"]["model_name"] = MODEL_NAME
        if node["class_type"] == "InfDiTUpscale":
            # steps as shipped (0 = the model's own); a new seed: ComfyUI caches identical prompts
            node["inputs"].update(seed=int(time.time()))
    prompt_id = http(server + "/prompt", {"prompt": prompt})["prompt_id"]
    for _ in range(300):
        history = http(server + f"/history/{prompt_id}").get(prompt_id)
        if history and history["status"].get("completed") is not None:
            break
        time.sleep(1)
    assert history["status"]["status_str"] == "success", history["status"]
    (saved,) = [img for out in history["outputs"].values() for img in out.get("images", [])]
    png = http(server + "/view?" + urllib.parse.urlencode(saved))
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(png)).size == (64, 48)  # exactly 4x the 16x12 input
