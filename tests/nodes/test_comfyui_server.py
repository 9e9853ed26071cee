"""The pack inside a real ComfyUI server (skipped unless COMFYUI_DIR points at a ComfyUI checkout; `bash
scripts/comfyui_tests.sh`, which CI runs, extracts ComfyUI 0.8.0 and 0.3.64 and runs this module in each).

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


TEST_CONFIG = dict(layers=1, hidden=64, heads=2, vector_dim=0)


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory):
    """A loopback server with the tiny model in the official .pt layout: "the official weights" for the
    download choice (the test hook makes the pack expect the tiny config)."""
    import torch
    from loopback import LoopbackServer

    from infdit_core import InfDiT, InfDiTConfig
    from infdit_core.checkpoints.checkpoint import official_state_dict

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("official") / "model.pt"
    torch.save({"module": official_state_dict(InfDiT(InfDiTConfig(**TEST_CONFIG)))}, path)
    server = LoopbackServer(path.read_bytes())
    yield server
    server.shutdown()


def link_into_custom_nodes(root: Path, source: Path, name: str) -> Path:
    linked = [p for p in (root / "custom_nodes").iterdir() if p.resolve() == source]
    if not linked:
        linked = [root / "custom_nodes" / name]
        linked[0].symlink_to(source, target_is_directory=True)
    return linked[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights_server):
    root = Path(COMFYUI_DIR)
    global PACK_NAME
    PACK_NAME = link_into_custom_nodes(root, REPO, "ComfyUI-Inf-DiT").name
    link_into_custom_nodes(root, REPO / "tests" / "nodes" / "comfyui_hook", "infdit-test-hook")
    from infdit_core import InfDiT, InfDiTConfig
    from infdit_core.checkpoints.checkpoint import save_model
    from PIL import Image

    (root / "models" / "inf_dit").mkdir(parents=True, exist_ok=True)
    model = InfDiT(InfDiTConfig(**TEST_CONFIG))
    model.initialize_weights()
    save_model(model, root / "models" / "inf_dit" / MODEL_NAME)
    Image.new("RGB", (16, 12), (200, 80, 40)).save(root / "input" / "infdit-test.png")
    with Image.open(REPO / "docs" / "images" / "chelsea_lr.png") as photo:  # a real 64x48 picture
        photo.convert("RGB").resize((64, 48), Image.LANCZOS).save(root / "input" / "infdit-test-64x48.png")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("comfyui") / "server.log", "w", encoding="utf-8")
    proc = subprocess.Popen(
        [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch"], cwd=root, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "INFDIT_WEIGHTS_URL": weights_server.url,
             "INFDIT_TEST_EXPECTED_CONFIG": InfDiTConfig(**TEST_CONFIG).to_json()})
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
    assert MODEL_NAME in combo_options(info["InfDiTLoader"]["input"]["required"]["model_name"])
    assert info["InfDiTUpscale"]["input"]["required"]["seed"][1]["control_after_generate"] is True


def test_templates_and_web_extension_are_served(server):
    templates = http(server + "/workflow_templates")[PACK_NAME]
    assert sorted(templates) == sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    assert any("inf_dit" in e for e in http(server + "/extensions"))
    assert http(server + "/inf_dit/estimate?block_batch=1&width=1024&height=1024")["block_batch"] == 1
    assert http(server + "/inf_dit/evaluations?solver=heun&steps=0")["evaluations"] == 39
    assert http(server + "/inf_dit/evaluations")["evaluations"] == 13


def run_workflow(server, name, image, model_name, **upscale_inputs):
    """Queue a shipped workflow with this input image and model; returns the saved image's size."""
    workflow = json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))
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
    workflow = json.loads((REPO / "workflows" / "fit_4k_long_side.json").read_text(encoding="utf-8"))
    assert next(n for n in workflow["nodes"] if n["type"] == "InfDiTUpscale")["widgets_values"][4] == "4096"
    size = run_workflow(server, "fit_4k_long_side.json", "infdit-test-64x48.png", "infdit-demo (bundled)", target="1000")
    assert size == (1000, 750)  # x4, x4, then resized down to the exact size


