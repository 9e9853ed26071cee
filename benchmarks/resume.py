"""What resuming costs: the state a run writes after every network evaluation (its size, the time to write it and
the memory writing takes), against the time of one network evaluation, at 1024 -> 4096 px and at 16384 px.

Measured here, in one run:
- the largest state of the default solver (ipndm: x and 3 past derivatives, float32) and of the release's
  Heun (x and d, mid-step) for a 4096 x 4096 output, written to a temporary folder with `resume.write_state`
  (atomic, checksummed, streamed a slice at a time) and read back; the best of `--repeats`;
- the process's peak memory while writing, above the state's own tensors (`ru_maxrss`);
- one block of the released model (28 layers, hidden 1280, random weights, the CPU's auto dtype, block batch 1,
  the steady state: a block with its left, top and top-left neighbours cached) and from it one evaluation:
  a 4096 x 4096 output is 32 x 32 = 1024 blocks.
At 16384 px the state's size is exact (16x the 4096 one) and its write time assumes the throughput measured
here; one evaluation is 16384 blocks, so the ratio is the 4096 one.

Run: python benchmarks/resume.py [--repeats 3] [--skip-model]
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from infdit_core.sampling import resume  # noqa: E402

GIB = 1024**3
SIDE = 4096
STATES = {"ipndm (default)": 4, "heun (release)": 2}  # full-size float32 images a state holds at most


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure_state(images: int, repeats: int, folder: Path) -> dict:
    tensors = {f"t{i}": torch.randn(1, 3, SIDE, SIDE) for i in range(images)}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    before = peak_rss_bytes()
    writes, reads = [], []
    path = folder / "pass0.state"
    for _ in range(repeats):
        t0 = time.perf_counter()
        resume.write_state(path, {"identity": "benchmark", "step": 1, "phase": 0}, tensors)
        writes.append(time.perf_counter() - t0)
    extra = peak_rss_bytes() - before
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, back = resume.read_state(path)
        reads.append(time.perf_counter() - t0)
        del back
    written = path.stat().st_size
    path.unlink()
    return {"bytes": written, "tensor_bytes": size, "write_s": min(writes), "read_s": min(reads), "extra_rss": extra}


def measure_block_seconds() -> tuple[float, str]:
    """Seconds of one steady-state block of the released model on this CPU, and its dtype."""
    from infdit_core import BlockGroupDone, InfDiT, InfDiTConfig, sample
    from infdit_core.hardware.precision import auto_dtype

    torch.manual_seed(0)
    dtype = auto_dtype(torch.device("cpu"))
    model = InfDiT(InfDiTConfig(vector_dim=0)).to(dtype).eval()  # no CLIP: the block's cost is the transformer
    times = []
    lr = torch.rand(1, 3, 64, 64) * 2 - 1  # -> 256 x 256: 2 x 2 blocks

    def on_group(event):
        if isinstance(event, BlockGroupDone):
            times.append(time.perf_counter())

    start = time.perf_counter()
    sample(model, lr, steps=1, sampler="euler", block_batch=1, scan="rows", callback=on_group)
    # the last block (1, 1) has left, top and top-left neighbours: the steady state of a big image
    return times[-1] - times[-2], str(dtype).removeprefix("torch."), times[0] - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-model", action="store_true", help="only the state (no released-model timing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    print(f"# resume cost; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"state slices of {resume.SLICE_BYTES >> 20} MiB; best of {args.repeats}")
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        states = {name: measure_state(n, args.repeats, Path(tmp)) for name, n in STATES.items()}
    states["heun (release)"]["extra_rss"] = None  # ru_maxrss only rises: the larger state's peak came first
    block_s = dtype = None
    if not args.skip_model:
        block_s, dtype, first_s = measure_block_seconds()
        print(f"released model ({dtype}): one steady-state block {block_s:.2f} s (the first, without neighbours: "
              f"{first_s:.2f} s); one evaluation at 4096 px = 1024 blocks = {1024 * block_s / 60:.1f} min\n")
    print("| solver | output | state GB | write s | read s | extra memory writing MB | write / evaluation |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, m in states.items():
        rate = m["bytes"] / m["write_s"]
        for side, factor in ((4096, 1), (16384, 16)):
            size, write_s = m["bytes"] * factor, m["bytes"] * factor / rate
            evaluation_s = block_s * (side // 128) ** 2 if block_s else None
            share = f"{write_s / evaluation_s:.2%}" if evaluation_s else "n/a"
            measured = "" if factor == 1 else " (at the 4096 px rate)"
            read = f"{m['read_s']:.2f}" if factor == 1 else "-"
            extra = f"{m['extra_rss'] / 2**20:.0f}" if factor == 1 and m["extra_rss"] is not None else "-"
            print(f"| {name} | {side} x {side} | {size / 1e9:.2f} | {write_s:.2f}{measured} | {read} | {extra} | {share} |")
    print(f"\nwrite throughput {states['ipndm (default)']['bytes'] / states['ipndm (default)']['write_s'] / 1e9:.2f} GB/s "
          f"to {ROOT}'s disk (fsync'd); the state is written once per network evaluation.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
