"""Host work per block group: how many aten calls the host issues for one group of blocks, the thing that
makes a GPU wait when groups are small (eager PyTorch spends a few microseconds of host time per call).

Two counts, both at block batch 1 (the worst case) and the released depth (28 layers):
- CPU profile: `torch.profiler` of a real CPU run (the released depth and head count, hidden 64 so it
  runs in seconds: the call count does not depend on the width), top-level aten ops per group: the
  CPU's default attention ("lse_merge").
- fake CUDA: the calls the CUDA path issues (`benchmarks/fake_cuda.py`, the released config on fake
  tensors; attention "concat", CUDA's default), counted per group at the dispatcher (a composite op
  such as linear or layer_norm counts once, like a top-level op in a profile).
Both skip the first groups (until the frontier is full) and the evaluation's conditioning.

Run: python benchmarks/host_calls.py [--groups 6]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from infdit_core import BlockGroupDone, InfDiT, InfDiTConfig, sample  # noqa: E402

TARGET = 1500


def cpu_profile(groups: int, variant: str = "auto") -> float:
    """Top-level aten ops per block group in a CPU profile, block batch 1 (variant: the attention's): the
    difference between a 3 x 6 and a 3 x 3 block grid, per group, so what an evaluation does once
    (conditioning, noise, the final copy) drops out."""
    from torch.profiler import ProfilerActivity, profile

    from infdit_core.network.attention import attention_variant

    cfg = dataclasses.replace(InfDiTConfig.released(), hidden=64, heads=2, vector_dim=0)  # head dim 32
    torch.manual_seed(0)
    model = InfDiT(cfg).eval()

    def top_level_calls(width: int) -> tuple[int, int]:
        seen = []
        callback = lambda event: seen.append(1) if isinstance(event, BlockGroupDone) else None  # noqa: E731
        with profile(activities=[ProfilerActivity.CPU]) as prof, attention_variant(variant):
            sample(model, torch.rand(1, 3, 96, width) * 2 - 1, steps=1, block_batch=1, callback=callback)
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        return len(top), len(seen)

    (small, g_small), (large, g_large) = top_level_calls(96), top_level_calls(192)
    return (large - small) / (g_large - g_small)


def fake_cuda_calls(groups: int, variant: str = "concat") -> float:
    """aten calls per steady-state group on fake CUDA, the released config at block batch 1."""
    from fake_cuda import record_steady_groups

    kept = record_steady_groups(dataclasses.replace(InfDiTConfig.released(), vector_dim=0), 1, groups, variant)
    return sum(c.calls for _, c in kept) / len(kept)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=4, help="steady-state groups counted on fake CUDA")
    args = ap.parse_args(argv)
    cpu = cpu_profile(args.groups)
    cpu_concat = cpu_profile(args.groups, "concat")
    cuda = fake_cuda_calls(args.groups)
    cuda_lse = fake_cuda_calls(args.groups, "lse_merge")
    print("| block batch 1, 28 layers | aten calls per block group | target |")
    print("| --- | ---: | ---: |")
    print(f"| CPU profile, top-level ops (CPU default: lse_merge) | {cpu:.0f} | {TARGET} |")
    print(f"| CPU profile, top-level ops, CUDA's attention (concat) | {cpu_concat:.0f} | {TARGET} |")
    print(f"| fake CUDA, CUDA default (concat) | {cuda:.0f} | {TARGET} |")
    print(f"| fake CUDA, lse_merge | {cuda_lse:.0f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
