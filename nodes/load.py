"""Load Inf-DiT: a checkpoint from models/inf_dit (or the bundled demo) -> an INF_DIT wire."""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch

from . import comfy_adapter as comfy
from .core import DEMO_MODEL_PATH, DTYPES, load_inf_dit
from .spec import Input, NodeResult, NodeSpec, Output
from .weights import DOWNLOAD_OPTION, fetch_official_weights

DEMO_OPTION = "infdit-demo (bundled)"
CLIP_FROM_CHECKPOINT = "from checkpoint"


class InfDiTHandle:
    """What travels on an INF_DIT wire: the model (kept on the offload device until a run needs it) and
    ComfyUI's patcher for it, which lets ComfyUI move it out when other models need the memory."""

    def __init__(self, model, path: str, patcher=None):
        self.model, self.path, self.patcher = model, path, patcher

    @property
    def config(self):
        return self.model.config

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def __repr__(self) -> str:
        return f"InfDiTHandle({self.name}, {self.model.dtype})"


@dataclass(frozen=True)
class _Key:
    path: str
    mtime_ns: int
    size: int
    dtype: str
    clip: str | None


# Two loader nodes (or two runs) on one file share one model; it is freed once no graph output holds it.
_loaded: "weakref.WeakValueDictionary[_Key, InfDiTHandle]" = weakref.WeakValueDictionary()


def model_options() -> list[str]:
    """The checkpoints found, the bundled demo, and the official weights to download. The download choice
    stays once the file is there (it then loads it): a workflow saved with it keeps validating."""
    options = comfy.list_files(comfy.MODEL_FOLDER)
    if DEMO_MODEL_PATH.is_file():
        options.append(DEMO_OPTION)
    return [*options, DOWNLOAD_OPTION]


def resolve_model_path(name: str) -> str:
    if name == DEMO_OPTION:
        if not DEMO_MODEL_PATH.is_file():
            raise FileNotFoundError(f"the bundled demo model is missing ({DEMO_MODEL_PATH}); reinstall the node pack")
        return str(DEMO_MODEL_PATH)
    if not name:
        raise FileNotFoundError(f"no Inf-DiT model selected: pick {DOWNLOAD_OPTION!r} to get the official weights, "
                                "or put a checkpoint (.safetensors or the official .pt) into models/inf_dit, then refresh")
    return comfy.full_path(comfy.MODEL_FOLDER, name)


def resolve_dtype(weight_dtype: str) -> torch.dtype:
    if weight_dtype == "auto":
        return comfy.auto_dtype(comfy.torch_device())
    if weight_dtype not in DTYPES:
        raise ValueError(f"weight_dtype must be auto, bf16, fp16 or fp32, got {weight_dtype!r}")
    return DTYPES[weight_dtype]


def load(model_name: str, weight_dtype: str = "auto", clip_name: str = CLIP_FROM_CHECKPOINT, node_id=None) -> NodeResult:
    if model_name == DOWNLOAD_OPTION:  # the only network access, and only on this explicit choice
        path = os.path.realpath(fetch_official_weights(node_id))
    else:
        path = os.path.realpath(resolve_model_path(model_name))
    clip_path = None if clip_name in (None, "", CLIP_FROM_CHECKPOINT) else os.path.realpath(comfy.full_path(comfy.CLIP_FOLDER, clip_name))
    dtype = resolve_dtype(weight_dtype)
    stat = os.stat(path)
    key = _Key(path, stat.st_mtime_ns, stat.st_size, str(dtype), clip_path)
    handle = _loaded.get(key)
    cached = handle is not None
    if handle is None:
        model = load_inf_dit(path, device=comfy.offload_device(), dtype=dtype, clip_path=clip_path)
        handle = InfDiTHandle(model, path, comfy.manage(model))
        _loaded[key] = handle
    info = f"{handle.name}: {handle.config.layers} layers, hidden {handle.config.hidden}, {str(dtype).removeprefix('torch.')}"
    return NodeResult((handle,), extra={"cached": cached, "info": info})


def spec() -> NodeSpec:
    return NodeSpec(
        node_id="InfDiTLoader",
        display_name="Load Inf-DiT",
        description="Loads an Inf-DiT super-resolution model (official .pt or .safetensors) from models/inf_dit.",
        inputs=(
            Input("model_name", "combo", "Checkpoint in models/inf_dit (or a folder from extra_model_paths.yaml, key "
                  "inf_dit): the official mp_rank_00_model_states.pt or a converted .safetensors. "
                  f"'{DOWNLOAD_OPTION}' downloads the official weights into models/inf_dit/inf-dit.safetensors on the "
                  "first run (progress on the node; Cancel keeps the part fetched and the next run resumes), then "
                  "loads that file. The environment variable INFDIT_WEIGHTS_URL points it at a mirror.",
                  options=tuple(model_options())),
            Input("weight_dtype", "combo", "Precision of the weights. auto = ComfyUI's choice for the GPU: bf16 on cards "
                  "that have it natively (RTX 30xx/40xx, A100, H100 and newer), fp16 on older ones (T4, V100, RTX 20xx); on a "
                  "CPU bf16 with AMX or AVX512-BF16, else fp32. fp16 halves memory like bf16 but may overflow: the run "
                  "then stops with a message instead of writing a broken image (use fp32). Avoid bf16 on older cards: "
                  "they only emulate it (slow, and much more memory).", default="auto",
                  options=("auto", "bf16", "fp16", "fp32")),
            Input("clip_name", "combo", "CLIP ViT-L-14 image encoder: from the checkpoint, or an open_clip file in "
                  "models/clip_vision when the checkpoint has none.", default=CLIP_FROM_CHECKPOINT,
                  options=(CLIP_FROM_CHECKPOINT, *comfy.list_files(comfy.CLIP_FOLDER))),
        ),
        outputs=(Output("INF_DIT", "inf_dit", "The loaded model, for Inf-DiT Upscale."),),
        run=load,
    )
