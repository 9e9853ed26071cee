"""A model of GPU time, from the operations the code really issues: one network evaluation of the released
config at 1024 -> 4096 px (32 x 32 blocks of 128 px), recorded on fake CUDA (benchmarks/fake_cuda.py: no GPU
needed) for a few block groups once the frontier is full, and scaled to the whole evaluation.

Printed per block and per evaluation: FLOPs of matmuls (and convolutions) and of attention, kernel launches,
aten calls the host issues, element-wise bytes (read + written by every kernel that is not a matmul or an
attention call), host-to-device and device-to-host bytes, and syncs (value reads and blocking copies) per
group. From those, a roofline time per evaluation and for a whole run at the default settings (ipndm, 13
evaluations) and with the release's sampler (heun, 20 steps: 39 evaluations) on H100, H200, A100,
RTX 4090, RTX 3090 and T4, at auto settings and with the frontier offloaded: each class of kernels at its
own rate, added (kernels run one after another on one stream), with the PCIe time of an offloaded frontier
overlapped with compute (max of the two). Every assumption is printed with the figures. Nothing here was
measured on a GPU; benchmarks/gpu.py measures on one.

Run: python benchmarks/gpu_model.py [--groups 4] [--block-batch auto] [--variant auto|lse_merge|concat]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_cuda import Counts, record_steady_groups  # noqa: E402

from infdit_core import InfDiTConfig  # noqa: E402
from infdit_core.sampling import solvers  # noqa: E402


def run_evaluations(solver: str) -> tuple[int, int]:
    """(steps, network evaluations) of a run of the released model that sets only `solver` (steps: the model's own)."""
    steps = solvers.own_steps(solver, InfDiTConfig.released().sampler_steps)
    return steps, solvers.evaluations_for(solver, steps)


RUNS = {"default": (solvers.DEFAULT_SOLVER, *run_evaluations(solvers.DEFAULT_SOLVER)),
        "release": (solvers.RELEASE_SOLVER, *run_evaluations(solvers.RELEASE_SOLVER))}

# name: (dense bf16/fp16 tensor TFLOP/s with fp32 accumulation, HBM TB/s, host link GB/s, architecture)
GPUS = {
    "H100 SXM": (989, 3.35, 55, "hopper"),
    "H200": (989, 4.8, 55, "hopper"),
    "A100 80GB": (312, 2.04, 25, "ampere"),
    "RTX 4090": (165, 1.01, 25, "ada"),
    "RTX 3090": (71, 0.936, 25, "ampere"),
    "T4": (65, 0.32, 12, "turing"),
}
MATMUL_FRACTION = {"hopper": 0.70, "ampere": 0.70, "ada": 0.85, "turing": 0.60}
MEMORY_FRACTION = 0.88
# Useful attention FLOP/s as a fraction of the dense peak, head dim 80 (FA2 runs its 96-wide kernel: 83% useful):
# one call over 4,096 keys ("concat") and four calls over 1,024 keys each, merged ("lse_merge"). FA2 reaches
# ~35% of an H100's peak at long sequences (no Hopper-specific instructions), ~60-70% of Ampere/Ada's; short
# key runs lose about a sixth more (each call re-reads Q and writes O and the log-sum-exp). Turing has no
# flash kernel: the memory-efficient one, in fp16. Hopper's one call runs cuDNN's kernel (attention.py: head
# dim 80 unpadded; torch 2.5's release measured it up to 75% faster than FA2 on H100): 0.45 = 1.5 x FA2's 0.30.
ATTENTION_FRACTION = {
    "hopper": {"concat": 0.45, "lse_merge": 0.25},
    "ampere": {"concat": 0.50, "lse_merge": 0.42},
    "ada": {"concat": 0.50, "lse_merge": 0.42},
    "turing": {"concat": 0.30, "lse_merge": 0.25},
}
LAUNCH_US = 5.0  # host time per aten call in eager PyTorch; hidden while the GPU has work queued


def record(block_batch, offload: bool, groups: int, variant: str, layers: int = 28):
    """(summed Counts, blocks, groups, block batch) of `groups` steady-state block groups."""
    cfg = dataclasses.replace(InfDiTConfig.released(), vector_dim=0, layers=layers)
    kept = record_steady_groups(cfg, block_batch, groups, variant, offload)
    total = Counts()
    for _, c in kept:
        total.add(c)
    return total, sum(n for n, _ in kept), len(kept), kept[0][0]


def per_evaluation(total: Counts, blocks: int, layers_scale: float = 1.0) -> dict:
    scale = 1024 / blocks
    return dict(
        matmul_flops=total.matmul_flops * scale, attention_flops=total.attention_flops * scale,
        kernels=total.kernels * scale, calls=total.calls * scale, elementwise_bytes=total.elementwise_bytes * scale,
        h2d_bytes=total.h2d_bytes * scale, d2h_bytes=total.d2h_bytes * scale,
        syncs=(total.value_reads + total.blocking_copies) * scale, attention_calls=total.attention_calls * scale,
    )


def roofline(ev: dict, gpu: str, variant: str, offload: bool) -> tuple[float, dict]:
    peak, hbm, link, arch = GPUS[gpu]
    matmul = ev["matmul_flops"] / (peak * 1e12 * MATMUL_FRACTION[arch])
    attention = ev["attention_flops"] / (peak * 1e12 * ATTENTION_FRACTION[arch][variant])
    elementwise = ev["elementwise_bytes"] / (hbm * 1e12 * MEMORY_FRACTION)
    compute = matmul + attention + elementwise
    pcie = (ev["h2d_bytes"] + ev["d2h_bytes"]) / (link * 1e9) if offload else 0.0
    host = ev["calls"] * LAUNCH_US * 1e-6
    total = max(compute, pcie, host)
    return total, dict(matmul=matmul, attention=attention, elementwise=elementwise, pcie=pcie, host=host)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=3, help="steady-state block groups recorded per setting")
    ap.add_argument("--block-batch", default="auto")
    ap.add_argument("--variant", default="auto", choices=("auto", "lse_merge", "concat"))
    args = ap.parse_args(argv)
    variant = "concat" if args.variant == "auto" else args.variant  # CUDA's default (attention.default_variant)
    n = "auto" if args.block_batch == "auto" else int(args.block_batch)
    t0 = time.perf_counter()
    print("# GPU time model: released config (28 layers, hidden 1280, 16 heads of 80), bf16, 1024 -> 4096 px, "
          f"attention variant {variant}")
    print("Assumptions: dense bf16 peak, HBM and host link per GPU as listed; matmuls at "
          + ", ".join(f"{k} {v:.0%}" for k, v in MATMUL_FRACTION.items()) + " of peak; memory at "
          f"{MEMORY_FRACTION:.0%} of nominal; attention (head dim 80) useful FLOP/s as a share of peak: "
          + "; ".join(f"{a} {d['concat']:.0%} one 4096-key call, {d['lse_merge']:.0%} four 1024-key calls"
                      for a, d in ATTENTION_FRACTION.items())
          + f"; {LAUNCH_US:g} us of host time per aten call (bound only if it exceeds the GPU's time); "
          "offloaded frontier copies overlap compute. Figures are scaled from recorded steady-state groups.\n")
    rows = []
    for offload in (False, True):
        total, blocks, groups, block_batch = record(n, offload, args.groups, variant)
        ev = per_evaluation(total, blocks)
        label = f"block batch {block_batch}" + (", frontier offloaded" if offload else "")
        print(f"## {label} ({groups} groups, {blocks} blocks recorded)")
        print("| per | matmul TFLOP | attention TFLOP | kernels | aten calls | element-wise GB | H2D MB | D2H MB | syncs |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, f in (("block", 1 / 1024), ("group", block_batch / 1024), ("evaluation", 1)):
            print(f"| {name} | {ev['matmul_flops'] * f / 1e12:.4g} | {ev['attention_flops'] * f / 1e12:.4g} | "
                  f"{ev['kernels'] * f:.0f} | {ev['calls'] * f:.0f} | {ev['elementwise_bytes'] * f / 1e9:.4g} | "
                  f"{ev['h2d_bytes'] * f / 1e6:.4g} | {ev['d2h_bytes'] * f / 1e6:.4g} | {ev['syncs'] * f:.3g} |")
        print()
        runs = " | ".join(f"{kind}: {name} {steps} steps, {n} evaluations s" for kind, (name, steps, n) in RUNS.items())
        print(f"| GPU | matmul s | attention s | element-wise s | PCIe s | host s | per evaluation s | {runs} |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for gpu in GPUS:
            t, parts = roofline(ev, gpu, variant, offload)
            whole = " | ".join(f"{n * t:.0f}" for _, _, n in RUNS.values())
            print(f"| {gpu} | {parts['matmul']:.2f} | {parts['attention']:.2f} | {parts['elementwise']:.2f} | "
                  f"{parts['pcie']:.2f} | {parts['host']:.2f} | {t:.2f} | {whole} |")
            rows.append((label, gpu, t))
        print()
    first = rows[0][0]  # auto block batch, frontier on the device: what a run with nothing set gets
    (name, steps, n), (rname, rsteps, rn) = RUNS["default"], RUNS["release"]
    print(f"## 1024 -> 4096 px with nothing set ({first}): the model's estimate, not a measurement")
    print(f"| GPU | default ({name}, {n} evaluations) | release ({rname} {rsteps} steps, {rn} evaluations) |")
    print("| --- | ---: | ---: |")
    for label, gpu, t in rows:
        if label == first:
            print(f"| {gpu} | {n * t / 60:.1f} min | {rn * t / 60:.1f} min |")
    print()
    print(f"(recorded in {time.perf_counter() - t0:.0f} s on fake CUDA)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