# ---------------------------------------------------------------- sampling inputs, ComfyUI's samplers

DEMO = "infdit-demo (bundled)"
NEW_IN_0_2 = ("sampler", "sigmas", "solver", "denoise", "color_fix")  # inputs added after 0.1.0


def run_prompt(server, prompt, timeout=600):
    """Queue an API-format prompt; its /history entry once finished."""
    prompt_id = http(server + "/prompt", {"prompt": prompt})["prompt_id"]
    for _ in range(timeout * 4):
        history = http(server + f"/history/{prompt_id}").get(prompt_id)
        if history and history["status"].get("completed") is not None:
            return history
        time.sleep(0.25)
    pytest.fail(f"prompt {prompt_id} did not finish within {timeout} s")


def images_of(server, history):
    from io import BytesIO

    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(BytesIO(http(server + "/view?" + urllib.parse.urlencode(img)))).convert("RGB"))
            for out in history["outputs"].values() for img in out.get("images", [])]


def error_of(history) -> str:
    for kind, data in history["status"].get("messages", []):
        if kind == "execution_error":
            return data["exception_message"].strip()
    return ""


def upscale_graph(model=DEMO, seed=0, sampler=None, karras=None, **widgets):
    """LoadImage -> Inf-DiT x4 -> PreviewImage, optionally with KSamplerSelect(sampler) and
    KarrasScheduler(steps, sigma_max, sigma_min, rho)."""
    upscale = {"model": ["2", 0], "image": ["1", 0], "scale": "4", "steps": 0, "seed": seed, **widgets}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "infdit-test.png"}},
        "2": {"class_type": "InfDiTLoader", "inputs": {"model_name": model, "weight_dtype": "fp32", "clip_name": "from checkpoint"}},
        "3": {"class_type": "InfDiTUpscale", "inputs": upscale},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    if sampler is not None:
        prompt["5"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
        upscale["sampler"] = ["5", 0]
    if karras is not None:
        steps, sigma_max, sigma_min, rho = karras
        prompt["6"] = {"class_type": "KarrasScheduler", "inputs": dict(steps=steps, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho)}
        upscale["sigmas"] = ["6", 0]
    return prompt


def test_upscale_offers_the_sampling_inputs(server):
    info = http(server + "/object_info/InfDiTUpscale")["InfDiTUpscale"]["input"]
    assert list(info["required"]) == ["model", "image", "scale", "steps", "seed"]  # 0.1.0's, unchanged
    optional = info["optional"]
    assert [optional[k][0] for k in ("sampler", "sigmas")] == ["SAMPLER", "SIGMAS"]
    assert optional["solver"][1]["default"] == "ipndm" and "heun" in str(optional["solver"]) and optional["color_fix"][1]["default"] == "none"
    assert optional["denoise"][1]["default"] == 1.0
    names = list(optional)
    assert names.index("block_control") < names.index("sampler") < names.index("sigmas") < names.index("solver")


@pytest.mark.parametrize("name", ["load_image_infdit_x4", "infdit_x2_small_gpu"])
def test_0_1_0_workflows_run_in_comfyui(server, name):
    """The workflows as 0.1.0 shipped them, sent the way 0.1.0 would (no key for any later input)."""
    workflow = json.loads((REPO / "tests" / "fixtures" / "workflows-0.1.0" / f"{name}.json").read_text(encoding="utf-8"))
    prompt = to_api(workflow, definitions(http(server + "/object_info")))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = "infdit-test.png"
        if node["class_type"] == "InfDiTUpscale":
            for key in NEW_IN_0_2:
                node["inputs"].pop(key, None)
            node["inputs"]["seed"] = int(time.time() * 1000) % 2**31  # ComfyUI caches identical prompts
    history = run_prompt(server, prompt)
    assert history["status"]["status_str"] == "success", error_of(history)
    scale = 2 if "x2" in name else 4
    assert images_of(server, history)[0].shape == (12 * scale, 16 * scale, 3)


def test_comfyui_heun_with_release_karras_sigmas_gives_the_release(server):
    """ComfyUI's own heun (KSamplerSelect) and KarrasScheduler with the release's settings (the test model
    has the released sampler config: 20 steps, sigma 40 -> 0.002, rho 7) give exactly the image of the
    solver widget's heun (the release's sampler) at steps 0."""
    default = run_prompt(server, upscale_graph(MODEL_NAME, seed=11, solver="heun"))
    wired = run_prompt(server, upscale_graph(MODEL_NAME, seed=11, sampler="heun", karras=(20, 40.0, 0.002, 7.0)))
    assert default["status"]["status_str"] == "success" and wired["status"]["status_str"] == "success", error_of(wired)
    (a,), (b,) = images_of(server, default), images_of(server, wired)
    assert (a == b).all()
    other = run_prompt(server, upscale_graph(MODEL_NAME, seed=11, sampler="heun", karras=(5, 40.0, 0.002, 7.0)))
    assert not (images_of(server, other)[0] == a).all()  # the schedule is really used


def test_comfyui_heun_matches_bit_for_bit_in_process():
    """The same in one ComfyUI process, on tensors: comfy.samplers.sampler_object('heun') and comfy's
    get_sigmas_karras through the node give torch.equal results to the node's heun (the release's sampler)."""
    script = f"""
import sys
sys.path.insert(0, {str(COMFYUI_DIR)!r}); sys.path.insert(0, {str(REPO)!r})
sys.argv = ["test", "--cpu"]
import comfy.options; comfy.options.enable_args_parsing()
import torch, comfy.samplers
from comfy.k_diffusion.sampling import get_sigmas_karras
from infdit_core import InfDiT, InfDiTConfig
from nodes import comfy_adapter, upscale
from nodes.load import InfDiTHandle
assert comfy_adapter.COMFY
torch.manual_seed(0)
model = InfDiT(InfDiTConfig(layers=1, hidden=64, heads=2, vector_dim=0))
for p in model.parameters():
    p.data.normal_(0, 0.05)
handle = InfDiTHandle(model, "tiny")
image = torch.rand(1, 40, 24, 3, generator=torch.Generator().manual_seed(1))
cfg = model.config
default = upscale.upscale(handle, image, "4", 0, 7, solver="heun").outputs[0]
sigmas = get_sigmas_karras(cfg.sampler_steps, cfg.sigma_min, cfg.sigma_max, 7.0)
wired = upscale.upscale(handle, image, "4", 0, 7, sampler=comfy.samplers.sampler_object("heun"), sigmas=sigmas).outputs[0]
print("EQUAL" if torch.equal(default, wired) else f"DIFFERENT {{(default - wired).abs().max().item()}}")
"""
    result = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", script], capture_output=True, text=True,
                            timeout=600, cwd=COMFYUI_DIR)
    assert result.stdout.strip().endswith("EQUAL"), result.stdout[-2000:] + result.stderr[-3000:]


