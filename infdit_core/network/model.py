"""The Inf-DiT network: a pixel-space DiT whose attention is restricted to block neighbourhoods.

Read top to bottom: the layer-0 LR cross-attention, one transformer layer, the whole model. Tokens
are handled as groups of 32x32-token blocks, (B, n, T=1024, C), so the same code runs the whole image
at once (one group of all blocks) and block by block (see `denoiser.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import lr_window
from .frontier import KeyValueStore
from .config import BLOCK_TOKENS, LR_WINDOW, InfDiTConfig
from .layers import (
    affine_norm,
    linear_gelu,
    apply_signed_rotary,
    block_rotary,
    layer_norm,
    modulate,
    modulated_norm,
    norm_affine,
    pair_swap_index,
    noise_features,
    patchify_blocks,
    signed_rotary,
    unpatchify,
)
from .precond import edm_scalings


class NearbyLRCrossAttention(nn.Module):
    """Layer 0 only: each block attends to the 48x48 LR features around it (3x3 blocks)."""

    def __init__(self, cfg: InfDiTConfig):
        super().__init__()
        c, h, d = cfg.hidden, cfg.heads, cfg.head_dim
        self.heads = h
        self.proj_lr = nn.Conv2d(3, c, kernel_size=2, stride=2)  # one feature per 8x8 output pixels
        self.query = nn.Linear(c, c)
        self.key_value = nn.Linear(c, 2 * c)
        self.dense = nn.Linear(c, c)
        self.q_norm = affine_norm(d)
        self.k_norm = affine_norm(d)
        self.query_pos = nn.Parameter(torch.zeros(1, BLOCK_TOKENS * BLOCK_TOKENS, h, d))
        self.key_pos = nn.Parameter(torch.zeros(1, LR_WINDOW * LR_WINDOW, h, d))
        self.post_norm = affine_norm(c)

    def windows(self, lr: torch.Tensor, blocks: list[tuple[int, int]], staging=None) -> torch.Tensor:
        """LR (B, 3, h, w) -> window features (B, n, 2304, C), built only for these blocks.

        The LR image may live on the host: only each window's pixels go to the device (through
        `staging`, a PinnedStaging, when given)."""
        lr_block = BLOCK_TOKENS  # 32 LR pixels per block side: the LR image is output / 4
        w = self.proj_lr.weight
        features = lambda pixels: self.proj_lr(_to_device(pixels, w.device, staging).to(w.dtype))  # noqa: E731
        wins = [lr_window(features, lr, r, c, lr_block) for r, c in blocks]
        return torch.stack(wins, 1).flatten(-2).transpose(-1, -2)  # (B, n, 2304, C)

    def forward(self, x: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        b, n, t, c = x.shape
        h = self.heads
        q = self.query(x).view(b * n, t, h, -1)
        k, v = self.key_value(windows).view(b * n, windows.shape[2], 2 * h, -1).chunk(2, dim=2)
        q = self.q_norm(q) + self.query_pos.to(q.dtype)
        k = self.k_norm(k) + self.key_pos.to(k.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.dense(out.transpose(1, 2).reshape(b, n, t, c))


class InfDiTLayer(nn.Module):
    """Pre-LN transformer layer with adaLN (no gates) and block attention."""

    def __init__(self, cfg: InfDiTConfig):
        super().__init__()
        c = cfg.hidden
        self.heads = cfg.heads
        self.modulation = nn.Linear(c, 4 * c)  # shift_a, scale_a, shift_m, scale_m
        self.qkv = nn.Linear(c, 3 * c)
        self.qk_norm = affine_norm(cfg.head_dim)  # QUIRK: the query norm is applied to keys too
        self.proj = nn.Linear(c, c)
        self.mlp_in = nn.Linear(c, cfg.mlp_ratio * c)
        self.mlp_out = nn.Linear(cfg.mlp_ratio * c, c)

    # The tensor-only stages of a layer, between which the block attention reads the keys/values. Each takes the layer
    # as its first argument, so `torch.compile` of the plain function serves every layer (see compile.py).
    def attention_inputs(self, x, shift, scale, cos, signed_sin, swap=None):
        """adaLN, q/k/v, the shared q/k norm and the 2-D rotary: q, k, v (B, n, T, h, d).

        q and k are normed and rotated together (one pass each over both), and returned as views.
        cos/signed_sin: (1, n, T, 1, 1, d), made once per group to broadcast over batch, q/k and heads."""
        b, n, t, c = x.shape
        qkv = self.qkv(modulated_norm(x, shift, scale)).view(b, n, t, 3, self.heads, -1)
        qk = apply_signed_rotary(self.qk_norm(qkv[:, :, :, :2]), cos, signed_sin, swap)
        return qk.unbind(3) + (qkv[:, :, :, 2],)

    def feed_forward(self, x, m, shift, scale):
        """The adaLN MLP of the normed input m, with its residual."""
        return x + self.mlp_out(linear_gelu(modulate(m, shift, scale), self.mlp_in))

    def after_attention(self, x, attn, shift, scale):
        """Every layer but the first: the attention's projection and residual, then the MLP."""
        x = x + self.proj(attn)
        return x + self.mlp_out(linear_gelu(modulated_norm(x, shift, scale), self.mlp_in))


