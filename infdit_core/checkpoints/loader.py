"""`load_inf_dit`: a checked checkpoint becomes a ready model (and its CLIP tower, if it uses one)."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import (
    CheckpointError,
    check_against_model,
    check_rotary_table,
    read_state_dict,
    split_state,
)
from ..network.clip import build_clip_visual
from ..network.config import InfDiTConfig
from ..network.model import InfDiT
from ..hardware.precision import resolve_dtype

# A small model this project trained itself (issue 4), so everything works before the real weights arrive.
DEMO_MODEL_PATH = Path(__file__).parents[1] / "weights" / "infdit-demo.safetensors"

CLIP_DOWNLOAD_HINT = (
    "download the open_clip ViT-L-14 weights (laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K, file "
    "open_clip_model.safetensors, about 1.7 GB) and pass it as clip_path / --clip "
    "(in ComfyUI: put it in models/clip_vision and pick it in Load Inf-DiT)"
)
_VISUAL_PREFIXES = ("image_encoder.model.visual.", "model.visual.", "visual.")


def inspect_checkpoint(path) -> InfDiTConfig:
    """The config of a checkpoint after the same checks as loading, without building the model."""
    state, metadata = read_state_dict(path)
    return split_state(path, state, metadata)[0]


def load_inf_dit(path, device="cpu", dtype=torch.float32, clip_path=None) -> InfDiT:
    """Load an official `.pt` or a converted `.safetensors` strictly; see docs/core-api.md.

    dtype: a torch dtype, "bf16"/"fp16"/"fp32", or "auto" (`precision.auto_dtype`: bf16 where the
    device multiplies it natively). The default stays float32, the precision of the reference checks."""
    dtype = resolve_dtype(dtype, device)
    name = Path(path).name
    state, metadata = read_state_dict(path)
    config, model_state, clip_state, unexpected = split_state(path, state, metadata)
    with torch.device("meta"):
        model = InfDiT(config)
    check_against_model(name, model, model_state, unexpected)
    check_rotary_table(name, state, config.head_dim)
    del state
    model.load_state_dict(model_state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    if config.vector_dim:
        if not clip_state:
            if clip_path is None:
                raise CheckpointError(f"{name} holds no CLIP image weights, and no CLIP file was given: {CLIP_DOWNLOAD_HINT}")
            clip_state = read_clip_state(clip_path)
        tower = build_clip_visual(clip_state)
        out_dim = tower.proj.shape[1] if tower.proj is not None else None
        if out_dim != config.vector_dim:
            raise CheckpointError(
                f"the CLIP tower outputs {out_dim}-d vectors but {name} expects {config.vector_dim}: {CLIP_DOWNLOAD_HINT}"
            )
        model.clip = tower.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def read_clip_state(path) -> dict[str, torch.Tensor]:
    """The image-tower weights of an open_clip ViT-L-14 file (or of an Inf-DiT checkpoint)."""
    name = Path(path).name
    state, _ = read_state_dict(path)
    for prefix in _VISUAL_PREFIXES:
        visual = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if visual:
            return visual
    if any(k.startswith("vision_model.") for k in state):
        raise CheckpointError(f"{name} is a Hugging Face transformers CLIP vision file; Inf-DiT needs the open_clip format: {CLIP_DOWNLOAD_HINT}")
    raise CheckpointError(f"{name} holds no CLIP image tower (no 'visual.*' keys): {CLIP_DOWNLOAD_HINT}")
