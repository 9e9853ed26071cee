"""Reading, checking and converting Inf-DiT checkpoints.

The official file is DeepSpeed's `mp_rank_00_model_states.pt`: a pickle of a dict whose `module` is
the state dict. It is read with `torch.load(weights_only=True)`, never by unpickling arbitrary
objects. Converted files are `.safetensors` with the official key names, minus what inference never
reads. Every problem becomes a `CheckpointError` whose one-line message says what the file is and
what was expected.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .atomic import atomic_write
from ..hardware.precision import DTYPES
from ..network.config import InfDiTConfig

CLIP_PREFIX = "image_encoder.model.visual."
CONFIG_METADATA_KEY = "infdit_config"

# Official key name <-> our module's key name ({i} = layer index; a trailing "." = a prefix, else the
# whole name). Everything the model reads is here; both directions are built from this one table.
_NAMES = [
    ("mixins.patch_embed.proj.", "patch_embed."),
    ("time_embed.mlp.", "time_embed."),
    ("cond_embed.map_vector.", "vector_embed."),
    ("transformer.layers.{i}.attention.query_key_value.", "layers.{i}.qkv."),
    ("transformer.layers.{i}.attention.dense.", "layers.{i}.proj."),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.", "layers.{i}.mlp_in."),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.", "layers.{i}.mlp_out."),
    ("mixins.adaln_layer.adaLN_modulations.{i}.1.", "layers.{i}.modulation."),
    ("mixins.adaln_layer.q_layer_norm.{i}.", "layers.{i}.qk_norm."),
    ("mixins.adaln_layer.re_pos_embed", "key_group_embed"),
    ("mixins.adaln_layer.proj_lr.", "lr_cross.proj_lr."),
    ("mixins.adaln_layer.cross_attention.", "lr_cross."),
    ("mixins.adaln_layer.cross_q_ln.", "lr_cross.q_norm."),
    ("mixins.adaln_layer.cross_k_ln.", "lr_cross.k_norm."),
    ("mixins.adaln_layer.lr_query_position_embedding", "lr_cross.query_pos"),
    ("mixins.adaln_layer.lr_key_position_embedding", "lr_cross.key_pos"),
    ("mixins.adaln_layer.post_cross_attention_layernorm.", "lr_cross.post_norm."),
    ("mixins.final_layer.adaLN_modulation.1.", "final_modulation."),
    ("mixins.final_layer.linear.", "final_linear."),
]


def _rename_rules(source: int) -> list[tuple[re.Pattern, str]]:
    """Regex rules from column `source` of _NAMES to the other column, most specific first
    (so "lr_cross.proj_lr." is tried before "lr_cross.")."""
    rules = []
    for pair in _NAMES:
        src, dst = pair[source], pair[1 - source]
        pattern = re.escape(src).replace(r"\{i\}", r"(\d+)") + ("" if src.endswith(".") else "$")
        rules.append((re.compile("^" + pattern), dst.replace("{i}", r"\1")))
    return sorted(rules, key=lambda rule: -len(rule[0].pattern))


_KEY_MAP = _rename_rules(0)  # official -> ours
_REVERSE = _rename_rules(1)  # ours -> official

# Entries of the official file that inference never reads: the precomputed rotary table (recomputed),
# an unused position table, the key norms the reference never applies (QUIRK), CLIP's text side.
_UNUSED = re.compile(
    r"^(mixins\.adaln_layer\.rope\.freqs_(cos|sin)"
    r"|transformer\.position_embeddings\.weight"
    r"|mixins\.adaln_layer\.k_layer_norm\.\d+\.(weight|bias)"
    r"|image_encoder\.model\.(?!visual\.).*)$"
)
ROTARY_KEYS = ("mixins.adaln_layer.rope.freqs_cos", "mixins.adaln_layer.rope.freqs_sin")


class CheckpointError(ValueError):
    """A model file that cannot be used, with a message that says why and what to do."""


# --- reading ---------------------------------------------------------------------------------------
def read_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The raw official-named state dict of `path` and its safetensors metadata ({} for .pt)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): re-download or re-copy the file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # a torch zip archive or a legacy pickle
        return _read_torch(path), {}
    return _read_safetensors(path, size)


def _read_safetensors(path: Path, size: int):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path.name} ({size} bytes) is neither a readable .safetensors file nor a torch checkpoint "
            f"({_first_line(e)}); it is probably truncated or corrupt: download it again"
        ) from None
    return state, metadata


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            raise CheckpointError(
                f"{path.name} contains Python objects other than tensors, which are not loaded for safety; "
                "expected the official mp_rank_00_model_states.pt or a .safetensors file"
            ) from None
        raise CheckpointError(f"{path.name} is truncated or corrupt ({_first_line(e)}): download it again") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path.name} is truncated or corrupt ({_first_line(e)}): download it again") from None
    return canonicalize(obj, path.name)


def canonicalize(obj, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap known containers (DeepSpeed's `module`, `state_dict`, `model`) and a `module.` prefix."""
    for _ in range(3):
        if isinstance(obj, dict) and not _is_state_dict(obj):
            for key in ("module", "state_dict", "model"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise CheckpointError(
            f"{name} holds no state dict of tensors (found {type(obj).__name__} with keys "
            f"{_sample(list(obj) if isinstance(obj, dict) else [])}); expected a dict whose 'module' is the state dict"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


# --- recognising the file --------------------------------------------------------------------------
def describe_foreign(keys) -> str | None:
    """What a non-Inf-DiT state dict looks like, or None if it has Inf-DiT keys."""
    keys = list(keys)
    if any(k.startswith("mixins.patch_embed.") or k.startswith("patch_embed.") for k in keys):
        return None
    if any("lora_" in k or k.endswith(".alpha") or ".lora." in k for k in keys):
        return "a LoRA"
    if any(k.startswith(("model.diffusion_model.", "conditioner.embedders", "first_stage_model.")) for k in keys):
        return "a Stable Diffusion (SD/SDXL) checkpoint"
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in keys):
        return "a diffusers UNet"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return "a VAE"
    if any(k.startswith(("visual.", "vision_model.", "text_model.", "transformer.resblocks.")) for k in keys):
        return "a CLIP model"
    return "not an Inf-DiT checkpoint"


def official_to_internal(key: str) -> str | None:
    """Our module key for an official key, or None for keys inference does not read."""
    for pattern, repl in _KEY_MAP:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return None


def infer_config(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> InfDiTConfig:
    """The config of an official-named state dict, read from its tensor shapes."""
    base = InfDiTConfig.from_json(metadata[CONFIG_METADATA_KEY]) if metadata and CONFIG_METADATA_KEY in metadata else None
    patch = state["mixins.patch_embed.proj.weight"]  # (hidden, in_channels, p, p)
    group = state["mixins.adaln_layer.re_pos_embed"]  # (layers, 4, heads, head_dim)
    hidden, p = patch.shape[0], patch.shape[-1]
    layers = 1 + max(
        int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.attention\.query_key_value\.weight$", k))
    )
    vector = state.get("cond_embed.map_vector.0.weight")
    mlp = state["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape[0]
    shapes = dict(
        layers=layers,
        hidden=hidden,
        heads=group.shape[2],
        vector_dim=0 if vector is None else vector.shape[1],
        patch_size=p,
        in_channels=patch.shape[1],
        out_channels=state["mixins.final_layer.linear.weight"].shape[0] // (p * p),
        mlp_ratio=mlp // hidden,
    )
    if base is None:
        return InfDiTConfig(**shapes)
    import dataclasses

    return dataclasses.replace(base, **shapes)


def split_state(path, state, metadata):
    """Check an official-named state dict and split it into (config, model state, CLIP visual state)."""
    name = Path(path).name
    foreign = describe_foreign(state)
    if foreign is not None:
        raise CheckpointError(
            f"{name} is {foreign} (keys like {_sample(list(state))}), not an Inf-DiT model; "
            "expected the official Inf-DiT mp_rank_00_model_states.pt or a .safetensors converted from it"
        )
    try:
        config = infer_config(state, metadata)
    except KeyError as e:
        raise CheckpointError(f"{name} looks like Inf-DiT but is incomplete: missing key {e} (download it again)") from None
    except (ValueError, IndexError) as e:
        raise CheckpointError(f"{name} looks like Inf-DiT but is incomplete: cannot read its shape ({_first_line(e)})") from None
    model_state, clip_state = {}, {}
    unexpected = []
    for key, value in state.items():
        if key.startswith(CLIP_PREFIX):
            clip_state[key[len(CLIP_PREFIX):]] = value
        elif (internal := official_to_internal(key)) is not None:
            model_state[internal] = value
        elif not _UNUSED.match(key):
            unexpected.append(key)
    return config, model_state, clip_state, unexpected


def check_against_model(name, model, model_state, unexpected) -> None:
    """Strict key and shape check with a message naming missing and unexpected keys."""
    expected = model.state_dict()
    missing = [_internal_to_official(k) for k in expected if k not in model_state]  # as the user's file names them
    unexpected = unexpected + [k for k in model_state if k not in expected]
    wrong = [
        f"{k} {tuple(model_state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in model_state and model_state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys {_sample(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys {_sample(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes {_sample(wrong)}")
        raise CheckpointError(f"{name} does not match the Inf-DiT layout: " + "; ".join(parts))


def check_rotary_table(name: str, state: dict[str, torch.Tensor], head_dim: int) -> None:
    """A stored rotary table must equal the recomputed one (we never load it, so check it)."""
    from ..network.layers import rotary_table

    if ROTARY_KEYS[0] not in state:
        return
    stored_cos, stored_sin = state[ROTARY_KEYS[0]], state[ROTARY_KEYS[1]]
    size = stored_cos.shape[0]
    cos, sin = rotary_table(head_dim, size)
    step = max(1, size // 64)  # a strided sample keeps the check cheap on the 1024x1024 table
    sl = (slice(None, None, step), slice(None, None, step))
    if not (torch.equal(cos[sl], stored_cos[sl].float()) and torch.equal(sin[sl], stored_sin[sl].float())):
        raise CheckpointError(f"{name}: the stored rotary table differs from the recomputed one; the file is not a released Inf-DiT")


# --- writing ---------------------------------------------------------------------------------------


def convert(src, dst, dtype: str | None = None) -> dict:
    """Convert an official checkpoint to .safetensors, dropping what inference never reads.

    Writes to a temporary file first so a failure never leaves a half-written output; the result gets
    ordinary permissions (0666 minus the umask), readable by a ComfyUI running as another user.
    Returns a summary dict (kept and dropped key counts, bytes written).
    """
    from safetensors.torch import save_file

    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    state, metadata = read_state_dict(src)
    config, model_state, clip_state, unexpected = split_state(src, state, metadata)
    from ..network.model import InfDiT

    with torch.device("meta"):
        check_against_model(Path(src).name, InfDiT(config), model_state, unexpected)
    check_rotary_table(Path(src).name, state, config.head_dim)
    kept = {k: v for k, v in state.items() if not _UNUSED.match(k)}
    if dtype is not None:
        kept = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in kept.items()}
    kept = {k: v.contiguous() for k, v in kept.items()}
    dst = Path(dst)
    metadata = {CONFIG_METADATA_KEY: config.to_json(), "format": "inf-dit"}
    atomic_write(dst, lambda tmp: save_file(kept, str(tmp), metadata=metadata))
    return {"kept": len(kept), "dropped": len(state) - len(kept), "bytes": dst.stat().st_size, "config": config}


def save_model(model, path, extra_metadata: dict[str, str] | None = None) -> None:
    """Write a model as .safetensors with official key names and its config as metadata (atomic)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in official_state_dict(model).items()}
    metadata = {CONFIG_METADATA_KEY: model.config.to_json(), "format": "inf-dit", **(extra_metadata or {})}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def official_state_dict(model) -> dict[str, torch.Tensor]:
    """Our model's weights under the official key names (inverse of `official_to_internal`)."""
    inverse = {}
    internal = model.state_dict()
    for key in internal:
        if not key.startswith("clip."):  # the CLIP tower is written under its own prefix below
            inverse[key] = _internal_to_official(key)
    out = {inverse[k]: v for k, v in internal.items() if k in inverse}
    if getattr(model, "clip", None) is not None:
        out.update({CLIP_PREFIX + k: v for k, v in model.clip.state_dict().items()})
    return out


def _internal_to_official(key: str) -> str:
    for pattern, repl in _REVERSE:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    raise KeyError(f"no official name for {key}")


def _sample(items, n: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__
