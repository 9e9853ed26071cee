"""The only module that imports ComfyUI. Everything else in nodes/ calls these functions, which fall back
to plain torch behaviour when ComfyUI is absent (tests, CI), so the nodes run the same code either way."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .sampler_bridge import EDMModelSampling

try:  # inside a ComfyUI server
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.model_sampling as _sampling
    import comfy.utils as _utils
    import folder_paths as _folders

    COMFY = True
except ImportError:  # tests / CI / the CLI: ComfyUI is not installed
    _mm = _patcher = _sampling = _utils = _folders = None
    COMFY = False

log = logging.getLogger("inf_dit")

MODEL_FOLDER = "inf_dit"
CLIP_FOLDER = "clip_vision"
MODEL_EXTENSIONS = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}
# Without ComfyUI: folders to list models from (tests point these at temporary directories).
FALLBACK_FOLDERS: dict[str, list[str]] = {MODEL_FOLDER: [], CLIP_FOLDER: []}


class Interrupted(Exception):
    """Stand-in for ComfyUI's InterruptProcessingException when ComfyUI is absent."""


# ---------------------------------------------------------------- model folders

def register_model_folder() -> None:
    """models/inf_dit, also reachable from extra_model_paths.yaml under the key `inf_dit`."""
    if not COMFY:
        return
    path = os.path.join(_folders.models_dir, MODEL_FOLDER)
    _folders.add_model_folder_path(MODEL_FOLDER, path, is_default=True)
    # folder_paths keeps a set of extensions per folder; the official checkpoint is a .pt
    paths, extensions = _folders.folder_names_and_paths[MODEL_FOLDER]
    _folders.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | MODEL_EXTENSIONS)


def list_files(folder: str) -> list[str]:
    if COMFY:
        return list(_folders.get_filename_list(folder))
    names = []
    for root in FALLBACK_FOLDERS.get(folder, []):
        for path in sorted(Path(root).rglob("*")):
            if path.suffix.lower() in MODEL_EXTENSIONS:
                names.append(path.relative_to(root).as_posix())
    return names


def model_folders(folder: str = MODEL_FOLDER) -> list[str]:
    """The folders a model kind is read from, the default (models/<folder>) first."""
    if COMFY:
        return list(_folders.get_folder_paths(folder))
    return list(FALLBACK_FOLDERS.get(folder, []))


