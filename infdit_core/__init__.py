"""Inf-DiT (arXiv 2405.04312) in plain PyTorch: the released model, its sampler, checkpoints and a
block scheduler whose memory grows with the shorter image side. Never imports ComfyUI."""
from .sampling import solvers
from .checkpoints.checkpoint import CheckpointError, convert
from .sampling.color import COLOR_FIXES
from .network.config import InfDiTConfig
from .checkpoints.loader import DEMO_MODEL_PATH, inspect_checkpoint, load_inf_dit
from .planning.memory import MemoryEstimate, choose_block_batch, estimate_peak_bytes
from .network.model import InfDiT
from .sampling.pipeline import block_grid, sample, upscale_image
from .sampling.sampler import BlockGroupDone, EvaluationDone, SamplingCancelled, evaluations_for, get_sigmas_karras
from .sampling.solvers import SOLVERS

__all__ = [
    "DEMO_MODEL_PATH",
    "BlockGroupDone",
    "COLOR_FIXES",
    "CheckpointError",
    "EvaluationDone",
    "InfDiT",
    "InfDiTConfig",
    "MemoryEstimate",
    "SOLVERS",
    "SamplingCancelled",
    "block_grid",
    "choose_block_batch",
    "convert",
    "estimate_peak_bytes",
    "evaluations_for",
    "get_sigmas_karras",
    "inspect_checkpoint",
    "load_inf_dit",
    "sample",
    "solvers",
    "upscale_image",
]
