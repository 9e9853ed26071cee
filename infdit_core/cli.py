"""Command line: `python -m infdit_core {upscale,convert,train,evaluate,estimate} ...`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from .checkpoints.checkpoint import CheckpointError
from .hardware.devices import DEVICE_TYPES, check_device, default_device
from .hardware.precision import DTYPES
from .planning.options import BlockOptions
from .sampling.options import SamplingOptions
from .sampling.color import COLOR_FIXES
from .checkpoints.loader import DEMO_MODEL_PATH
from .planning.plan import output_size
from .batch.runner import add_arguments as add_batch_arguments
from .sampling.solvers import DEFAULT_EVALUATIONS, DEFAULT_SOLVER, SOLVERS

UPSCALE_HELP = """Upscale one image, or many with the model loaded once.

One image file (and -o FILE or no -o): written to FILE (default IN_x4.png), replaced if it exists,
sampled with --seed as given (as in earlier versions).

Anything else (several files, a folder, a glob, a .txt list, or -o DIR): every image is written below
DIR, mirroring sub-folders, named by --name; outputs that already exist are skipped (so an interrupted
run resumes; --overwrite redoes them); unreadable images are reported and skipped, and the exit code
is 1 if any failed. Each image's seed is derived from --seed and its path relative to the input it
came from, so its result is the same whichever process or machine runs it.

Several GPUs or machines: start it with torchrun, e.g.
  torchrun --nproc-per-node 4 -m infdit_core upscale IN -o OUT
