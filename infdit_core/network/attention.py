"""Unidirectional block attention (UniBA) and the Nearby-LR cross-attention windows.

A query in block (r, c) reads the keys/values of four blocks, in this order:
self, top-left, left, top. Missing neighbours at the border are clamped into the image (QUIRK of the
release: the duplicated groups change the softmax, so they are kept).

The four key groups can be attended in three ways, equal up to rounding (`ATTENTION_VARIANTS`):
- "lse_merge": one fused call per group, each returning its log-sum-exp, merged by those (no copy of
  a key; the CPU default, bit for bit the release's);
- "concat": the four groups copied side by side (with their group embedding added) and one call over 4T
  keys (the fewest bytes moved on a GPU: see benchmarks/gpu_model.py; the default on every GPU: off CUDA
  no kernel returns the log-sum-exp, so "lse_merge" would copy the groups anyway, once per run);
- "cudnn": like "lse_merge" with cuDNN's attention kernel where torch has it (NVIDIA builds).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from ..hardware.devices import traits
from ..hardware.precision import capability, native_bf16

Block = tuple[int, int]
KEY_GROUPS = ("self", "top_left", "left", "top")
ATTENTION_VARIANTS = ("auto", "lse_merge", "concat", "cudnn")
_variant = "auto"


def neighbour_blocks(row: int, col: int) -> tuple[Block, Block, Block, Block]:
    """The four key blocks of block (row, col), clamped at the top and left border."""
    up, left = max(row - 1, 0), max(col - 1, 0)
    return (row, col), (up, left), (row, left), (up, col)


def reader_blocks(row: int, col: int, rows: int, cols: int) -> tuple[Block, ...]:
    """The later blocks whose key groups include (row, col): right, below, below-right (inside the grid).
    With the border clamp these are all: a block's other readers are itself."""
    return tuple((r, c) for r, c in ((row, col + 1), (row + 1, col), (row + 1, col + 1)) if r < rows and c < cols)


def default_variant(device) -> str:
    """"lse_merge" on the CPU (the release's numbers), "concat" on every GPU (fewest bytes, one longer call)."""
    return "lse_merge" if torch.device(device).type == "cpu" else "concat"


def resolve_variant(variant: str | None, device) -> str:
    variant = _variant if variant is None else variant
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"attention variant must be one of {', '.join(ATTENTION_VARIANTS)}, got {variant!r}")
    return default_variant(device) if variant == "auto" else variant


@contextlib.contextmanager
def attention_variant(variant: str):
    """Run the block attention with `variant` inside the block (benchmarks/gpu.py A/Bs them)."""
    global _variant
    resolve_variant(variant, "cpu")
    before, _variant = _variant, variant
    try:
        yield
    finally:
        _variant = before


def attend_key_groups(q, keys, values, group_embed) -> torch.Tensor:
    """Attention of m blocks over four key groups given as separate tensors.

    q: (m, T, h, d); keys, values: four (m, T, h, d) tensors (any strides with a contiguous last dim,
    e.g. views into the frontier ring); group_embed: (4, h, d), added to every key of its group.
    Returns (m, T, h, d) (the "concat" variant: a view of (m, h, T, d) memory is avoided, it is
    laid out as (m, T, h, d)). With "lse_merge"/"cudnn" each group is attended on its own, returning
    its log-sum-exp; the embedding adds q.e_g to every score of group g, so it only shifts that group's
    log-sum-exp, and the softmax over all 4T keys is the lse-weighted sum of the four partial results.
    """
    # Training: the fused kernels give no gradient through the log-sum-exp, so the groups are copied.
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, *keys, *values, group_embed))
    if training:
        k = torch.cat([kg + e.to(kg.dtype) for kg, e in zip(keys, group_embed)], dim=1)
        v = torch.cat(list(values), dim=1)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    variant = resolve_variant(None, q.device)
    if variant == "concat":
        return _attend_concatenated(q, keys, values, group_embed)
    d = q.shape[-1]
    scale = d**-0.5
    qt = q.transpose(1, 2)  # (m, h, T, d)
    outs, lses = [], []
    for g in range(4):
        out, lse = attention_with_lse(qt, keys[g].transpose(1, 2), values[g].transpose(1, 2), scale,
                                      cudnn=variant == "cudnn")
        if out is None:  # no kernel on this device returns the log-sum-exp: one call over the copied groups
            return _attend_concatenated(q, keys, values, group_embed)
        outs.append(out)
        lses.append(lse)
    # q.e_g for every query and group: (m, h, T, 4)
    embed = group_embed if group_embed.dtype == q.dtype else group_embed.to(q.dtype)
    shift = torch.matmul(qt, embed.permute(1, 2, 0)[None]).float() * scale
    lses = torch.stack(lses).add_(shift.permute(3, 0, 1, 2))
    weights = torch.softmax(lses, dim=0).unsqueeze(-1).unbind(0)  # 4 x (m, h, T, 1), float32
    acc = outs[0].float().mul_(weights[0]) if q.dtype != torch.float32 else outs[0].mul_(weights[0])
    for g in range(1, 4):
        acc.addcmul_(outs[g], weights[g])
    return acc.transpose(1, 2)  # (m, T, h, d), converted to q's dtype by the caller's copy