def test_built_in_solvers_with_comfyui_names_equal_comfyuis_functions():
    """Every built-in solver whose name is also one of KSamplerSelect's gives what ComfyUI's function of that
    name gives, on the same denoiser and sigmas (in one ComfyUI process, on tensors)."""
    script = f"""
import sys
sys.path.insert(0, {str(COMFYUI_DIR)!r}); sys.path.insert(0, {str(REPO)!r})
sys.argv = ["test", "--cpu"]
import comfy.options; comfy.options.enable_args_parsing()
import torch, comfy.samplers
from infdit_core.sampling import solvers
from infdit_core.sampling.sampler import get_sigmas_karras
toy = lambda x, sigma, **k: x / (1 + sigma**2) ** 0.5 * 0.7 + 0.1 * torch.tanh(x)
shared = [n for n in solvers.SOLVERS if n in comfy.samplers.KSAMPLER_NAMES]
assert {{"ipndm", "ipndm_v", "deis", "euler", "heun"}} <= set(shared), shared
worst = 0.0
for steps in (5, 13, 20):
    sigmas = get_sigmas_karras(steps, 0.002, 40.0)
    x0 = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(steps)) * 40
    for name in shared:
        ours = solvers.get_solver(name)(toy, x0.clone(), sigmas)
        theirs = comfy.samplers.sampler_object(name).sampler_function(toy, x0.clone(), sigmas, disable=True)
        worst = max(worst, float((ours - theirs).abs().max() / theirs.abs().max()))
print("WORST", worst)
"""
    result = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", script], capture_output=True,
                            text=True, timeout=600, cwd=COMFYUI_DIR)
    assert "WORST" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    assert float(result.stdout.split("WORST")[-1]) < 1e-5  # float32 rounding only


