"""How close one network evaluation at the default settings comes to the machine: achieved FLOP/s
against the dense matmul peak of the same dtype, and the time against the kernel floor.

How the figures are obtained (all within one run, per dtype)
- Model: random weights, default 4 layers, hidden 512, 8 heads, no CLIP; input so that the output is
  512 x 512 (16 blocks). One evaluation = `infdit_core.sample(model, lr, steps=1)`, the public API at
  its default settings (block batch "auto", frontier on the device, no compile), which runs exactly
  one network evaluation (plus padding and the bicubic upsampling, which are included).
- FLOPs: `infdit_core.network.flops.evaluation_flops(config, rows, cols)`, counted from the config; checked
  in the same run against `torch.utils.flop_counter.FlopCounterMode` on that very call (printed).
- Achieved = FLOPs / the best of `--repeats` timed evaluations (after one warm-up).
- Peak: the best of 3 dense 4096 x 4096 x 4096 matmuls of that dtype (`--peak-size`).
- Kernel floor: every matmul, convolution and attention call of the evaluation is recorded (op,
  argument shapes, strides, dtype) by a dispatch mode during one untimed call; each distinct call is
  then replayed alone on random tensors of the same layout, timed (best of `--floor-repeats`) and
  multiplied by how often it occurred. The floor is what the evaluation would take if it did nothing
  but those kernels; "time / floor" is the overhead of everything else (norms, adds, copies, Python).
- The attention calls are also reported on their own: their FLOP/s caps what the whole can reach.

Run: python benchmarks/utilization.py [--dtypes float32,bfloat16] [--height 512 --width 512] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from infdit_core import BlockGroupDone, InfDiTConfig, sample  # noqa: E402
from infdit_core.network.flops import evaluation_flops, torch_counted_flops  # noqa: E402
from gpu import matmul_peak, random_model, sync  # noqa: E402
from memory import header  # noqa: E402

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.convolution.default}
ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
}


class _Layout:
    """A tensor argument by shape, strides and dtype (hashable)."""

    def __init__(self, t: torch.Tensor):
        self.key = (tuple(t.shape), tuple(t.stride()), t.dtype, t.device.type)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Layout) and self.key == other.key

    def make(self, device) -> torch.Tensor:
        shape, stride, dtype, _ = self.key
        extent = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
        return torch.randn(extent, dtype=dtype, device=device).as_strided(shape, stride)  # strides may be 0


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


class KernelRecorder(TorchDispatchMode):
    """Counts every matmul / convolution / attention call by (op, argument layouts)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMULS or func in ATTENTION:
            spec = tree_map(lambda a: _Layout(a) if isinstance(a, torch.Tensor) else a, (args, kwargs))
            self.calls[(func, _freeze(spec[0]), tuple(sorted((k, _freeze(v)) for k, v in spec[1].items())))] += 1
        else:  # composite ops (linear, the attention front end) reach us whole: see what they run
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


def replay(call, device, repeats: int) -> float:
    """Best time of one recorded call on fresh random tensors of the same layouts."""
    func, args, kwargs = call
    build = lambda v: v.make(device) if isinstance(v, _Layout) else v  # noqa: E731
    real_args = tree_map(build, args, is_leaf=lambda v: isinstance(v, _Layout))
    real_kwargs = {k: tree_map(build, v, is_leaf=lambda v: isinstance(v, _Layout)) for k, v in kwargs}
    func(*real_args, **real_kwargs)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        func(*real_args, **real_kwargs)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(dtype, args, device) -> dict:
    torch.manual_seed(0)
    config = InfDiTConfig(layers=args.layers, hidden=args.hidden, heads=args.heads, vector_dim=0)
    model = random_model(config, device, dtype)
    lr = torch.rand(1, 3, args.height // 4, args.width // 4, device=device) * 2 - 1
    bs = config.block_size
    rows, cols = -(-args.height // bs), -(-args.width // bs)
    used = []

    def evaluation():
        used.clear()
        return sample(model, lr, steps=1, compile=args.compile,
                      callback=lambda e: used.append(len(e.blocks)) if isinstance(e, BlockGroupDone) else None)

    peak = matmul_peak(device, dtype, args.peak_size, 3)
    with torch.inference_mode():
        evaluation()  # warm-up (and, with --compile, compiling)
        times = []
        for _ in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            evaluation()
            sync(device)
            times.append(time.perf_counter() - t0)
        counted = torch_counted_flops(evaluation)
        recorder = KernelRecorder()
        with recorder:
            evaluation()
        floor = {"matmul": 0.0, "attention": 0.0}
        attention_flops = 0
        for call, count in recorder.calls.items():
            kind = "attention" if call[0] in ATTENTION else "matmul"
            floor[kind] += count * replay(call, device, args.floor_repeats)
    flops = evaluation_flops(config, rows, cols)
    attention_flops = flops.attention
    best = min(times)
    return dict(
        dtype=str(dtype).removeprefix("torch."), block_batch=used[0] if used else None, groups=len(used),
        times=times, best=best, flops=flops.total, counted=counted, peak=peak, achieved=flops.total / best,
        floor_matmul=floor["matmul"], floor_attention=floor["attention"], floor=floor["matmul"] + floor["attention"],
        attention_rate=attention_flops / floor["attention"] if floor["attention"] else float("nan"),
        calls=sum(recorder.calls.values()), distinct_calls=len(recorder.calls),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--floor-repeats", type=int, default=3)
    ap.add_argument("--peak-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true", help="the same with compile=True (not the default setting)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(header())
    print(f"model: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, random weights; output "
          f"{args.height}x{args.width}; one evaluation = sample(model, lr, steps=1) at the default settings"
          f"{' but compile=True' if args.compile else ''}; "
          f"device {device.type}, {torch.get_num_threads()} threads")
    rows = []
    for name in args.dtypes.split(","):
        r = measure(getattr(torch, name), args, device)
        rows.append(r)
        print(f"  {r['dtype']}: evaluation times {' '.join(f'{t:.2f}' for t in r['times'])} s", file=sys.stderr, flush=True)
    print("\n| dtype | block batch (groups) | evaluation s | GFLOP (config / flop counter) | achieved GFLOP/s "
          "| matmul peak GFLOP/s | share of peak | kernel floor s (matmul + attention) | time / floor "
          "| attention alone GFLOP/s |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        same = "equal" if r["flops"] == r["counted"] else f"{r['counted'] / 1e9:.1f}"
        print(f"| {r['dtype']} | {r['block_batch']} ({r['groups']}) | {r['best']:.2f} | {r['flops'] / 1e9:.1f} / {same} "
              f"| {r['achieved'] / 1e9:.0f} | {r['peak'] / 1e9:.0f} | {r['achieved'] / r['peak'] * 100:.1f}% "
              f"| {r['floor']:.2f} ({r['floor_matmul']:.2f} + {r['floor_attention']:.2f}) | {r['best'] / r['floor']:.2f} "
              f"| {r['attention_rate'] / 1e9:.0f} |")
    calls = ", ".join(f"{r['dtype']} {r['calls']} ({r['distinct_calls']} distinct)" for r in rows)
    print(f"\nkernel calls per evaluation: {calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
