"""The released config (28 layers, hidden 1280, 16 heads, CLIP vector) at 1024..8192 px square, bf16.

What is printed
1. The estimator's figures (`infdit_core.planning.memory.estimate_peak_bytes`, sampling with the Heun
   sampler, CLIP tower included): for block_batch = 1 and for the block batch that
   `choose_block_batch` picks for a 24 GB GPU (budget 24e9 bytes minus the pipeline's 10% margin),
   with the frontier on the device and offloaded to CPU memory; and the whole-image forward
   (block_batch = all blocks, the reference's `full` mode) for comparison.
2. Optionally (`--measure 1024[,2048]`) a real peak of the released architecture (random weights,
   bf16, no CLIP tower: a random 768-d vector stands in for its output) for block_batch = 1,
   measured with benchmarks/memory.py's fresh-subprocess method (peak process memory above the
   baseline on CPU, CUDA peak on a GPU). A whole evaluation is far too slow on a CPU (about
   1.7 TFLOP per block), so the scan is stopped after the group at which the frontier first reaches
   its largest size (plus one more group): from then on every group holds the same full frontier
   plus one group's activations, so the peak of the whole evaluation is already reached. The
   figure compared with it is the estimator's frontier + activations + one float32 output image.

Run: python benchmarks/released_table.py [--measure 1024]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memory import estimate, header, run_point  # noqa: E402

from infdit_core.network.config import InfDiTConfig  # noqa: E402
from infdit_core.planning.memory import choose_block_batch, estimate_peak_bytes  # noqa: E402
from infdit_core.planning.options import BlockOptions  # noqa: E402
from infdit_core.planning.scheduler import plan_blocks  # noqa: E402

GiB = 1024**3
SIZES = (1024, 2048, 4096, 8192)
BUDGET = int(24e9 * 0.9)  # a 24 GB card minus the pipeline's default 10% margin


def groups_until_full_frontier(rows: int, cols: int, n: int) -> int:
    """Number of groups up to the first one whose stored keys/values bring the cache to its peak."""
    plan = plan_blocks(rows, cols, n)
    held, peak = 0, plan.peak_cached_blocks()
    for g, (group, release) in enumerate(zip(plan.groups, plan.release_after)):
        held += len(group)
        if held == peak:
            return g + 1
        held -= len(release)
    return len(plan.groups)


def fmt(est) -> str:
    return (f"{est.weights / GiB:6.2f} {est.frontier / GiB:8.2f} {est.activations / GiB:8.2f} "
            f"{est.images / GiB:6.2f} {est.total / GiB:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", default="", help="comma-separated square sizes to measure (n=1, early stop)")
    args = ap.parse_args()
    print(header())
    cfg = InfDiTConfig.released()
    bf16 = torch.bfloat16
    print("Estimator, released config, bf16, sampling (GiB): weights include the CLIP tower (0.57 GiB)")
    print(f"{'size':>5} {'mode':28} {'n':>5} {'weights':>6} {'frontier':>8} {'activ.':>8} {'images':>6} {'total':>7}")
    for s in SIZES:
        blocks = (s // cfg.block_size) ** 2
        for label, offload in (("frontier on device", False), ("frontier offloaded", True)):
            print(f"{s:5} {'n=1, ' + label:28} {1:5} {fmt(estimate_peak_bytes(cfg, s, s, 1, bf16, BlockOptions(offload_frontier=offload)))}")
            n = choose_block_batch(cfg, s, s, BUDGET, bf16, BlockOptions(offload_frontier=offload), device="cuda")
            est = estimate_peak_bytes(cfg, s, s, n, bf16, BlockOptions(offload_frontier=offload))
            note = "" if est.total <= BUDGET else "  (does not fit even at n=1)"
            print(f"{s:5} {'auto 24 GB, ' + label:28} {n:5} {fmt(est)}{note}")
        print(f"{s:5} {'whole image (one group)':28} {blocks:5} {fmt(estimate_peak_bytes(cfg, s, s, blocks, bf16))}")

    sizes = [int(v) for v in args.measure.split(",") if v]
    if sizes:
        print("\nMeasured, released architecture (random weights, bf16, no CLIP tower), n=1, one evaluation "
              "stopped once the frontier is full (MiB):")
        print(f"{'size':>5} {'groups run':>10} {'measured':>9} {'estimate':>9} {'est/meas':>8} {'weights':>8} {'time s':>7}")
    for s in sizes:
        rows = s // cfg.block_size
        stop = min(groups_until_full_frontier(rows, rows, 1) + 1, rows * rows)
        spec = dict(series="released", height=s, width=s, n=1, dtype="bfloat16", warmup=False, max_groups=stop,
                    config=dict(layers=cfg.layers, hidden=cfg.hidden, heads=cfg.heads, vector_dim=cfg.vector_dim))
        r = run_point(spec)
        if "error" in r:
            print(f"{s:5} error: {r['error']}")
            continue
        _, part = estimate(r)
        print(f"{s:5} {r['groups_run']:>4}/{rows * rows:<5} {r['measured'] / 2**20:9.1f} {part / 2**20:9.1f} "
              f"{part / r['measured']:8.2f} {r['weights'] / 2**20:8.1f} {r['seconds']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