class LayerStages(NamedTuple):
    """The functions `forward_blocks` runs per layer: eager by default, compiled by `compile.compiled`."""

    attention_inputs: Callable
    feed_forward: Callable
    after_attention: Callable


EAGER_STAGES = LayerStages(InfDiTLayer.attention_inputs, InfDiTLayer.feed_forward, InfDiTLayer.after_attention)


@dataclass
class Conditioning:
    """What one network evaluation shares across all blocks."""

    sigma: torch.Tensor  # (B,)
    c_in: torch.Tensor  # (B,)
    c_skip: torch.Tensor
    c_out: torch.Tensor
    layer_mods: list  # per layer: 4 tensors (B, C); for one image 1-D (bias, weight) pairs (layers.norm_affine)
    final_mod: tuple  # shift, scale (B, C), or (bias, weight)
    key_embeds: list | None = None  # per layer the (4, h, d) key-group embeddings (picked once per evaluation)


class InfDiT(nn.Module):
    def __init__(self, cfg: InfDiTConfig):
        super().__init__()
        self.config = cfg
        c = cfg.hidden
        p = cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, c, kernel_size=p, stride=p)
        self.time_embed = nn.Sequential(nn.Linear(192, c), nn.SiLU(), nn.Linear(c, c))
        self.vector_embed = (
            nn.Sequential(nn.Linear(cfg.vector_dim, c), nn.SiLU(), nn.Linear(c, c)) if cfg.vector_dim else None
        )
        self.layers = nn.ModuleList(InfDiTLayer(cfg) for _ in range(cfg.layers))
        self.key_group_embed = nn.Parameter(torch.zeros(cfg.layers, 4, cfg.heads, cfg.head_dim))
        self.lr_cross = NearbyLRCrossAttention(cfg)
        self.final_modulation = nn.Linear(c, 2 * c)
        self.final_linear = nn.Linear(c, p * p * cfg.out_channels)
        self.clip = None  # the CLIP image tower, attached by the loader when vector_dim > 0
        self.stages = EAGER_STAGES  # swapped for compiled twins inside `compile.compiled(model)`

    def initialize_weights(self) -> None:
        """DiT-style init for training from scratch: Xavier linears, adaLN and output zeroed."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            nn.init.zeros_(layer.modulation.weight)
            nn.init.zeros_(layer.modulation.bias)
        for p in (self.final_modulation.weight, self.final_modulation.bias, self.final_linear.weight, self.final_linear.bias):
            nn.init.zeros_(p)
        for p in (self.key_group_embed, self.lr_cross.query_pos, self.lr_cross.key_pos):
            nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)

    @property
    def needs_clip(self) -> bool:
        return self.config.vector_dim > 0

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embed.weight.device

    # --- per-evaluation conditioning -------------------------------------------------------------
    def condition(self, sigma: torch.Tensor, vector: torch.Tensor | None) -> Conditioning:
        """sigma (B,) float32, vector (B, vector_dim) or None -> shared modulations."""
        s = edm_scalings(sigma.float(), self.config.sigma_data)
        emb = self.time_embed(noise_features(s.c_noise).to(self.dtype))
        if self.vector_embed is not None:
            if vector is None:
                raise ValueError("this model needs a CLIP image vector (vector_dim > 0) but none was given")
            emb = emb + self.vector_embed(vector.to(self.dtype))
        emb = F.silu(F.silu(emb))  # QUIRK: SiLU after the sum, and again inside every adaLN
        mods = [layer.modulation(emb).chunk(4, dim=-1) for layer in self.layers]
        final = self.final_modulation(emb).chunk(2, dim=-1)
        if emb.shape[0] == 1:  # one image: the adaLN affines made here once, not in every block group
            mods = [(*norm_affine(sa, ca), *norm_affine(sm, cm)) for sa, ca, sm, cm in mods]
            final = norm_affine(*final)
        return Conditioning(sigma, s.c_in, s.c_skip, s.c_out, mods, final, list(self.key_group_embed.unbind(0)))

    # --- one group of blocks through the whole network --------------------------------------------
    def forward_blocks(self, x, u, lr, cond: Conditioning, blocks, kv: KeyValueStore) -> torch.Tensor:
        """Denoised estimate D of `blocks` (list of (row, col), or a `BlockGroup`): (B, n, 3, block, block).

        x, u: (B, 3, H, W) whole noisy and upsampled-LR images (H, W whole blocks), lr: (B, 3, H/4, W/4).
        They may live on the host (huge outputs): only the blocks of this group go to the device, and
        the result is on the device. Neighbours of these blocks not in the group must be in `kv`.
        Nothing here reads a device value: the block coordinates are Python numbers, and their device
        copy comes with a `BlockGroup` (made once per evaluation), so a GPU never waits on the host.
        """
        cfg = self.config
        bs = cfg.block_size
        device = self.device
        where = getattr(blocks, "coords", None)
        if where is None:
            where = torch.tensor(blocks, device=device)
        staging = getattr(blocks, "staging", None)
        xb = _to_device(patchify_blocks(x, blocks, bs), device, staging)  # (B, n, 3, bs, bs)
        ub = _to_device(patchify_blocks(u, blocks, bs), device, staging)
        if cfg.residual:  # demo models: denoise x - u, then add u back
            xb = xb - ub
        c_in = _per_sample(cond.c_in, xb)
        inp = torch.cat([xb * c_in, ub * c_in if cfg.lr_input_scaled else ub], dim=2).to(self.dtype)
        b, n = inp.shape[:2]
        tokens = self.patch_embed(inp.flatten(0, 1))  # (Bn, C, 32, 32)
        tokens = tokens.flatten(2).transpose(1, 2).reshape(b, n, -1, cfg.hidden)  # (B, n, T, C) row-major
        rope = block_rotary(where[:, 0], where[:, 1], cfg.head_dim)

        cos, signed_sin = signed_rotary(*rope, self.dtype)  # converted once for all layers
        cos, signed_sin = cos[None, :, :, None, None], signed_sin[None, :, :, None, None]
        swap = pair_swap_index(cfg.head_dim, device)
        stages = self.stages
        for i, layer in enumerate(self.layers):
            shift_a, scale_a, shift_m, scale_m = cond.layer_mods[i]
            q, k, v = stages.attention_inputs(layer, tokens, shift_a, scale_a, cos, signed_sin, swap)
            attn = kv.attend(i, blocks, q, k, v, cond.key_embeds[i])  # reads the frontier in place
            del q, k, v  # stored in the frontier where later groups need them: not held through the MLP
            if i == 0:  # layer 0 reads the LR image between its attention and its MLP
                tokens = tokens + layer.proj(attn)
                windows = self.lr_cross.windows(lr, blocks, staging)
                tokens = tokens + self.lr_cross(layer_norm(tokens), windows)
                tokens = stages.feed_forward(layer, tokens, self.lr_cross.post_norm(tokens), shift_m, scale_m)
            else:
                tokens = stages.after_attention(layer, tokens, attn, shift_m, scale_m)

        shift, scale = cond.final_mod
        out = modulated_norm(layer_norm(tokens), shift, scale)  # QUIRK: final norm, then another LN
        out = unpatchify(self.final_linear(out), cfg.patch_size, cfg.out_channels).float()
        denoised = _per_sample(cond.c_out, out) * out + _per_sample(cond.c_skip, xb) * xb.float()
        return denoised + ub.float() if cfg.residual else denoised

    # --- the whole image at once (the reference's `full` mode) ------------------------------------
    def forward(self, x, sigma, u, lr, vector=None) -> torch.Tensor:
        """D(x; sigma) of the whole image in one pass. x, u: (B, 3, H, W) with H, W whole blocks;
        sigma: scalar or (B,); lr: (B, 3, H/4, W/4); vector: (B, vector_dim) or None."""
        bs = self.config.block_size
        rows, cols = x.shape[-2] // bs, x.shape[-1] // bs
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        blocks = [(r, c) for r in range(rows) for c in range(cols)]
        out = self.forward_blocks(x, u, lr, self.condition(sigma, vector), blocks, KeyValueStore(len(self.layers)))
        return stitch_blocks(out, rows, cols)


def stitch_blocks(blocks: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, rows*cols, C, bs, bs) in row-major block order -> (B, C, rows*bs, cols*bs)."""
    b, _, c, bs, _ = blocks.shape
    x = blocks.view(b, rows, cols, c, bs, bs).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * bs, cols * bs)


class BlockGroup(list):
    """The blocks of one group ((row, col) list) with what `forward_blocks` needs beyond them: `coords`, the
    same coordinates as an (n, 2) device tensor (a slice of one made per evaluation), and `staging`, the
    pinned buffers that carry host-held image blocks (None when the images are on the device)."""

    def __init__(self, blocks, coords=None, staging=None):
        super().__init__(blocks)
        self.coords, self.staging = coords, staging


def _to_device(t: torch.Tensor, device, staging) -> torch.Tensor:
    """t on the compute device: as it is, through pinned staging (host-held images on CUDA), or copied."""
    if t.device == device:
        return t
    return staging.to_device(t) if staging is not None else t.to(device)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)
