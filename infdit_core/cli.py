"""Command line: `python -m infdit_core {upscale,convert,train,evaluate,estimate} ...`."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import DTYPES, CheckpointError
from .loader import DEMO_MODEL_PATH
from .plan import output_size


def save_png(image: torch.Tensor, path: Path) -> None:
    """(H, W, C) float in [0, 1] -> 8-bit file, truncating like the reference writer; atomic."""
    arr = np.clip(image.double().numpy() * 255.0, 0, 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(arr.shape[-1])
    if arr.shape[-1] == 2:
        mode, arr = "LA", arr
    pil = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode)
    tmp = path.with_name(path.name + ".partial" + path.suffix)
    try:
        pil.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_image(path: Path) -> torch.Tensor:
    """An image file as (1, H, W, C) in [0, 1], keeping grayscale and alpha."""
    if not path.is_file():
        raise SystemExit(f"input image not found: {path}")
    try:
        with Image.open(path) as im:
            mode = {"L": "L", "LA": "LA", "RGBA": "RGBA", "P": "RGBA" if "transparency" in im.info else "RGB"}.get(im.mode, "RGB")
            arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read {path} as an image: {e}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr)[None]


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


def cmd_upscale(args) -> int:
    from .loader import load_inf_dit
    from .pipeline import upscale_image
    from .sampler import BlockGroupDone, EvaluationDone

    model_path = args.model
    if model_path is None:
        if not DEMO_MODEL_PATH.is_file():
            raise SystemExit(f"no --model given and the bundled demo model is missing ({DEMO_MODEL_PATH})")
        model_path = DEMO_MODEL_PATH
        print(f"no --model given: using the bundled demo model {DEMO_MODEL_PATH.name} (small, for trying things out; "
              "pass --model for the released Inf-DiT weights)", file=sys.stderr)
    image = read_image(Path(args.input))
    h, w = image.shape[1:3]
    wanted = _wanted_size(args)
    out_h, out_w = output_size(h, w, **wanted)  # a size out of reach fails here, before loading the model
    suffix = f"_x{wanted['scale']:g}" if "scale" in wanted else f"_{out_w}x{out_h}"
    out = Path(args.output) if args.output else Path(args.input).with_name(Path(args.input).stem + suffix + ".png")
    if out.suffix.lower() not in (".png", ".tif", ".tiff", ".webp", ".bmp"):
        raise SystemExit(f"output {out} must be a lossless format: .png, .tif, .webp or .bmp")
    if not out.parent.is_dir():
        raise SystemExit(f"output folder does not exist: {out.parent}")
    model = load_inf_dit(model_path, device=args.device, dtype=_dtype(args.dtype, args.device), clip_path=args.clip)
    block_batch = "auto" if args.block_batch == "auto" else int(args.block_batch)
    t0 = time.time()

    def progress(event):
        if isinstance(event, EvaluationDone):
            stage = f"pass {event.pass_index + 1}/{event.passes} " if event.passes > 1 else ""
            print(f"\r{stage}evaluation {event.evaluation + 1}/{event.evaluations} (sigma {event.sigma:.3f}) "
                  f"{time.time() - t0:.0f}s", end="", file=sys.stderr, flush=True)
        elif isinstance(event, BlockGroupDone) and args.verbose:
            print(f"  group {event.group + 1}/{event.groups} blocks {event.blocks}", file=sys.stderr)

    result = upscale_image(
        model, image, **wanted, steps=args.steps, seed=args.seed, block_batch=block_batch,
        scan=args.scan, offload_frontier=args.offload_frontier, callback=progress,
    )
    print(file=sys.stderr)
    save_png(result[0], out)
    print(f"wrote {out} ({w}x{h} -> {result.shape[2]}x{result.shape[1]}) in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


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
    from .checkpoint import convert

    if Path(args.output).suffix != ".safetensors":
        raise SystemExit(f"output must end in .safetensors, got {args.output}")
    info = convert(args.input, args.output, args.dtype)
    print(f"wrote {args.output}: {info['kept']} tensors kept, {info['dropped']} dropped, "
          f"{info['bytes'] / 1e6:.1f} MB, {info['config']}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from .train import train

    train(args)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    return evaluate(args)


def cmd_estimate(args) -> int:
    from .config import InfDiTConfig
    from .loader import inspect_checkpoint
    from .memory import estimate_peak_bytes

    cfg = inspect_checkpoint(args.model) if args.model else InfDiTConfig.released()
    for side in args.sizes:
        h, w = (int(v) for v in side.split("x")) if "x" in side else (int(side), int(side))
        est = estimate_peak_bytes(cfg, h, w, args.block_batch, DTYPES[args.dtype], args.offload_frontier)
        print(f"{w}x{h} block_batch {args.block_batch}: {est}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infdit_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upscale", help="upscale an image file")
    p.add_argument("input")
    p.add_argument("-o", "--output", help="output image (default: INPUT_x4.png, INPUT_WxH.png for a target size)")
    p.add_argument("--model", help="Inf-DiT checkpoint (.pt or .safetensors); default: the bundled demo model")
    p.add_argument("--clip", help="open_clip ViT-L-14 weights, if the checkpoint lacks them")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=None,
                      help="any factor from 1 to 16 (default 4): x2/x4 passes, then an antialiased resize to the exact size")
    size.add_argument("--size", help="output size WIDTHxHEIGHT (each side at least the input's, at most 16x)")
    size.add_argument("--long-side", type=int, help="output long side in pixels, keeping the aspect ratio")
    size.add_argument("--megapixels", type=float, help="output megapixels (of 1024x1024 pixels), keeping the aspect ratio")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own; 20 for the released model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-batch", default="auto", help="blocks per forward: 'auto' or an integer")
    p.add_argument("--scan", choices=("auto", "rows", "columns"), default="auto")
    p.add_argument("--offload-frontier", action="store_true", help="keep cached keys/values in CPU memory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("convert", help="convert the official .pt to .safetensors")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="cast weights (default: keep)")
    p.set_defaults(func=cmd_convert)

    from .train import add_arguments

    p = sub.add_parser("train", help="train or fine-tune a model")
    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="PSNR/SSIM/sharpness of bicubic and a model on held-out images")
    p.add_argument("--model", help="model to evaluate (default: the bundled demo model)")
    p.add_argument("--images", help="folder of HR images (default: scikit-image's held-out photos)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop", type=int, default=0, help="evaluate the central crop of this HR size (0 = whole image)")
    p.add_argument("--save", help="folder to write the outputs to")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("estimate", help="predicted peak memory of sampling")
    p.add_argument("sizes", nargs="+", help="output sizes, e.g. 4096 or 4096x2048 (WxH)")
    p.add_argument("--model", help="checkpoint to read the config from (default: the released config)")
    p.add_argument("--block-batch", type=int, default=1)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--offload-frontier", action="store_true")
    p.set_defaults(func=cmd_estimate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