def test_blueprints_thumbnails_and_translations_are_served(server):
    """ComfyUI lists the pack's subgraph blueprints, serves every workflow with its thumbnail, and the
    Chinese display names."""
    import urllib.error

    assert http(server + "/i18n")["zh"]["nodeDefs"]["InfDiTUpscale"]["display_name"] == "Inf-DiT 放大"
    try:
        names = {entry["name"] for entry in http(server + "/global_subgraphs").values()}
        assert {"inf_dit_x4", "inf_dit_fit_4k"} <= names
    except urllib.error.HTTPError as e:  # subgraph blueprints came after 0.3.x; the newer server must have them
        assert e.code == 404 and comfyui_version(server) < (0, 4), (e.code, comfyui_version(server))
    templates = http(server + "/workflow_templates")
    pack = next(k for k in templates if "Inf-DiT" in k or "inf" in k.lower())
    for name in templates[pack]:
        base = f"{server}/api/workflow_templates/{pack}/{name}"
        assert http(base + ".json")["nodes"]
        with urllib.request.urlopen(base + ".jpg", timeout=30) as response:
            assert response.headers["Content-Type"].startswith("image/") and response.read(3) == b"\xff\xd8\xff"


def test_the_estimate_route_answers_junk_with_400_and_quickly_while_a_prompt_runs(server):
    """Junk never gives a 5xx; the largest query answers in under 50 ms while a prompt is running."""
    import urllib.error

    for junk in ("memory_budget_gb=inf", "memory_budget_gb=nan", "width=1e300", "block_batch=many", "height=-1"):
        with pytest.raises(urllib.error.HTTPError) as err:
            http(f"{server}/inf_dit/estimate?{junk}")
        assert err.value.code == 400, junk
    graph = upscale_graph(model=DEMO, scale="8")
    graph["1"]["inputs"]["image"] = "infdit-test-64x48.png"
    prompt_id = http(server + "/prompt", {"prompt": graph})["prompt_id"]
    http(f"{server}/inf_dit/estimate?width=65536&height=65536&block_batch=1")  # warm (first import of numpy paths)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        answer = http(f"{server}/inf_dit/estimate?width=65536&height=65536&block_batch=1")
        times.append(time.perf_counter() - t0)
    running = http(server + "/queue")["queue_running"]
    assert answer["block_batch"] == 1 and min(times) < 0.05, times
    assert any(item[1] == prompt_id for item in running) or http(server + f"/history/{prompt_id}")  # it ran meanwhile
    for _ in range(2400):
        if http(server + f"/history/{prompt_id}").get(prompt_id):
            break
        time.sleep(0.25)


def combo_options(spec) -> list:
    """A combo input's choices in either object_info format: V1 nodes list them first (ComfyUI 0.3.x), V3 nodes
    and newer servers put them under "options"."""
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def comfyui_version(server) -> tuple[int, ...]:
    text = http(server + "/system_stats")["system"].get("comfyui_version", "0")
    return tuple(int(part) for part in text.split("-")[0].split(".") if part.isdigit())


def comfyui_sampler_names(server):
    return combo_options(http(server + "/object_info/KSamplerSelect")["KSamplerSelect"]["input"]["required"]["sampler_name"])


SWEEP = (3, 4.0, 0.05, 7.0)  # Karras steps, sigma_max, sigma_min, rho for the demo model in the sampler sweep