def full_path(folder: str, name: str) -> str:
    """Absolute path of a listed file; FileNotFoundError naming the folders searched otherwise."""
    if COMFY:
        found = _folders.get_full_path(folder, name)
        roots = _folders.get_folder_paths(folder)
    else:
        roots = FALLBACK_FOLDERS.get(folder, [])
        found = next((str(Path(r) / name) for r in roots if (Path(r) / name).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{name!r} is not in models/{folder} (searched: {', '.join(map(str, roots)) or 'no folders'})")
    return found


def state_directory() -> str:
    """Where interrupted upscales keep what they need to resume: a hidden folder in ComfyUI's output folder
    (its temp folder is emptied at every start and stop, so a state there would not survive a restart)."""
    if COMFY:
        return os.path.join(_folders.get_output_directory(), ".inf_dit_resume")
    import tempfile

    return os.path.join(tempfile.gettempdir(), "inf_dit_resume")


# ---------------------------------------------------------------- devices and memory

def torch_device() -> torch.device:
    if COMFY:
        return _mm.get_torch_device()
    from .core import devices

    return devices.default_device()


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if COMFY else torch.device("cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    """On a GPU inside ComfyUI its own verdict (which honours its precision flags): bf16 where it says so,
    else fp16 where it says so (every pass is checked for fp16 overflow), else fp32. Elsewhere the core's
    rule: bf16 where the device multiplies it natively, fp16 on older CUDA cards, else fp32."""
    if COMFY and device.type != "cpu":
        if _mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float16 if _mm.should_use_fp16(device) else torch.float32
    from .core import auto_dtype as core_auto_dtype

    return core_auto_dtype(device)


def free_memory_bytes(device: torch.device) -> int:
    if COMFY:
        return int(_mm.get_free_memory(device))
    from .core import default_free_memory

    return default_free_memory(device)


def manage(model: torch.nn.Module):
    """A ComfyUI ModelPatcher over the model, so ComfyUI can offload it when others need memory."""
    if not COMFY:
        return None
    # ModelPatcher writes `.device` and bookkeeping attributes onto the module it manages; InfDiT has a
    # read-only `device` property, so give it a plain container to write on.
    holder = torch.nn.Module()
    holder.inf_dit = model
    return _patcher.ModelPatcher(holder, load_device=torch_device(), offload_device=offload_device())


def load_to_device(patcher, model: torch.nn.Module, memory_required: int) -> torch.nn.Module:
    """Make room (unloading other models if needed) and put the model on the compute device."""
    if patcher is None:
        return model.to(torch_device())
    # Full load: our layers are plain torch modules, which ComfyUI cannot stream partially.
    _mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
    return model


def empty_cache() -> None:
    if COMFY:
        _mm.soft_empty_cache()
    else:
        from .core import devices

        devices.empty_cache(torch_device())


def oom_errors() -> tuple[type[BaseException], ...]:
    errors = [torch.OutOfMemoryError]
    if COMFY and isinstance(_mm.OOM_EXCEPTION, type) and _mm.OOM_EXCEPTION is not Exception:
        errors.append(_mm.OOM_EXCEPTION)
    return tuple(errors)


# ---------------------------------------------------------------- samplers

def edm_model_sampling(sigma_min: float, sigma_max: float, sigma_data: float):
    """Our denoiser described the way ComfyUI's samplers read a model (`model_sampling`): ComfyUI's own
    continuous EDM sampling with an x0-style EDM output, as its EDM models use; a plain stand-in without it."""
    if not COMFY:
        return EDMModelSampling(sigma_min, sigma_max, sigma_data)

    class InfDiTModelSampling(_sampling.ModelSamplingContinuousEDM, _sampling.EDM):
        pass

    model_sampling = InfDiTModelSampling()
    model_sampling.set_parameters(sigma_min, sigma_max, sigma_data)
    return model_sampling


# ---------------------------------------------------------------- progress, cancel, messages

_interrupt_requested = False  # fallback flag, set by tests through request_interrupt()


def request_interrupt() -> None:
    global _interrupt_requested
    if COMFY:
        _mm.interrupt_current_processing(True)
    else:
        _interrupt_requested = True


def check_interrupted() -> None:
    """Raise if the user pressed Cancel (ComfyUI's own exception, so the UI reports it as cancelled)."""
    global _interrupt_requested
    if COMFY:
        _mm.throw_exception_if_processing_interrupted()
    elif _interrupt_requested:
        _interrupt_requested = False
        raise Interrupted("cancelled")


class Progress:
    """ComfyUI's progress bar (with a preview image on the node); a no-op without ComfyUI."""

    def __init__(self, total: int, node_id=None):
        self.bar = _utils.ProgressBar(total, node_id=node_id) if COMFY else None
        self.value, self.total = 0, total

    def update(self, value: int, total: int, preview=None) -> None:
        self.value, self.total = value, total
        if self.bar is not None:
            self.bar.update_absolute(value, total, ("JPEG", preview, 512) if preview is not None else None)


def send_progress_text(text: str, node_id) -> None:
    """A line of text on the node (ComfyUI's progress text, e.g. bytes and time left); skipped without a server."""
    if not COMFY or node_id is None:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception as e:  # an older server without progress text: the bar alone shows the progress
        log.debug("inf_dit: could not send progress text: %s", e)


def send_to_browser(event: str, data: dict) -> None:
    """A custom websocket message for web/ (silently skipped where there is no server)."""
    if not COMFY:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(event, data, PromptServer.instance.client_id)
    except Exception as e:  # a preview must never fail a run
        log.debug("inf_dit: could not send %s: %s", event, e)


def add_json_route(path: str, compute) -> bool:
    """GET `path` on ComfyUI's server answers compute(query: dict) -> dict as JSON (400 with the message on
    a ValueError), computed in a worker thread so the server's event loop (queue, websocket, other
    requests) never waits for it. False where there is no server."""
    if not COMFY:
        return False
    try:
        import asyncio

        from aiohttp import web
        from server import PromptServer

        async def handler(request):
            query = dict(request.rel_url.query)
            try:
                answer = await asyncio.get_running_loop().run_in_executor(None, compute, query)
            except ValueError as e:
                return web.json_response({"error": str(e)}, status=400)
            return web.json_response(answer)

        PromptServer.instance.routes.get(path)(handler)
        return True
    except Exception as e:  # e.g. an older server without `instance` at import time
        log.warning("inf_dit: route %s not registered: %s", path, e)
        return False


# ---------------------------------------------------------------- V3 registration

def v3_node(spec_factory):
    """A ComfyUI V3 node class for a `spec.NodeSpec` factory (called again on every define_schema, so
    file lists stay fresh)."""
    from comfy_api.latest import io

    spec = spec_factory()

    def to_input(item):
        common = dict(tooltip=item.tooltip, optional=item.optional, display_name=item.display_name)
        if item.kind == "combo":
            return io.Combo.Input(item.name, options=list(item.options), default=item.default, **common)
        if item.kind == "int":
            return io.Int.Input(item.name, default=item.default, min=item.min, max=item.max, step=item.step,
                                control_after_generate=item.control_after_generate or None, **common)
        if item.kind == "float":
            return io.Float.Input(item.name, default=item.default, min=item.min, max=item.max, step=item.step, **common)
        if item.kind == "boolean":
            return io.Boolean.Input(item.name, default=item.default, **common)
        if item.kind == "string":
            return io.String.Input(item.name, default=item.default, **common)
        if item.kind == "image":
            return io.Image.Input(item.name, **common)
        return io.Custom(item.kind).Input(item.name, **common)

    def to_output(item):
        kind = io.Image if item.kind == "image" else io.Custom(item.kind)
        return kind.Output(display_name=item.name, tooltip=item.tooltip)

    def define_schema(cls):
        s = spec_factory()
        return io.Schema(
            node_id=s.node_id, display_name=s.display_name, category=s.category, description=s.description,
            inputs=[to_input(i) for i in s.inputs], outputs=[to_output(o) for o in s.outputs],
            hidden=[io.Hidden.unique_id], is_output_node=s.is_output_node,
        )

    def execute(cls, **kwargs):
        result = spec.run(node_id=cls.hidden.unique_id if cls.hidden else None, **kwargs)
        return io.NodeOutput(*result.outputs, ui=result.ui)

    return type(spec.node_id, (io.ComfyNode,), {
        "define_schema": classmethod(define_schema), "execute": classmethod(execute),
        "__module__": __name__, "__doc__": spec.description,
    })


def extension(spec_factories):
    from comfy_api.latest import ComfyExtension

    class InfDiTExtension(ComfyExtension):
        async def get_node_list(self):
            return [v3_node(f) for f in spec_factories]

    return InfDiTExtension()