def _attend_concatenated(q, keys, values, group_embed) -> torch.Tensor:
    """The four groups copied side by side, then one attention call over all 4T keys."""
    return attend_concatenated(q, [(0, q.shape[0], keys, values)], group_embed)


def attend_concatenated(q, parts, group_embed) -> torch.Tensor:
    """Attention of m blocks q (m, T, h, d) over their four key groups, written side by side into one
    (m, 4T, h, d) key and value buffer (the group embedding added on the way) and attended in one call.
    parts: [(start, length, keys, values)]: the four key and value groups of blocks start..start+length
    (views anywhere: the group's own k/v, the ring). Returns (m, T, h, d)."""
    m, t, h, d = q.shape
    k = q.new_empty(m, 4, t, h, d)
    k_groups = k.unbind(1)
    embeds = (group_embed if group_embed.dtype == q.dtype else group_embed.to(q.dtype)).unbind(0)
    single = len(parts) == 1
    if single:  # one run: the values are one concatenation (one call instead of four copies)
        v = torch.cat(parts[0][3], dim=1)
    else:
        v = q.new_empty(m, 4, t, h, d)
        v_groups = v.unbind(1)
    for start, length, keys, values in parts:
        for g in range(4):
            torch.add(keys[g], embeds[g], out=k_groups[g] if single else k_groups[g][start:start + length])
            if not single:
                v_groups[g][start:start + length].copy_(values[g])
    return _one_call(q, k.view(m, 4 * t, h, d), v.view(m, 4 * t, h, d))


# Per (device with its index, dtype): "cudnn" while cuDNN's kernel takes the one call over 4T keys, "sdpa"
# once it refused (then torch's own choice, flash first).
_ONE_CALL: dict = {}


def _one_call(q, k, v) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (m, T, h, d) q and (m, 4T, h, d) k, v -> (m, T, h, d). On Hopper and
    newer cuDNN's kernel first: torch ranks it after flash, but on those cards it runs head dim 80
    unpadded and is the faster one (torch 2.5's release measured up to 75% over FA2 on H100;
    benchmarks/gpu.py measures it here); a refusal falls back to F.scaled_dot_product_attention."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    key = (str(q.device), q.dtype)
    if q.device.type == "cuda" and q.dtype != torch.float32 and _ONE_CALL.get(key) != "sdpa":
        if not traits(q.device).cudnn_attention:  # a HIP build: no cuDNN, whatever capability it reports
            _ONE_CALL[key] = "sdpa"
        elif (cap := capability(q.device)) is not None and cap >= (9, 0):
            try:
                out = torch.ops.aten._scaled_dot_product_cudnn_attention(qt, kt, vt, None, False)[0]
                _ONE_CALL[key] = "cudnn"
                return out.transpose(1, 2)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, AttributeError, NotImplementedError) as e:
                warnings.warn(f"cuDNN attention unavailable for {key}; using torch's choice ({e})")
                _ONE_CALL[key] = "sdpa"
    return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


# Per (device with its index, dtype): the first log-sum-exp kernel that ran, or "concat" when none did.
# A kernel that refuses is not tried again on that device and dtype; other GPUs of the machine keep theirs.
_CHOSEN: dict = {}