def test_every_comfyui_sampler(server):
    """Every name in ComfyUI's sampler list through KSamplerSelect + KarrasScheduler on the bundled demo
    model: runs and gives a 4x image near the bicubic one, or (CFG++) a one-line error naming it."""
    import numpy as np
    from PIL import Image

    source = np.asarray(Image.open(Path(COMFYUI_DIR) / "input" / "infdit-test.png").convert("RGB")).astype(float)
    names = comfyui_sampler_names(server)
    assert len(names) >= 40 and "heun" in names and "euler_cfg_pp" in names
    failures = []
    for name in names:
        history = run_prompt(server, upscale_graph(DEMO, seed=len(name), sampler=name, karras=SWEEP))
        if name.endswith("_cfg_pp"):
            message = error_of(history)
            if not (history["status"]["status_str"] == "error" and name in message and "CFG++" in message and "\n" not in message):
                failures.append(f"{name}: expected the CFG++ error, got {history['status']['status_str']} {message!r}")
            continue
        if history["status"]["status_str"] != "success":
            failures.append(f"{name}: {error_of(history)}")
            continue
        (out,) = images_of(server, history)
        # the test image is one flat colour: a sensible upscale stays near it
        if out.shape != (48, 64, 3) or np.abs(out.astype(float) - source[0, 0]).mean() > 20:
            failures.append(f"{name}: shape {out.shape}, mean distance {np.abs(out.astype(float) - source[0, 0]).mean():.1f}")
    assert not failures, "\n".join(failures)


def test_ksampler_karras_workflow_runs(server):
    workflow = json.loads((REPO / "workflows" / "infdit_x4_ksampler_karras.json").read_text(encoding="utf-8"))
    prompt = to_api(workflow, definitions(http(server + "/object_info")))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = "infdit-test.png"
        if node["class_type"] == "InfDiTUpscale":
            node["inputs"]["seed"] = int(time.time() * 1000) % 2**31
    history = run_prompt(server, prompt)
    assert history["status"]["status_str"] == "success", error_of(history)
    assert images_of(server, history)[0].shape == (48, 64, 3)


def test_sigmas_with_denoise_is_a_one_line_error(server):
    history = run_prompt(server, upscale_graph(DEMO, seed=3, karras=SWEEP, denoise=0.5))
    assert history["status"]["status_str"] == "error"
    assert "set denoise to 1" in error_of(history) and "\n" not in error_of(history)


def test_progress_previews_and_cancel(server):
    """Over ComfyUI's websocket: the node's progress (value/max) and the block grid message per group, live
    previews (binary PREVIEW_IMAGE frames with a JPEG or PNG), then Cancel (POST /interrupt) ends the run
    within a block group: the history says interrupted, and the server takes the next prompt."""
    import asyncio
    import uuid

    import aiohttp

    client = uuid.uuid4().hex
    graph = upscale_graph(model=DEMO, scale="16", seed=int(time.time()) % 2**31)  # 64x48 -> 1024x768
    graph["1"]["inputs"]["image"] = "infdit-test-64x48.png"

    async def watch():
        seen = {"progress": [], "blocks": [], "previews": 0}
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.replace('http', 'ws')}/ws?clientId={client}") as ws:
                prompt_id = (await (await session.post(server + "/prompt", json={"prompt": graph, "client_id": client})).json())["prompt_id"]
                interrupted_at = None
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        kind = int.from_bytes(message.data[:4], "big")
                        if kind == 1 and message.data[8:11] in (b"\xff\xd8\xff", b"\x89PN"):  # PREVIEW_IMAGE: JPEG/PNG
                            seen["previews"] += 1
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(message.data)
                    data = event.get("data", {})
                    if event["type"] == "progress" and data.get("node") == "3":
                        seen["progress"].append((data["value"], data["max"]))
                    elif event["type"] == "inf_dit.blocks":
                        seen["blocks"].append(data)
                    elif event["type"] == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                        return seen, prompt_id, time.monotonic() - interrupted_at
                    elif event["type"] in ("execution_success", "execution_error") and data.get("prompt_id") == prompt_id:
                        pytest.fail(f"the run ended with {event['type']} before Cancel: {data}")
                    if interrupted_at is None and len(seen["progress"]) >= 3 and seen["previews"] >= 1:
                        await session.post(server + "/interrupt")
                        interrupted_at = time.monotonic()
        pytest.fail(f"the websocket closed before the run was interrupted; saw {seen}")

    seen, prompt_id, cancel_seconds = asyncio.run(asyncio.wait_for(watch(), 600))
    values = [v for v, _ in seen["progress"]]
    # one step per block group: x4 to 256x192 (2 x 2 blocks), x4 to 1024x768 (8 x 6), one block a group on a
    # CPU, one evaluation (the demo model's one step)
    assert values == sorted(values) and seen["progress"][0][1] == 4 + 48 and values[-1] < 52
    assert seen["blocks"] and {"grid", "done", "running", "value", "max"} <= set(seen["blocks"][-1])
    assert seen["previews"] >= 1
    assert cancel_seconds < 30  # within a block group (a group of the demo model takes well under a second here)
    for _ in range(120):  # the history is written just after the message
        entry = http(server + f"/history/{prompt_id}").get(prompt_id)
        if entry:
            break
        time.sleep(0.25)
    history = entry["status"]
    assert history["status_str"] == "error" and any(m[0] == "execution_interrupted" for m in history["messages"])
    assert http(server + "/queue")["queue_running"] == []


