"""Images per second of a folder run: one process vs two torchrun ranks on this machine.

How the figures are obtained
- `--images` random RGB images of `--size` px (default 8 of 64 x 64 -> 256 x 256, 2 x 2 blocks each) are
  upscaled with the bundled demo model (or `--model`), each variant into its own empty output folder.
- Variant "1 process": `python -m infdit_core upscale IN -o OUT` with OMP_NUM_THREADS = all cores.
  Variant "2 ranks": `torchrun --standalone --nproc-per-node 2 -m infdit_core upscale IN -o OUT` with
  OMP_NUM_THREADS = cores / 2 per rank, so both variants use the same cores ("threads split between
  ranks"). A third variant, one process with one thread, tells the gain of a second core apart from the
  cost of two threads in one process. `--device cpu`; on a CUDA machine pass `--device cuda` to give
  each rank its own GPU instead.
- Two figures per variant: "end to end" = wall-clock of the whole command (interpreter and torch
  start-up, model load, gloo rendezvous included) and "upscaling" = images / the `seconds` of the run's
  `--report` (the slowest rank's model load + its share of images). Ratios are 2 ranks / 1 process.
- Variants alternate (1 process, 1 thread, 2 ranks, 1 process, ...) for `--repeats` rounds and the best
  of each is kept, so a slow spell of a shared machine hits both alike.

Run: python benchmarks/batch.py [--images 8] [--size 64] [--repeats 2] [--model M] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import header  # noqa: E402


def run_variant(cmd: list[str], threads: int, report: Path) -> tuple[float, float, int]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    summary = json.loads(report.read_text(encoding="utf-8"))
    return wall, summary["seconds"], summary["images"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="input side in px (output x4)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", help="default: the bundled demo model")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cores = os.cpu_count() or 2
    print(header())
    print(f"# {args.images} images {args.size}x{args.size} -> x4, device {args.device}, {cores} cores: "
          f"1 process x {cores} threads vs 2 ranks x {max(cores // 2, 1)} threads")
    model = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(args.images):
            (tmp / "in").mkdir(exist_ok=True)
            arr = rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp / "in" / f"{i:03d}.png")
        launchers = {
            "1 process": ([sys.executable, "-m", "infdit_core"], cores),
            "1 process, 1 thread": ([sys.executable, "-m", "infdit_core"], 1),
            "2 ranks": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "infdit_core"], max(cores // 2, 1)),
        }
        best = {name: (float("inf"), float("inf")) for name in launchers}
        for rep in range(args.repeats):
            for name, (launcher, threads) in launchers.items():
                tag = f"{rep}_{list(launchers).index(name)}"
                out, report = tmp / f"out_{tag}", tmp / f"report_{tag}.json"
                cmd = [*launcher, "upscale", str(tmp / "in"), "-o", str(out), "--device", args.device,
                       "--no-progress", "--report", str(report), *model]
                wall, seconds, images = run_variant(cmd, threads, report)
                assert images == args.images, (name, images)
                print(f"round {rep + 1} {name}: end to end {wall:.1f} s, upscaling {seconds:.1f} s", flush=True)
                best[name] = (min(best[name][0], wall), min(best[name][1], seconds))
    n = args.images
    print()
    print("| variant | end to end: images/s | upscaling: images/s |")
    print("| --- | ---: | ---: |")
    for name, (wall, seconds) in best.items():
        print(f"| {name} | {n / wall:.3f} | {n / seconds:.3f} |")
    (w1, s1), (w2, s2), (wt, st) = best["1 process"], best["2 ranks"], best["1 process, 1 thread"]
    print(f"| ratio 2 ranks / 1 process | {w1 / w2:.2f} | {s1 / s2:.2f} |")
    print(f"| ratio 2 ranks / 1 process, 1 thread | {wt / w2:.2f} | {st / s2:.2f} |")


if __name__ == "__main__":
    main()