def lse_kernels(device, dtype, cudnn: bool = False) -> tuple[str, ...]:
    """The log-sum-exp kernels worth trying, best first. CUDA: flash (fp16/bf16 on sm80+), then the
    memory-efficient kernel (fp16/fp32 on sm50+, bf16 on sm80+); "cudnn" first where asked for."""
    device = torch.device(device)
    if device.type == "cpu":
        return ("flash_cpu",)
    if device.type != "cuda":
        return ()
    native = native_bf16(device)
    kernels = ["cudnn"] if cudnn and native and dtype != torch.float32 and traits(device).cudnn_attention else []
    if dtype == torch.float16 or (dtype == torch.bfloat16 and native):
        if native:
            kernels.append("flash")
        kernels.append("efficient")
    elif dtype == torch.float32:
        kernels.append("efficient")
    return tuple(kernels)


def chosen_kernel(device, dtype, cudnn: bool = False) -> str:
    """The kernel the attention uses (or will first try) on this device and dtype, "concat" if none."""
    key = (str(torch.device(device)), dtype, cudnn)
    if key in _CHOSEN:
        return _CHOSEN[key]
    kernels = lse_kernels(device, dtype, cudnn)
    return kernels[0] if kernels else "concat"


def _run_kernel(name, q, k, v, scale):
    if name == "flash_cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    if name == "flash":
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)
    elif name == "efficient":  # its log-sum-exp is padded to a multiple of 32 queries
        res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)
    else:  # cudnn
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, scale=scale)
    lse = res[1]
    if lse.dim() == 4:  # cuDNN: (N, h, Tq, 1)
        lse = lse.squeeze(-1)
    return res[0], lse if lse.shape[-1] == q.shape[-2] else lse[..., : q.shape[-2]]


def attention_with_lse(q, k, v, scale, cudnn: bool = False):
    """Scaled dot-product attention that also returns the log-sum-exp of the scores, or (None, None).

    q: (N, h, Tq, d), k, v: (N, h, Tk, d) -> (N, h, Tq, d), (N, h, Tq) float32. Uses the fused kernels
    behind F.scaled_dot_product_attention (never the Tq x Tk score matrix), one step down at a time
    (`lse_kernels`): a kernel that fails is noted once and the next is tried; (None, None) when none
    is left (the caller then copies the groups and makes one call)."""
    key = (str(q.device), q.dtype, cudnn)
    chosen = _CHOSEN.get(key)
    if chosen == "concat":
        return None, None
    if chosen is not None:  # the usual call: the kernel that ran before, no device query
        try:
            out, lse = _run_kernel(chosen, q, k, v, scale)
            return out, lse if lse.dtype == torch.float32 else lse.float()
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AttributeError, NotImplementedError) as e:
            warnings.warn(f"attention kernel {chosen} failed for {key[:2]}; trying the next ({e})")
    kernels = lse_kernels(q.device, q.dtype, cudnn)
    if chosen is not None:
        kernels = kernels[kernels.index(chosen) + 1:] if chosen in kernels else ()
    for name in kernels:
        try:
            out, lse = _run_kernel(name, q, k, v, scale)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AttributeError, NotImplementedError) as e:
            warnings.warn(f"attention kernel {name} unavailable for {key[:2]}; trying the next ({e})")
            continue
        _CHOSEN[key] = name
        return out, lse if lse.dtype == torch.float32 else lse.float()
    _CHOSEN[key] = "concat"
    return None, None


def lr_window(lr_features_fn, lr: torch.Tensor, row: int, col: int, lr_block: int) -> torch.Tensor:
    """The 48x48 LR-feature window of block (row, col): (B, C, 48, 48), zero features outside.

    The window covers LR feature rows [16r-16, 16r+32): LR pixel rows [32r-32, 32r+64) for lr_block=32.
    The features are computed from the pixels that exist and then zero-padded (the reference pads
    the conv output, so outside keys are key_value(0), not absent).
    """
    h, w = lr.shape[-2:]
    top, left = (row - 1) * lr_block, (col - 1) * lr_block
    span = 3 * lr_block
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + span, h), min(left + span, w)
    feats = lr_features_fn(lr[:, :, t0:t1, l0:l1])
    return F.pad(feats, ((l0 - left) // 2, (left + span - l1) // 2, (t0 - top) // 2, (top + span - t1) // 2))