DOWNLOAD_OPTION = "inf-dit.safetensors (download, 2 GB)"


def test_the_weights_download_from_the_load_node_with_progress_cancel_and_resume(server, weights_server):
    """Load Inf-DiT's download choice against a loopback server, in the real ComfyUI: a web page is refused and
    leaves nothing; a slow download shows its bytes on the node's bar and a text with the speed, and Cancel
    stops it keeping the part fetched; queued again it resumes from there through a cut connection, and the
    upscale runs on the downloaded weights."""
    import asyncio
    import uuid

    import aiohttp

    folder = Path(COMFYUI_DIR) / "models" / "inf_dit"
    for leftover in folder.glob("inf-dit.*"):
        leftover.unlink()
    info = http(server + "/object_info/InfDiTLoader")["InfDiTLoader"]["input"]["required"]["model_name"]
    assert DOWNLOAD_OPTION in combo_options(info)
    body = weights_server.body

    def graph(seed):
        g = upscale_graph(model=DOWNLOAD_OPTION, seed=seed)
        g["1"]["inputs"]["image"] = "infdit-test.png"
        return g

    weights_server.body, weights_server.content_type = b"<!DOCTYPE html><html>Link expired</html>", "text/html"
    refused = run_prompt(server, graph(1))
    assert refused["status"]["status_str"] == "error" and "web page" in error_of(refused)
    assert "\n" not in error_of(refused).strip() and list(folder.glob("inf-dit.*")) == []

    weights_server.body, weights_server.content_type = body, "application/octet-stream"
    weights_server.chunk_delay_s = 4.0 / (len(body) / weights_server.chunk)  # about 4 s: time to press Cancel
    client = uuid.uuid4().hex

    async def cancel_midway():
        seen = {"progress": [], "texts": []}
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.replace('http', 'ws')}/ws?clientId={client}") as ws:
                prompt_id = (await (await session.post(server + "/prompt", json={"prompt": graph(2), "client_id": client})).json())["prompt_id"]
                cancelled = False
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        if int.from_bytes(message.data[:4], "big") == 3:  # TEXT: node id length, node id, text
                            length = int.from_bytes(message.data[4:8], "big")
                            seen["texts"].append((message.data[8:8 + length].decode(), message.data[8 + length:].decode()))
                        continue
                    event = json.loads(message.data)
                    data = event.get("data", {})
                    if event["type"] == "progress" and data.get("node") == "2":
                        seen["progress"].append((data["value"], data["max"]))
                    elif event["type"] == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                        return seen, prompt_id
                    elif event["type"] in ("execution_success", "execution_error") and data.get("prompt_id") == prompt_id:
                        pytest.fail(f"the download ended with {event['type']} before Cancel: {data}")
                    if not cancelled and len(seen["progress"]) >= 5 and any("MB/s" in t for _, t in seen["texts"]):
                        await session.post(server + "/interrupt")
                        cancelled = True
        pytest.fail(f"the websocket closed before the download was cancelled; saw {seen}")

    seen, prompt_id = asyncio.run(asyncio.wait_for(cancel_midway(), 300))
    assert {total for _, total in seen["progress"]} == {len(body)}  # the bar counts the file's bytes
    node, text = seen["texts"][-1]
    assert node == "2" and text.startswith("Inf-DiT weights: ") and " of " in text and "MB/s" in text and "left" in text
    partial = folder / "inf-dit.pt.partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(body)

    weights_server.chunk_delay_s = 0.0
    weights_server.cut_next_at = kept + (len(body) - kept) // 2  # the resumed answer drops midway too
    requests_before = len(weights_server.log)
    done = run_prompt(server, graph(3))
    assert done["status"]["status_str"] == "success", error_of(done)
    assert weights_server.log[requests_before:] == [kept, weights_server.log[-1]] and weights_server.log[-1] > kept
    assert sorted(p.name for p in folder.glob("inf-dit.*")) == ["inf-dit.safetensors"]
    assert images_of(server, done)[0].shape == (48, 64, 3)


