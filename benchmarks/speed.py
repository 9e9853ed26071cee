"""Time of one network evaluation: block scheduler at several block batches vs the whole-image forward.

How the figures are obtained
- One randomly initialised model (default 4 layers, hidden 512, 8 heads, no CLIP, float32) and one
  input (x, u: 3 x H x W; lr: 3 x H/4 x W/4), under torch.inference_mode(), on CUDA if present.
- Each repetition times, in turn, the whole-image forward `model(x, sigma, u, lr)` and the scheduler
  `BlockwiseDenoiser(model, u, lr, None, plan_blocks(rows, cols, n))(x, sigma)` for every n; the
  order is the same each repetition, so a slow spell of a shared machine hits all variants alike.
  The figure per variant is its fastest repetition (the least disturbed one); ratios are
  scheduler time / whole-image time within this run. One warm-up evaluation precedes the timing.
- `--profile` adds a torch.profiler table of the slowest scheduler variant (n=1) next to the whole
  forward: where the time goes by operator (matmuls, attention, the gather/concat of cached
  keys/values, the per-block LR-window convolution, copies).

Run: python benchmarks/speed.py [--height 512 --width 512] [--repeats 2] [--blocks 1,2,4,8,all] [--profile]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from infdit_core.config import InfDiTConfig  # noqa: E402
from infdit_core.denoiser import BlockwiseDenoiser  # noqa: E402
from infdit_core.model import InfDiT  # noqa: E402
from infdit_core.scheduler import plan_blocks  # noqa: E402
from memory import header  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--blocks", default="1,2,4,8,all", help="block batches to time; 'all' = one group of all blocks")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="operator profile of n=1 and the whole forward")
    args = ap.parse_args()
    print(header())
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared CPU, fewer threads than cores avoids stalls at OpenMP barriers

    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = InfDiTConfig(layers=args.layers, hidden=args.hidden, heads=args.heads, vector_dim=0)
    model = InfDiT(cfg)
    model.initialize_weights()
    for p in model.parameters():  # the init zeroes adaLN and the output layer: make D depend on the network
        if not p.any():
            torch.nn.init.normal_(p, std=0.02)
    model.to(dev, getattr(torch, args.dtype)).eval()
    bs = cfg.block_size
    rows, cols = args.height // bs, args.width // bs
    x = torch.randn(1, 3, rows * bs, cols * bs, device=dev)
    u = torch.randn_like(x).clamp(-1, 1)
    lr = torch.randn(1, 3, rows * bs // 4, cols * bs // 4, device=dev).clamp(-1, 1)
    sigma = torch.tensor(1.0, device=dev)
    ns = [rows * cols if b == "all" else int(b) for b in args.blocks.split(",")]
    ns = sorted({min(n, rows * cols) for n in ns})

    variants = {"whole": lambda: model(x, sigma, u, lr)}
    for n in ns:
        den = BlockwiseDenoiser(model, u, lr, None, plan_blocks(rows, cols, n))
        variants[f"n={n}"] = lambda den=den: den(x, sigma)

    times = {k: [] for k in variants}
    with torch.inference_mode():
        ref = variants["whole"]()  # warm-up, and the reference for a sanity check
        first = f"n={ns[0]}"
        print(f"sanity: max |{first} - whole| = {(variants[first]() - ref).abs().max().item():.2e}")
        for rep in range(args.repeats):
            for name, fn in variants.items():
                sync(dev)
                t0 = time.perf_counter()
                fn()
                sync(dev)
                times[name].append(time.perf_counter() - t0)
                print(f"  repeat {rep + 1}: {name:7} {times[name][-1]:7.2f} s", file=sys.stderr, flush=True)

    print(f"\nconfig: {args.layers} layers, hidden {args.hidden}, heads {args.heads}, {args.dtype}, device {dev.type}; "
          f"output {rows * bs}x{cols * bs} = {rows}x{cols} blocks ({rows * cols}); best of {args.repeats}")
    whole = min(times["whole"])
    print(f"{'variant':8} {'groups':>6} {'best s':>8} {'all runs s':>22} {'sched/whole':>11}")
    for name, ts in times.items():
        groups = 1 if name == "whole" else -(-rows * cols // int(name[2:]))
        runs = " ".join(f"{t:.2f}" for t in ts)
        print(f"{name:8} {groups:6d} {min(ts):8.2f} {runs:>22} {min(ts) / whole:11.3f}")
    # n = all blocks is one group (no frontier): the scheduler's own cost shows at the best n with >1 group
    multi = [k for k in times if k != "whole" and int(k[2:]) < rows * cols]
    for label, keys in (("best n", [k for k in times if k != "whole"]), ("best n with > 1 group", multi)):
        if keys:
            best = min(keys, key=lambda k: min(times[k]))
            ratio = min(times[best]) / whole
            print(f"{label}: {best}, scheduler/whole = {ratio:.3f} ({'within' if ratio <= 1.15 else 'NOT within'} "
                  f"the 15% target)")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        for name in ("whole", f"n={ns[0]}"):
            with torch.inference_mode(), profile(activities=acts) as prof:
                variants[name]()
            print(f"\nprofile of {name} (self time by operator, top 15):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