Each process takes its share of the images (one GPU each: cuda:LOCAL_RANK); rank 0 prints the summary.
"""


def _dtype(name: str, device: str) -> torch.dtype:
    from .hardware.precision import resolve_dtype

    return resolve_dtype(name, device)


def load_model(args, device: str):
    """The model named by --model (or the bundled demo model) on `device`."""
    from .checkpoints.loader import load_inf_dit

    model_path = args.model
    if model_path is None:
        if not DEMO_MODEL_PATH.is_file():
            raise SystemExit(f"no --model given and the bundled demo model is missing ({DEMO_MODEL_PATH})")
        model_path = DEMO_MODEL_PATH
        print(f"no --model given: using the bundled demo model {DEMO_MODEL_PATH.name} (small, for trying things out; "
              "pass --model for the released Inf-DiT weights)", file=sys.stderr)
    return load_inf_dit(model_path, device=device, dtype=_dtype(args.dtype, device), clip_path=args.clip)


def block_options(args) -> BlockOptions:
    """How to walk the blocks, from the command line (built once, the same for every image)."""
    return BlockOptions("auto" if args.block_batch == "auto" else int(args.block_batch), None, args.offload_frontier,
                        args.float8_frontier, args.scan)


def sampling_options(args) -> SamplingOptions:
    """How to sample, from the command line (the seed is per image: see infdit_core/batch/jobs.py)."""
    return SamplingOptions(sampler=args.sampler, steps=args.steps, denoise=args.denoise, color_fix=args.color_fix,
                           compile=args.compile)


def cmd_upscale(args) -> int:
    from .sampling.recovery import upscale_with_recovery
    from .batch.runner import Upscaler, run_upscale

    if not 0 < args.denoise <= 1:  # before any image is read or written
        raise ValueError(f"denoise must be a number in (0, 1] (1 = start from full noise), got {args.denoise!r}")
    blocks, sampling, wanted = block_options(args), sampling_options(args), _wanted_size(args)

    def upscale_one(model, image, seed, callback, output):
        # the run's state: --state-dir, else hidden next to the output; --no-resume keeps none
        state_dir = (args.state_dir or str(Path(output).parent / STATE_FOLDER)) if args.resume else None
        how = dataclasses.replace(sampling, seed=seed, state_dir=state_dir)
        return upscale_with_recovery(model, image, wanted, blocks, how, callback)

    return run_upscale(args, Upscaler(
        load_model=lambda device: load_model(args, device),
        upscale=upscale_one,
        output_size=lambda h, w: output_size(h, w, **wanted),  # a size out of reach fails before any work
        scale=f"{wanted['scale']:g}" if "scale" in wanted else None,
    ))


def _wanted_size(args) -> dict:
    """--scale / --size WxH / --long-side / --megapixels as keywords of output_size (default: scale 4)."""
    if args.size is not None:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--size must be WIDTHxHEIGHT in pixels, e.g. 1920x1080, got {args.size!r}") from None
        return {"size": (h, w)}
    if args.long_side is not None:
        return {"long_side": args.long_side}
    if args.megapixels is not None:
        return {"megapixels": args.megapixels}
    return {"scale": 4 if args.scale is None else args.scale}


def cmd_convert(args) -> int:
    from .checkpoints.checkpoint import convert

    if Path(args.output).suffix != ".safetensors":
        raise SystemExit(f"output must end in .safetensors, got {args.output}")
    info = convert(args.input, args.output, args.dtype)
    print(f"wrote {args.output}: {info['kept']} tensors kept, {info['dropped']} dropped, "
          f"{info['bytes'] / 1e6:.1f} MB, {info['config']}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from .training.train import train

    train(args)
    return 0


def cmd_evaluate(args) -> int:
    from .training.evaluate import evaluate

    return evaluate(args)


def cmd_download(args) -> int:
    from .checkpoints.download import download

    path = download(args.to, args.url, keep_pt=args.keep_pt, progress=True)
    print(f"the Inf-DiT weights are in {path}", file=sys.stderr)
    return 0


def cmd_estimate(args) -> int:
    from .network.config import InfDiTConfig
    from .checkpoints.loader import inspect_checkpoint
    from .planning.plan import plan_output, plan_run

    cfg = inspect_checkpoint(args.model) if args.model else InfDiTConfig.released()
    dtype = DTYPES[args.dtype]
    block_batch = "auto" if args.block_batch == "auto" else int(args.block_batch)
    budget = None if args.budget is None else int(args.budget * 1024**3)
    if block_batch == "auto" and budget is None:
        raise SystemExit("--block-batch auto needs --budget GIB (the device memory it may use)")
    blocks = BlockOptions(block_batch, budget, args.offload_frontier, args.float8_frontier, images=args.images)
    device = args.plan_device or ("cuda" if budget is not None else None)  # the kind of device planned for
    for side in args.sizes:
        try:
            w, h = (int(v) for v in side.lower().split("x")) if "x" in side.lower() else (int(side), int(side))
        except ValueError:
            raise SystemExit(f"output size must be N or WIDTHxHEIGHT, got {side!r}") from None
        if args.scale is None:
            p = plan_output(cfg, h, w, blocks, dtype, device=device)
            print(f"{w}x{h} block_batch {p.block_batch}: {p.estimate}")
            continue
        plan = plan_run(cfg, max(1, round(h / args.scale)), max(1, round(w / args.scale)), {"size": (h, w)}, blocks,
                        dtype, device=device)
        print(f"{plan.describe()}: device peak {plan.peak.total / 1024**3:.2f} GiB, host {plan.peak.host / 1024**3:.2f} GiB")
        for k, p in enumerate(plan.passes):
            (oh, ow) = p.out_size
            print(f"  pass {k + 1}/{len(plan.passes)} x{p.scale} -> {ow}x{oh} block_batch {p.block_batch}: {p.estimate}")
    return 0


def add_device_argument(p) -> None:
    p.add_argument("--device", default=None, help="cuda (NVIDIA or AMD), xpu (Intel), mps (Apple) or cpu, with an index "
                   "if you like (cuda:1); default: the first of these this machine has")


STATE_FOLDER = ".infdit-state"  # next to the outputs: what an interrupted image needs to resume


def resolve_device(args) -> None:
    """--device checked against this machine (a clear error if it has no such device), or the default one."""
    if getattr(args, "device", "") is None:
        args.device = str(default_device())
    elif getattr(args, "device", None):
        args.device = str(check_device(args.device))


def add_sampling_arguments(p) -> None:
    p.add_argument("--sampler", choices=SOLVERS, default=DEFAULT_SOLVER,
                   help=f"ODE solver (default {DEFAULT_SOLVER}: {DEFAULT_EVALUATIONS} network evaluations with the "
                        f"released model; heun = the release's sampler, 39 evaluations; docs/samplers.md)")
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="none",
                   help="colour correction against the bicubic image: wavelet (its low frequencies), adain "
                        "(per-channel mean and spread), lab (its colour, the output's lightness); default none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infdit_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upscale", help="upscale image files, folders, globs or .txt lists (also under torchrun)",
                       description=UPSCALE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IN", help="image file, folder, glob ('shots/*.png') or .txt list of paths")
    p.add_argument("-o", "--output", help="one image: the output file (default: IN_x4.png next to it, IN_WxH.png for a "
                   "target size); otherwise the output folder, mirroring sub-folders (required)")
    p.add_argument("--model", help="Inf-DiT checkpoint (.pt or .safetensors); default: the bundled demo model")
    p.add_argument("--clip", help="open_clip ViT-L-14 weights, if the checkpoint lacks them")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=None,
                      help="any factor from 1 to 16 (default 4): x2/x4 passes, then an antialiased resize to the exact size")
    size.add_argument("--size", help="output size WIDTHxHEIGHT (each side at least the input's, at most 16x)")
    size.add_argument("--long-side", type=int, help="output long side in pixels, keeping the aspect ratio")
    size.add_argument("--megapixels", type=float, help="output megapixels (of 1024x1024 pixels), keeping the aspect ratio")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own; for the released model 13 with the default "
                   "sampler, 20 with heun)")
    p.add_argument("--seed", type=int, default=0, help="one image: its seed; several: the base from which each image's seed is derived")
    add_sampling_arguments(p)
    p.add_argument("--denoise", type=float, default=1.0,
                   help="in (0, 1]: below 1 starts later on the noise schedule, staying closer to the bicubic image (default 1)")
    p.add_argument("--block-batch", default="auto", help="blocks per forward: 'auto' or an integer")
    p.add_argument("--scan", choices=("auto", "rows", "columns"), default="auto")
    p.add_argument("--offload-frontier", action="store_true", help="keep cached keys/values in CPU memory")
    p.add_argument("--float8-frontier", action="store_true",
                   help="store cached keys/values as float8 (e4m3, one scale per block): half the frontier of bf16")
    add_device_argument(p)
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto")
    p.add_argument("--compile", action="store_true",
                   help="fuse the layers' small ops with torch.compile (slow first run; eager with a warning if unavailable)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every block group")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="save each image's progress after every network evaluation and continue an interrupted one "
                        "from it, bit for bit (default on; built-in samplers)")
    p.add_argument("--state-dir", help=f"where that progress is kept (default: {STATE_FOLDER}/ next to the output; "
                   "removed once the image is done)")
    add_batch_arguments(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("convert", help="convert the official .pt to .safetensors")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="cast weights (default: keep)")
    p.set_defaults(func=cmd_convert)

    from .training.train import add_arguments

    p = sub.add_parser("train", help="train or fine-tune a model")
    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="PSNR/SSIM/sharpness of bicubic and a model on held-out images")
    p.add_argument("--model", help="model to evaluate (default: the bundled demo model)")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="auto: bf16 where the CPU/GPU multiplies bf16 natively, else fp32")
    p.add_argument("--images", help="folder of HR images (default: scikit-image's held-out photos)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    p.add_argument("--crop", type=int, default=0, help="evaluate the central crop of this HR size (0 = whole image)")
    p.add_argument("--save", help="folder to write the outputs to")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("download", help="fetch the official weights and convert them to bf16 safetensors")
    p.add_argument("--to", help="folder to put inf-dit.safetensors in (default: ComfyUI/models/inf_dit when this pack "
                   "is in a ComfyUI's custom_nodes)")
    p.add_argument("--url", help="where to fetch the official checkpoint from (default: $INFDIT_WEIGHTS_URL if set, else the reference's link)")
    p.add_argument("--keep-pt", action="store_true", help="keep the downloaded .pt next to the safetensors")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("estimate", help="predicted peak memory of sampling")
    p.add_argument("sizes", nargs="+", help="output sizes, e.g. 4096 or 4096x2048 (WxH)")
    p.add_argument("--model", help="checkpoint to read the config from (default: the released config)")
    p.add_argument("--block-batch", default="1", help="an integer, or 'auto' (the largest that fits --budget)")
    p.add_argument("--budget", type=float, help="device memory in GiB for 'auto' and for placing the images")
    p.add_argument("--scale", type=float, help="the factor that made these outputs: show each x4/x2 pass")
    p.add_argument("--images", choices=("auto", "device", "host"), default="auto",
                   help="where the full-size images live (auto: on the host when they do not fit --budget)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--device", dest="plan_device", choices=DEVICE_TYPES, default=None,
                   help="the kind of device to plan for, present here or not (default: cuda with --budget; its "
                        "attention path, block batch cap and memory rules differ: docs/performance.md, Devices)")
    p.add_argument("--offload-frontier", action="store_true")
    p.add_argument("--float8-frontier", action="store_true")
    p.set_defaults(func=cmd_estimate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        resolve_device(args)
        return args.func(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .checkpoints.download import DownloadError

        if not isinstance(e, DownloadError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