def test_cancel_and_queue_again_resumes_where_it_stopped_bit_for_bit(server):
    """A x16 run (two passes) of the tiny model is cancelled in its second pass; the same prompt queued again
    continues there (its progress starts past the first pass) and gives the image of an uninterrupted run."""
    import asyncio
    import uuid

    import aiohttp

    client = uuid.uuid4().hex
    seed = int(time.time()) % 2**31

    def graph(**widgets):
        g = upscale_graph(MODEL_NAME, seed=seed, scale="16", steps=4, solver="heun", **widgets)
        g["1"]["inputs"]["image"] = "infdit-test-64x48.png"
        return g

    import shutil

    shutil.rmtree(Path(COMFYUI_DIR) / "output" / ".inf_dit_resume", ignore_errors=True)  # an earlier try's
    first_pass = 4 * 7  # 256x192 = 2 x 2 blocks, one a group on a CPU, 7 evaluations (heun, 4 steps)

    async def queue(prompt, cancel_past=None):
        values = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.replace('http', 'ws')}/ws?clientId={client}") as ws:
                prompt_id = (await (await session.post(server + "/prompt", json={"prompt": prompt, "client_id": client})).json())["prompt_id"]
                cancelled = False
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(message.data)
                    data = event.get("data", {})
                    if event["type"] == "progress" and data.get("node") == "3":
                        values.append(data["value"])
                        if cancel_past is not None and not cancelled and data["value"] > cancel_past:
                            await session.post(server + "/interrupt")
                            cancelled = True
                    elif event["type"] in ("execution_interrupted", "execution_success", "execution_error") \
                            and data.get("prompt_id") == prompt_id:
                        return event["type"], values, prompt_id
        pytest.fail("the websocket closed before the prompt ended")

    second_pass_evaluation = 8 * 6  # 1024x768 = 8 x 6 blocks
    ended, before, _ = asyncio.run(asyncio.wait_for(queue(graph(), cancel_past=first_pass + second_pass_evaluation + 10), 600))
    assert ended == "execution_interrupted" and before[-1] > first_pass
    states = list((Path(COMFYUI_DIR) / "output" / ".inf_dit_resume").glob("*/*"))
    assert sorted(p.name for p in states) == ["pass0.done", "pass1.state"]
    ended, after, prompt_id = asyncio.run(asyncio.wait_for(queue(graph()), 600))
    assert ended == "execution_success"
    # the progress starts where it stopped: after the second pass's finished evaluations
    assert after[0] > first_pass + second_pass_evaluation and after[0] % second_pass_evaluation == (first_pass + 1) % second_pass_evaluation
    resumed = images_of(server, http(server + f"/history/{prompt_id}")[prompt_id])[0]
    whole = run_prompt(server, graph(resume=False))
    assert whole["status"]["status_str"] == "success", error_of(whole)
    assert (images_of(server, whole)[0] == resumed).all()
    assert not list((Path(COMFYUI_DIR) / "output" / ".inf_dit_resume").glob("*/*"))  # removed once done
