"""Time of one network evaluation: the default block batch ("auto") vs fixed block batches and the
whole-image forward, in float32 and bfloat16; and, with --memory, the peak memory of the default
against the whole-image forward.

How the figures are obtained
- One randomly initialised model (default 4 layers, hidden 512, 8 heads, no CLIP) per dtype and one
  input (x, u: 3 x H x W; lr: 3 x H/4 x W/4), under torch.inference_mode(), on CUDA if present.
- Each repetition times, in turn, the whole-image forward `model(x, sigma, u, lr)` and the scheduler
  `BlockwiseDenoiser(model, u, lr, None, plan_blocks(rows, cols, n))(x, sigma)` for every n; the
  order is the same each repetition, so a slow spell of a shared machine hits all variants alike.
  The figure per variant is its fastest repetition (the least disturbed one); ratios are taken
  within this run. One warm-up evaluation per dtype precedes the timing.
- "default" is what `sample(..., block_batch="auto")` would use here: `choose_block_batch` with the
  device's free memory as the budget (pipeline's rule). When it equals a timed n, that row is its
  time (the same computation); otherwise it is timed as its own variant.
- `--memory` measures, with benchmarks/memory.py's method (a fresh subprocess per point, CPU: peak
  resident set above the level before the call; CUDA: max_memory_allocated), one evaluation of the
  default block batch and of the whole-image forward at this size, per dtype.
- `--profile` adds a torch.profiler table of n=1 next to the whole forward.

Run: python benchmarks/speed.py [--height 512 --width 512] [--dtypes float32,bfloat16] [--repeats 2]
                                [--blocks 1,2,4,8,all] [--memory] [--profile]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from infdit_core.network.config import InfDiTConfig  # noqa: E402
from infdit_core.sampling.denoiser import BlockwiseDenoiser  # noqa: E402
from infdit_core.planning.memory import choose_block_batch  # noqa: E402
from infdit_core.planning.plan import model_budget  # noqa: E402
from infdit_core.network.model import InfDiT  # noqa: E402
from infdit_core.planning.scheduler import plan_blocks  # noqa: E402
from memory import header, run_point  # noqa: E402

MiB = 1024**2


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def default_block_batch(model, height, width) -> int:
    """What sample(block_batch="auto") picks for this model here (pipeline._resolve_block_batch)."""
    return choose_block_batch(model.config, height, width, model_budget(model), model.dtype, include_clip=False,
                              device=model.device)


def build(cfg, dtype, dev):
    torch.manual_seed(0)
    model = InfDiT(cfg)
    model.initialize_weights()
    for p in model.parameters():  # the init zeroes adaLN and the output layer: make D depend on the network
        if not p.any():
            torch.nn.init.normal_(p, std=0.02)
    return model.to(dev, dtype).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32, bfloat16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--blocks", default="1,2,4,8,all", help="block batches to time; 'all' = one group of all blocks")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-image forward")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--memory", action="store_true", help="also measure the peak memory of default vs whole image")
    ap.add_argument("--profile", action="store_true", help="operator profile of n=1 and the whole forward")
    args = ap.parse_args()
    print(header())
    if args.threads:
        torch.set_num_threads(args.threads)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = InfDiTConfig(layers=args.layers, hidden=args.hidden, heads=args.heads, vector_dim=0)
    bs = cfg.block_size
    rows, cols = args.height // bs, args.width // bs
    torch.manual_seed(1)
    x = torch.randn(1, 3, rows * bs, cols * bs, device=dev)
    u = torch.randn_like(x).clamp(-1, 1)
    lr = torch.randn(1, 3, rows * bs // 4, cols * bs // 4, device=dev).clamp(-1, 1)
    sigma = torch.tensor(1.0, device=dev)
    fixed = sorted({min(rows * cols if b == "all" else int(b), rows * cols) for b in args.blocks.split(",")})
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]

    models, defaults, variants = {}, {}, {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        model = models[name] = build(cfg, dtype, dev)
        defaults[name] = default_block_batch(model, rows * bs, cols * bs)
        if not args.no_whole:
            variants[name, "whole"] = lambda model=model: model(x, sigma, u, lr)
        for n in sorted(set(fixed) | {defaults[name]}):
            den = BlockwiseDenoiser(model, u, lr, None, plan_blocks(rows, cols, n))
            variants[name, f"n={n}"] = lambda den=den: den(x, sigma)

    times = {k: [] for k in variants}
    with torch.inference_mode():
        for name in models:  # warm-up, and a sanity check of the scheduler against the whole image
            first = variants[name, f"n={fixed[0]}"]()
            if not args.no_whole:
                diff = (first - variants[name, "whole"]()).abs().max().item()
                print(f"sanity {name}: max |n={fixed[0]} - whole| = {diff:.2e}")
        for rep in range(args.repeats):
            for key, fn in variants.items():
                sync(dev)
                t0 = time.perf_counter()
                fn()
                sync(dev)
                times[key].append(time.perf_counter() - t0)
                print(f"  repeat {rep + 1}: {key[0]:9} {key[1]:7} {times[key][-1]:7.2f} s", file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    print(f"\nconfig: {args.layers} layers, hidden {args.hidden}, heads {args.heads}, device {dev.type}, "
          f"{threads} threads; output {rows * bs}x{cols * bs} = {rows}x{cols} blocks ({rows * cols}); "
          f"best of {args.repeats}")
    print(f"{'dtype':9} {'variant':8} {'groups':>6} {'best s':>8} {'all runs s':>22} {'vs best fixed':>13}")
    for name in models:
        keys = [k for k in times if k[0] == name]
        best_fixed = min((k for k in keys if k[1] != "whole" and int(k[1][2:]) in fixed), key=lambda k: min(times[k]))
        best = min(times[best_fixed])
        for key in keys:
            groups = 1 if key[1] == "whole" else -(-rows * cols // int(key[1][2:]))
            runs = " ".join(f"{t:.2f}" for t in times[key])
            tag = " (default)" if key[1] == f"n={defaults[name]}" else ""
            print(f"{name:9} {key[1]:8} {groups:6d} {min(times[key]):8.2f} {runs:>22} {min(times[key]) / best:13.3f}{tag}")
    print()
    for name in models:
        keys = [k for k in times if k[0] == name]
        best_fixed = min((k for k in keys if k[1] != "whole" and int(k[1][2:]) in fixed), key=lambda k: min(times[k]))
        ratio = min(times[name, f"n={defaults[name]}"]) / min(times[best_fixed])
        line = (f"{name}: default block batch {defaults[name]}: {ratio:.3f} x the best fixed ({best_fixed[1]}): "
                f"{'within' if ratio <= 1.10 else 'NOT within'} 10%")
        if not args.no_whole:
            line += f"; whole image / default = {min(times[name, 'whole']) / min(times[name, f'n={defaults[name]}']):.2f}"
        print(line)

    if args.memory:
        print("\npeak memory of one evaluation above weights and inputs (fresh subprocess per point):")
        config = dict(layers=args.layers, hidden=args.hidden, heads=args.heads, vector_dim=0)
        for name in models:
            got = {}
            for mode in ("whole", defaults[name]):
                res = run_point(dict(series="speed", height=rows * bs, width=cols * bs, n=mode, dtype=name, config=config))
                got[mode] = res.get("measured")
                if got[mode] is None:
                    print(f"  {name} {mode}: failed: {res.get('error')}")
            if all(v is not None for v in got.values()):
                share = got[defaults[name]] / got["whole"]
                print(f"  {name}: whole image {got['whole'] / MiB:.0f} MiB, default (n={defaults[name]}) "
                      f"{got[defaults[name]] / MiB:.0f} MiB = {share:.3f} of it "
                      f"({'at most' if share <= 1 / 3 else 'MORE than'} a third)")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        for key in [k for k in variants if k[1] in ("whole", "n=1")]:
            with torch.inference_mode(), profile(activities=acts) as prof:
                variants[key]()
            print(f"\nprofile of {key[0]} {key[1]} (self time by operator, top 15):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
