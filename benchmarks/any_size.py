"""Huge outputs: device vs host memory, measured and estimated.

What is printed
1. Measured (`--measure 512,1024,2048,4096`): a whole upscale (x4, 2 Heun steps = 3 network
   evaluations, block batch 16 by default) of a small random Inf-DiT (config below, float32) with the sampler's
   full-size images on the host. Every tensor the run creates is tracked (a TorchDispatchMode that
   counts each new storage until it is freed) and tagged "device" when it is created inside the
   network's forward of a group (the group's blocks, activations, the frontier) and "host" otherwise
   (the full-size images of the sampler). On CUDA the device figure is also
   torch.cuda.max_memory_allocated; on a CPU-only machine the tags say what would be device-resident.
   The same figures from `estimate_peak_bytes(..., images_on_host=True)` for that model are printed
   next to them (device: frontier + activations + group images, without weights; host: images).
2. The estimator's table for the released config (28 layers, hidden 1280, CLIP), bf16, at 4096,
   8192, 16384 px square and 16384 x 4096: block batch 1 and auto (device budget 12 GiB), with the
   frontier on the device, offloaded to the host, and (when the estimator knows it) float8; the
   full-size images on the host where they would not fit the budget (as a run places them).

Run: python benchmarks/any_size.py [--measure 512,1024,2048,4096] [--budget-gib 12]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infdit_core.planning.options import BlockOptions  # noqa: E402
from infdit_core import InfDiT, InfDiTConfig  # noqa: E402
from infdit_core.planning.memory import estimate_peak_bytes  # noqa: E402
from infdit_core.sampling.pipeline import sample  # noqa: E402

GiB, MiB = 1024**3, 1024**2
SMALL = InfDiTConfig(layers=1, hidden=64, heads=2, vector_dim=0)


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages by place ("device" inside a group's forward, else "host"), and peaks."""

    def __init__(self):
        super().__init__()
        self.place = "host"
        self.live = {"device": 0, "host": 0}
        self.peak = {"device": 0, "host": 0}
        self.seen = set()

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.seen or storage.nbytes() == 0:
            return
        place, size = self.place, storage.nbytes()
        self.seen.add(key)
        self.live[place] += size
        self.peak[place] = max(self.peak[place], self.live[place])

        def freed(place=place, size=size, key=key):
            self.live[place] -= size
            self.seen.discard(key)

        weakref.finalize(storage, freed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.track(t)
        return out


def random_model(cfg: InfDiTConfig, device) -> InfDiT:
    torch.manual_seed(0)
    model = InfDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 / max(p.shape[-1], 1) ** 0.5))
    return model.eval().to(device)


def measure(side: int, device, block_batch: int) -> dict:
    model = random_model(SMALL, device)
    mode = LiveBytes()
    real = type(model).forward_blocks

    def forward_on_device(self, *args, **kwargs):
        mode.place = "device"
        try:
            return real(self, *args, **kwargs)
        finally:
            mode.place = "host"

    type(model).forward_blocks = forward_on_device
    lr = torch.rand(1, 3, side // 4, side // 4) * 2 - 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.time()
    try:
        with mode:
            sample(model, lr, scale=4, steps=2, block_batch=block_batch, image_device="cpu")
    finally:
        type(model).forward_blocks = real
    result = {"device": mode.peak["device"], "host": mode.peak["host"], "seconds": time.time() - t0}
    if device.type == "cuda":
        result["cuda"] = torch.cuda.max_memory_allocated() - base
    est = estimate_peak_bytes(SMALL, side, side, block_batch, torch.float32, BlockOptions(images="host"),
                              include_clip=False)
    result["est_device"] = est.total - est.weights
    result["est_host"] = est.host
    return result


def released_table(budget: int) -> list[str]:
    cfg = InfDiTConfig.released()
    frontiers = [("on device", {}), ("offloaded", {"offload_frontier": True}),
                 ("float8 on device", {"float8_frontier": True}),
                 ("float8 offloaded", {"float8_frontier": True, "offload_frontier": True})]
    from infdit_core.planning.plan import plan_output

    lines = [f"Estimator, released config, bf16 (GiB); auto = largest block batch within {budget / GiB:.0f} GiB; "
             "images on the host where they do not fit that budget at block batch 1",
             f"{'output':>12} {'frontier':>17} {'n':>5} {'images':>7} {'device':>7} {'host':>7}  device parts "
             "(weights/frontier/activations/images)"]
    for h, w in ((4096, 4096), (8192, 8192), (16384, 16384), (4096, 16384)):
        for name, kw in frontiers:
            for block_batch in (1, "auto"):
                p = plan_output(cfg, h, w, BlockOptions(block_batch, budget, **kw), torch.bfloat16, device="cuda")
                e = p.estimate
                lines.append(
                    f"{w:>6}x{h:<5} {name:>17} {p.block_batch:>5} {'host' if p.images_on_host else 'device':>7} "
                    f"{e.total / GiB:7.2f} {e.host / GiB:7.2f}  {e.weights / GiB:.2f}/{e.frontier / GiB:.2f}/"
                    f"{e.activations / GiB:.2f}/{e.images / GiB:.2f}"
                )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", default="", help="comma-separated square output sizes to measure")
    ap.add_argument("--budget-gib", type=float, default=12.0)
    ap.add_argument("--block-batch", type=int, default=16, help="block batch of the measured runs")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; device {device}; torch {torch.__version__}")
    sizes = [int(s) for s in args.measure.split(",") if s]
    if sizes:
        print(f"\nMeasured: x4 upscale, 2 Heun steps (3 evaluations), block batch {args.block_batch}, images on the host; "
              f"model {SMALL.layers} layers, "
              f"hidden {SMALL.hidden}, float32 (MiB; device = what a GPU would hold besides the weights)")
        print(f"{'output':>6} {'device':>9} {'est.':>9} {'host':>9} {'est.':>9} {'cuda':>9} {'time s':>7}")
        for side in sizes:
            r = measure(side, device, args.block_batch)
            cuda = f"{r['cuda'] / MiB:9.1f}" if "cuda" in r else f"{'-':>9}"
            print(f"{side:>6} {r['device'] / MiB:9.1f} {r['est_device'] / MiB:9.1f} {r['host'] / MiB:9.1f} "
                  f"{r['est_host'] / MiB:9.1f} {cuda} {r['seconds']:7.1f}", flush=True)
    print()
    for line in released_table(int(args.budget_gib * GiB)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
