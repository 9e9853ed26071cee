"""End-to-end speed of the released architecture on one CUDA device, per scheduling setting.

What it runs
- `InfDiTConfig.released()` (28 layers, hidden 1280, 16 heads, patch 4) with random bf16 weights,
  without the CLIP input (vector_dim 0: the CLIP tower runs once per image, not per evaluation, and
  its two small linears per evaluation are under 0.001% of the FLOPs). Input 1024 x 1024 -> output
  4096 x 4096 = 32 x 32 blocks of 128 px, through the public `infdit_core.sample(...)` with steps=1,
  i.e. exactly one network evaluation per call.
- Settings (default list): block batch auto / 1 / 4 / 16 / 64 with the frontier on the device;
  auto / 16 with the frontier offloaded to CPU memory; auto / 16 with compile=True. `--settings`
  picks others, e.g. `--settings auto,16,16:offload,16:compile`.

How each figure is obtained
- A setting first runs a warm-up call that stops after its first groups (for compile=True this is
  where compiling happens; its time is reported). The timed call then runs the evaluation group by
  group and is stopped (by raising from the callback, which frees every cache) once it has run at
  least `--seconds` and enough groups for the frontier to be full (one line of blocks of the short
  side plus a group), or at the end of the evaluation. The device is synchronised at the end of
  every group; group 1 (conditioning, first launches) is left out.
  -> blocks/s = blocks of the timed groups / their time; seconds per evaluation = all blocks /
  blocks/s (EXTRAPOLATED from those groups unless the whole evaluation ran; the table says which).
- TFLOP/s = blocks/s x FLOPs per block (`infdit_core.network.flops.evaluation_flops` of the whole grid /
  blocks; border blocks differ by < 0.1%). Peak = the best of `--peak-repeats` dense bf16 matmuls of
  8192 x 8192 (`--peak-size`) timed in this same run: "share of peak" is TFLOP/s / that.
- Peak memory = torch.cuda.max_memory_allocated() during the timed call (reset just before it),
  compared with `estimate_peak_bytes(...).total` (weights + frontier + activations + the sampler's
  image buffers) for the block batch the call used.
- A time budget (`--budget`, default 420 s) skips the settings still left when it runs out (listed
  as skipped), so the whole script stays within 8 minutes on a data-centre GPU.

`--tiny` runs the same code on the CPU with a 2-layer hidden-64 model and a 64 x 64 input (2 x 2
blocks), so CI proves the script works; its figures mean nothing about a GPU (no device memory peak
on CPU). Output: a markdown table on stdout and JSON + markdown files in `--out` (default
benchmarks/results/): gpu_<device>.json / .md.

Run: python benchmarks/gpu.py [--out DIR] [--settings ...] [--budget 420]   |   python benchmarks/gpu.py --tiny
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from infdit_core import BlockGroupDone, InfDiT, InfDiTConfig, estimate_peak_bytes, sample  # noqa: E402
from infdit_core.network.attention import attention_variant  # noqa: E402
from infdit_core.planning.options import BlockOptions  # noqa: E402
from infdit_core.network.flops import evaluation_flops  # noqa: E402
from infdit_core.network.layers import linear_gelu  # noqa: E402
from infdit_core.hardware.precision import auto_dtype  # noqa: E402
from memory import header  # noqa: E402

DEFAULT_SETTINGS = "auto,1,4,16,64,all,auto:offload,16:offload,64:offload,auto:compile,16:compile"
VARIANTS = ("lse_merge", "concat", "cudnn")  # attention variants A/B'd at block batch 16 (attention.py)
TINY_CONFIG = dict(layers=2, hidden=64, heads=2, vector_dim=0)


class _Stop(Exception):
    """Raised from the callback to end a call after the groups we time."""


@dataclasses.dataclass(frozen=True)
class Setting:
    block_batch: int | str
    offload: bool = False
    compile: bool = False

    @classmethod
    def parse(cls, text: str) -> "Setting":
        head, *flags = text.strip().split(":")
        unknown = set(flags) - {"offload", "compile"}
        if unknown or not (head in ("auto", "all") or head.isdigit() and int(head) >= 1):
            raise SystemExit(f"bad setting {text!r}: use auto, all (one group) or N >= 1, optionally with :offload "
                             "and/or :compile")
        return cls(head if head in ("auto", "all") else int(head), "offload" in flags, "compile" in flags)

    @property
    def name(self) -> str:
        return f"{self.block_batch}" + (" offload" if self.offload else "") + (" compile" if self.compile else "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, size: int, repeats: int) -> float:
    """Best FLOP/s of a dense size x size x size matmul of this dtype on this device."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def random_model(config: InfDiTConfig, device, dtype) -> InfDiT:
    """Random weights of the right scale (the DiT init zeroes adaLN and the output layer)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = InfDiT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.5 / max(p.shape[-1], 1) ** 0.5)
    return model.to(dtype).eval().requires_grad_(False)


def run_setting(model, lr, setting: Setting, min_groups: int, seconds: float, device) -> dict:
    """Warm-up, then one timed (possibly stopped) evaluation; figures as described in the docstring."""
    times: list[float] = []
    info: dict = {}

    def callback(event, limit):
        if not isinstance(event, BlockGroupDone):
            return
        sync(device)
        times.append(time.perf_counter())
        info.update(groups=event.groups, grid=event.grid)
        info.setdefault("sizes", []).append(len(event.blocks))
        if limit(len(times)):
            raise _Stop

    block_batch = setting.block_batch
    if block_batch == "all":  # the whole image as one group
        block_batch = -(-lr.shape[-2] * 4 // model.config.block_size) * -(-lr.shape[-1] * 4 // model.config.block_size)
    kwargs = dict(steps=1, block_batch=block_batch, offload_frontier=setting.offload, compile=setting.compile)
    t0 = time.perf_counter()
    try:  # warm-up: the first two groups (compiles where compile=True)
        sample(model, lr, callback=lambda e: callback(e, lambda k: k >= 2), **kwargs)
    except _Stop:
        pass
    warmup = time.perf_counter() - t0
    times.clear()
    info.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()

    def enough(k: int) -> bool:
        return k >= 1 + min_groups and times[-1] - times[0] >= seconds

    stopped = False
    try:
        sample(model, lr, callback=lambda e: callback(e, enough), **kwargs)
    except _Stop:
        stopped = True
    n = info["sizes"][0]
    timed_blocks = sum(info["sizes"][1:])
    span = times[-1] - times[0]
    if timed_blocks == 0:  # a one-group evaluation: time the whole call
        timed_blocks, span = sum(info["sizes"]), times[-1] - start
    rows, cols = info["grid"]
    blocks_per_s = timed_blocks / span
    return dict(
        setting=setting.name, block_batch=n, groups=info["groups"], offload=setting.offload, compile=setting.compile,
        warmup_s=warmup, timed_groups=len(times) - 1 if len(times) > 1 else 1, timed_blocks=timed_blocks,
        extrapolated=stopped, seconds_per_evaluation=rows * cols / blocks_per_s, blocks_per_s=blocks_per_s,
        peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, 64 px input")
    ap.add_argument("--size", type=int, default=None, help="input side in px (default 1024; --tiny: 64)")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS)
    ap.add_argument("--seconds", type=float, default=None, help="least time per timed call (default 4; --tiny 0)")
    ap.add_argument("--budget", type=float, default=420, help="seconds for all settings; later ones are skipped")
    ap.add_argument("--peak-size", type=int, default=None, help="matmul size for the peak (default 8192; --tiny 512)")
    ap.add_argument("--peak-repeats", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and markdown")
    args = ap.parse_args(argv)

    settings = [Setting.parse(s) for s in args.settings.split(",")]
    if args.tiny:
        device, config = torch.device("cpu"), InfDiTConfig(**TINY_CONFIG)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: this benchmark is for a GPU (use --tiny for the CPU smoke run)")
        device, config = torch.device("cuda"), dataclasses.replace(InfDiTConfig.released(), vector_dim=0)
    size = args.size or (64 if args.tiny else 1024)
    seconds = args.seconds if args.seconds is not None else (0.0 if args.tiny else 4.0)
    dtype = torch.bfloat16
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(header())
    began = time.perf_counter()

    peak = matmul_peak(device, dtype, args.peak_size or (512 if args.tiny else 8192), args.peak_repeats)
    model = random_model(config, device, dtype)
    lr = torch.rand(1, 3, size, size, device=device) * 2 - 1
    bs = config.block_size
    rows = cols = -(-size * 4 // bs)
    flops_per_block = evaluation_flops(config, rows, cols).total / (rows * cols)
    min_groups_for = lambda n: -(-(min(rows, cols) + 2) // n) + 1  # noqa: E731  the frontier is full by then

    results, skipped = [], []
    for setting in settings:
        if time.perf_counter() - began > args.budget:
            skipped.append(setting.name)
            continue
        n_hint = setting.block_batch if isinstance(setting.block_batch, int) else 1 if setting.block_batch == "auto" else rows * cols
        r = run_setting(model, lr, setting, min_groups_for(min(n_hint, rows * cols)), seconds, device)
        r["tflops"] = r["blocks_per_s"] * flops_per_block / 1e12
        r["share_of_peak"] = r["tflops"] * 1e12 / peak
        est = estimate_peak_bytes(config, rows * bs, cols * bs, r["block_batch"], dtype,
                                  BlockOptions(offload_frontier=setting.offload), 1, False, device=device)
        r["estimate_bytes"] = est.total
        results.append(r)
        print(f"  {r['setting']:>16}: {r['seconds_per_evaluation']:.3f} s/evaluation, {r['tflops']:.2f} TFLOP/s",
              file=sys.stderr, flush=True)

    variants = []
    for variant in VARIANTS:  # the same evaluation with each attention variant; max difference to the first
        if time.perf_counter() - began > args.budget:
            skipped.append(f"variant {variant}")
            continue
        with attention_variant(variant):
            r = run_setting(model, lr, Setting(min(16, rows * cols)), min_groups_for(min(16, rows * cols)), seconds, device)
            torch.manual_seed(0)
            out = sample(model, lr[..., :64, :64], steps=1, block_batch=1)
        ref = variants[0]["out"] if variants else out
        variants.append(dict(variant=variant, seconds_per_evaluation=r["seconds_per_evaluation"], out=out,
                             max_difference=float((out.float() - ref.float()).abs().max())))
        print(f"  attention {variant}: {r['seconds_per_evaluation']:.3f} s/evaluation", file=sys.stderr, flush=True)
    for v in variants:
        v.pop("out")
    fused = torch.nn.Linear(1280, 5120, device=device, dtype=dtype)  # the MLP's fused matmul + GELU (layers.py)
    x = torch.randn(4096, 1280, device=device, dtype=dtype)
    with torch.no_grad():
        gelu_difference = float((linear_gelu(x, fused).float()
                                 - torch.nn.functional.gelu(fused(x), approximate="tanh").float()).abs().max())
    host_stats = None
    if device.type == "cuda" and time.perf_counter() - began <= args.budget:  # full-size images on the host
        sample(model, lr[..., :256, :256], steps=1, block_batch=4, image_device="cpu")
        stats = torch.cuda.host_memory_stats()
        host_stats = {k: v for k, v in stats.items() if "bytes" in k and ("peak" in k or "current" in k)}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-tiny"
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    report = dict(
        header=header(), device=device_name, dtype="bfloat16", config=dataclasses.asdict(config),
        input=f"{size}x{size}", output=f"{rows * bs}x{cols * bs}", blocks=rows * cols,
        flops_per_evaluation=flops_per_block * rows * cols, matmul_peak_flops=peak, results=results, skipped=skipped,
        capability=capability, auto_dtype=str(auto_dtype(device)), attention_variants=variants, host_memory=host_stats,
        fused_gelu_max_difference=gelu_difference,
        elapsed_s=time.perf_counter() - began,
    )
    table = markdown(report)
    print(table)
    tag = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    (out_dir / f"gpu_{tag}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out_dir / f"gpu_{tag}.md").write_text(table, encoding="utf-8")
    print(f"wrote {out_dir / f'gpu_{tag}.json'} and .md", file=sys.stderr)
    return 0


def markdown(report: dict) -> str:
    gib = 1024**3
    lines = [
        report["header"], "",
        f"{report['device']}, bf16, {report['config']['layers']} layers hidden {report['config']['hidden']}, "
        f"{report['input']} -> {report['output']} ({report['blocks']} blocks), "
        f"{report['flops_per_evaluation'] / 1e12:.1f} TFLOP per evaluation; dense bf16 matmul peak in this run "
        f"{report['matmul_peak_flops'] / 1e12:.1f} TFLOP/s. Times from a subset of block groups are extrapolated "
        "to the whole evaluation (column 'timed').", "",
        "| setting | block batch | groups | timed | s / evaluation | blocks / s | TFLOP/s | share of peak "
        "| peak GiB | estimate GiB | warm-up s |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        timed = f"{r['timed_groups']} groups" + (" (extrapolated)" if r["extrapolated"] else " (whole)")
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / gib:.2f}"
        lines.append(
            f"| {r['setting']} | {r['block_batch']} | {r['groups']} | {timed} | {r['seconds_per_evaluation']:.3f} "
            f"| {r['blocks_per_s']:.2f} | {r['tflops']:.3f} | {r['share_of_peak'] * 100:.1f}% | {peak} "
            f"| {r['estimate_bytes'] / gib:.2f} | {r['warmup_s']:.1f} |")
    cap = report.get("capability")
    lines += ["", f"Compute capability {cap}: auto dtype {report['auto_dtype']} (bf16 needs 8.0+)." if cap else
              f"auto dtype here: {report['auto_dtype']}."]
    if report.get("attention_variants"):
        lines += ["", "| attention variant (block batch 16) | s / evaluation | max difference to lse_merge (64 px run) |",
                  "| --- | ---: | ---: |"]
        lines += [f"| {v['variant']} | {v['seconds_per_evaluation']:.3f} | {v['max_difference']:.3g} |"
                  for v in report["attention_variants"]]
    lines += ["", f"MLP matmul with the GELU epilogue against linear then gelu(tanh): max difference "
              f"{report['fused_gelu_max_difference']:.3g} (bf16 rounding step at 1: 0.0078)."]
    if report.get("host_memory"):
        lines += ["", "Pinned host memory after a host-images run: "
                  + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in report["host_memory"].items())]
    if report["skipped"]:
        lines += ["", f"Skipped (time budget): {', '.join(report['skipped'])}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
