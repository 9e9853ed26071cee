"""Hyperparameters of an Inf-DiT model.

The released model is `InfDiTConfig.released()`. Any checkpoint of this family describes its own
shapes, so `checkpoint.infer_config` builds the config from the state dict and no flags are needed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

TIME_FREQUENCIES = 96  # the noise embedding is always 2 * 96 = 192 wide, whatever the hidden size
BLOCK_TOKENS = 32  # a block is 32x32 tokens (lr_query_position_embedding has 1024 rows)
LR_WINDOW = 48  # the cross-attention window is 48x48 LR features (3x3 blocks of 16x16)


@dataclass(frozen=True)
class InfDiTConfig:
    layers: int = 28
    hidden: int = 1280
    heads: int = 16
    vector_dim: int = 768  # CLIP image vector size; 0 = a model without CLIP
    patch_size: int = 4
    in_channels: int = 6  # noisy image + upsampled LR
    out_channels: int = 3
    mlp_ratio: int = 4
    # Demo-model options (the released model uses the defaults below).
    lr_input_scaled: bool = True  # QUIRK of the release: c_in multiplies the upsampled LR too
    residual: bool = False  # diffuse y - u instead of y: the network only adds what bicubic misses
    sigma_max: float = 40.0  # first noise level of the sampler
    sampler_steps: int = 20  # Heun steps used when the caller does not choose
    sigma_min: float = 0.002
    sigma_data: float = 0.5  # spread of what is diffused (images in [-1, 1]: 0.5; a residual: less)

    def __post_init__(self):
        if not isinstance(self.sampler_steps, int) or self.sampler_steps < 1:
            raise ValueError(f"sampler_steps must be an integer >= 1, got {self.sampler_steps!r}")
        if not (0 < self.sigma_min < self.sigma_max) or not self.sigma_data > 0:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max and sigma_data > 0, got sigma_min {self.sigma_min}, "
                f"sigma_max {self.sigma_max}, sigma_data {self.sigma_data}"
            )
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if self.head_dim % 4:
            raise ValueError(f"head dim {self.head_dim} must be a multiple of 4 for the 2-D rotary embedding")

    @classmethod
    def released(cls) -> "InfDiTConfig":
        return cls()

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def block_size(self) -> int:
        """Output pixels per block side (128 for patch 4)."""
        return BLOCK_TOKENS * self.patch_size

    @property
    def block_tokens(self) -> int:
        return BLOCK_TOKENS * BLOCK_TOKENS

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "InfDiTConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in json.loads(text).items() if k in fields}
        return cls(**data)
