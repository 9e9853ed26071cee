"""Peak memory of ONE network evaluation vs output size: whole-image forward vs the block scheduler.

How the figures are obtained
- Every point runs in a fresh Python subprocess (nothing left over from earlier points): it builds a
  randomly initialised model (default 4 layers, hidden 512, 8 heads, no CLIP), the inputs x, u
  (3 x H x W, float32) and lr (3 x H/4 x W/4), runs a one-block warm-up evaluation (lazy library
  initialisation is not what we measure), then measures one evaluation D(x; sigma) under
  torch.inference_mode():
    whole: `model(x, sigma, u, lr)` - all blocks in one pass (the reference's `full` mode);
    n=k:   `BlockwiseDenoiser(..., plan_blocks(rows, cols, k))(x, sigma)` - the scheduler.
- CUDA (if present): torch.cuda.max_memory_allocated() minus memory_allocated() just before the call.
  CPU: the process's peak resident set (VmHWM, reset just before the call by writing 5 to
  /proc/self/clear_refs) minus its resident set (VmRSS) just before the call. The child runs with
  MALLOC_MMAP_THRESHOLD_=65536 so glibc gives every tensor buffer its own mapping and returns it
  to the OS when freed: RSS then follows the live tensors instead of the allocator's high-water heap.
- "measured" is therefore what the evaluation itself adds on top of weights and inputs: the
  activations of one group, the frontier of cached keys/values, and the output image D.
  "estimate" is the same part of `infdit_core.planning.memory.estimate_peak_bytes(...)`: frontier +
  activations + one float32 output image (the estimator's `images` term counts the 8 image buffers
  of a whole Heun sampler; one evaluation allocates just its output). The weights are reported apart
  (they are exact: parameter count x element size) and the estimator's `total` is printed too.
- The whole-image path is the single-group case of the estimator: block_batch = all blocks.
- Growth exponents are least-squares slopes of log(measured) against log(pixels), log(long side)
  or log(short side) within one series.

Run: python benchmarks/memory.py [--quick] [--dtype bfloat16] [--out raw.jsonl]
     python benchmarks/memory.py --report raw.jsonl   (re-print a saved run with the current estimator)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = dict(layers=4, hidden=512, heads=8, vector_dim=0)
SKIP_ABOVE = 12 * 1024**3  # whole-image points whose estimate exceeds this are not run
MiB = 1024**2


def header() -> str:
    """Date, machine and library versions, printed at the top of every benchmark output."""
    import datetime
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"# {date}; CPU: {cpu} ({os.cpu_count()} logical cores); GPU: {gpu}; "
            f"torch {torch.__version__}; python {platform.python_version()}")


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


class _Stop(Exception):
    pass


def child(spec: dict) -> dict:
    """Run in the fresh subprocess: one evaluation, return its peak above the baseline."""
    import gc

    import torch

    from infdit_core.network.config import InfDiTConfig
    from infdit_core.sampling.denoiser import BlockwiseDenoiser
    from infdit_core.network.model import InfDiT
    from infdit_core.planning.scheduler import plan_blocks

    torch.manual_seed(0)
    cfg = InfDiTConfig(**spec["config"])
    dtype = getattr(torch, spec["dtype"])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = InfDiT(cfg)
    model.initialize_weights()
    model.to(dev, dtype).eval()
    h, w = spec["height"], spec["width"]
    bs = cfg.block_size
    rows, cols = h // bs, w // bs

    def inputs(hh, ww):
        return (torch.randn(1, 3, hh, ww, device=dev), torch.randn(1, 3, hh, ww, device=dev).clamp(-1, 1),
                torch.randn(1, 3, hh // 4, ww // 4, device=dev).clamp(-1, 1))

    sigma = torch.tensor(1.0, device=dev)
    vector = torch.randn(1, cfg.vector_dim, device=dev) if cfg.vector_dim else None  # stands in for CLIP
    with torch.inference_mode():
        if spec.get("warmup", True):
            wx, wu, wl = inputs(bs, bs)
            model(wx, sigma, wu, wl, vector)  # warm-up: one block
            del wx, wu, wl
        x, u, lr = inputs(h, w)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            base = _status("VmRSS")
            with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
                f.write("5")  # resets VmHWM to the current RSS
        t0 = time.perf_counter()
        groups_run = None
        if spec["n"] == "whole":
            out = model(x, sigma, u, lr, vector)
        else:
            plan = plan_blocks(rows, cols, spec["n"], "auto")
            limit = spec.get("max_groups")

            def stop(event):  # early stop for very slow configs: the peak is reached once the frontier is full
                if limit and getattr(event, "group", -1) + 1 >= limit:
                    raise _Stop

            den = BlockwiseDenoiser(model, u, lr, vector, plan, spec.get("offload", False), stop if limit else None)
            try:
                out = den(x, sigma)
                groups_run = len(plan.groups)
            except _Stop:
                groups_run = limit
        seconds = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = _status("VmHWM") - base
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(spec, measured=peak, weights=weights, seconds=seconds, device=dev.type, groups_run=groups_run)


def run_point(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                         capture_output=True, text=True)
    if res.returncode:
        return dict(spec, error=res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def estimate(spec: dict):
    import torch

    from infdit_core.network.config import InfDiTConfig
    from infdit_core.planning.memory import estimate_peak_bytes
    from infdit_core.planning.options import BlockOptions

    cfg = InfDiTConfig(**spec["config"])
    h, w = spec["height"], spec["width"]
    n = (h // cfg.block_size) * (w // cfg.block_size) if spec["n"] == "whole" else spec["n"]
    est = estimate_peak_bytes(cfg, h, w, n, getattr(torch, spec["dtype"]),
                              BlockOptions(offload_frontier=spec.get("offload", False)), include_clip=False)  # the benchmark model has no CLIP tower
    one_image = 3 * h * w * 4  # the evaluation's float32 output D
    return est, est.frontier + est.activations + one_image


def points(quick: bool, dtype: str, series: str = "width,square", chosen_modes: str = "") -> list[dict]:
    if quick:
        sizes = [("width", 256, w) for w in (256, 512, 1024)] + [("square", s, s) for s in (256, 512)]
        modes = ["whole", 1]
    else:
        sizes = [("width", 256, w) for w in (256, 512, 1024, 2048, 4096)]
        sizes += [("square", s, s) for s in (256, 512, 1024)]
        modes = ["whole", 1, 4]
    if chosen_modes:
        modes = [m if m == "whole" else int(m) for m in chosen_modes.split(",")]
    return [dict(series=s, height=h, width=w, n=m, dtype=dtype, config=CONFIG)
            for s, h, w in sizes if s in series.split(",") for m in modes]


def slope(xs, ys) -> float:
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")


def _linear_slope(xs, ys) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def report(rows: list[dict]) -> None:
    print(f"{'series':7} {'H x W':>11} {'mode':>6} {'measured':>9} {'estimate':>9} {'est/meas':>8} "
          f"{'est.total':>9} {'weights':>8} {'time s':>7}   (MiB)")
    for r in rows:
        mode = r["n"] if r["n"] == "whole" else f"n={r['n']}"
        if "error" in r or "skipped" in r:
            print(f"{r['series']:7} {r['height']:>5}x{r['width']:<5} {mode:>6}  {r.get('error') or r['skipped']}")
            continue
        est, part = estimate(r)
        print(f"{r['series']:7} {r['height']:>5}x{r['width']:<5} {mode:>6} {r['measured'] / MiB:9.1f} {part / MiB:9.1f} "
              f"{part / r['measured']:8.2f} {est.total / MiB:9.1f} {r['weights'] / MiB:8.1f} {r['seconds']:7.1f}")
    print("\nGrowth exponents (log-log slope of measured peak):")
    ok = [r for r in rows if "measured" in r]
    for series, against in (("width", "long side (= pixels, height fixed)"), ("square", "side")):
        for mode in sorted({str(r["n"]) for r in ok if r["series"] == series}):
            pts = [r for r in ok if r["series"] == series and str(r["n"]) == mode]
            if len(pts) < 2:
                continue
            xs = [r["width"] if series == "width" else r["height"] for r in pts]
            s = slope(xs, [r["measured"] for r in pts])
            extra = f", vs pixels {s / 2:.2f}" if series == "square" else ""
            label = mode if mode == "whole" else f"n={mode}"
            # a fixed part (one group's activations) hides linear growth in the exponent: also the slope
            lin = _linear_slope(xs, [r["measured"] for r in pts]) * 128 / MiB
            print(f"  {series:6} {label:6} vs {against}: {s:.2f}{extra};  linear fit: {lin:+.2f} MiB per 128 px")
    errs = [abs(estimate(r)[1] / r["measured"] - 1) for r in ok]
    sched = [abs(estimate(r)[1] / r["measured"] - 1) for r in ok if r["n"] != "whole"]
    if errs:
        print(f"\nEstimator error |est/meas - 1|: scheduler max {max(sched, default=0):.1%}, all points max {max(errs):.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="a small subset of sizes")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--series", default="width,square", help="which size series to run")
    ap.add_argument("--modes", default="", help="e.g. whole,1,4 (default: whole,1,4; --quick: whole,1)")
    ap.add_argument("--out", help="append raw results (JSON lines) to this file")
    ap.add_argument("--report", help="re-print a saved JSON-lines run with the current estimator")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(header())
    if args.report:
        report([json.loads(line) for line in open(args.report, encoding="utf-8") if line.strip()])
        return
    rows = []
    for spec in points(args.quick, args.dtype, args.series, args.modes):
        est, _ = estimate(spec)
        if spec["n"] == "whole" and est.total > SKIP_ABOVE:
            r = dict(spec, skipped=f"skipped: estimate {est.total / 1024**3:.1f} GiB")
        else:
            r = run_point(spec)
        print(json.dumps(r), file=sys.stderr, flush=True)  # progress
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(r) + "\n")
        rows.append(r)
    report(rows)


if __name__ == "__main__":
    main()
