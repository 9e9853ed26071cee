"""Plain-PyTorch training of any Inf-DiT config with the release's EDM objective.

Noise levels are log-normal (P_mean, P_std), the loss is weighted by (sigma^2 + 0.25) / (0.5 sigma)^2
and the network is the same preconditioned `InfDiT.forward` that sampling uses. LR inputs are made
from HR crops by antialiased bicubic /4 (optionally mildly blurred, noised, JPEG'd). Crops cover at
least 2x2 blocks so the cross-block attention is learned. Checkpoints are resumable exactly.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

from ..hardware.devices import check_device, default_device
from ..hardware.precision import auto_dtype

from ..checkpoints.checkpoint import save_model
from ..network.clip import clip_vector
from ..network.config import InfDiTConfig
from .data import CropSampler, default_image_paths, degrade, downscale, folder_image_paths, load_rgb
from ..checkpoints.loader import load_inf_dit
from ..network.model import InfDiT
from ..sampling.pipeline import upsample
from ..network.precond import edm_loss_weight

STATE_FILE = "train_state.pt"
MODEL_FILE = "model.safetensors"  # EMA weights, loadable by load_inf_dit
LOG_FILE = "train_log.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for checkpoints and the log")
    p.add_argument("--images", help="folder of training images (default: scikit-image's bundled photos minus the held-out ones)")
    p.add_argument("--init", help="start from these weights (e.g. the released checkpoint, for fine-tuning)")
    p.add_argument("--clip", help="open_clip ViT-L-14 weights for models with a CLIP vector that lack them")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    g = p.add_argument_group("model (ignored with --resume; with --init only the sampler/sigma options apply)")
    g.add_argument("--layers", type=int, default=6)
    g.add_argument("--hidden", type=int, default=192)
    g.add_argument("--heads", type=int, default=3)
    g.add_argument("--vector-dim", type=int, default=0, help="CLIP vector size (0 = no CLIP)")
    g.add_argument("--lr-input-unscaled", action="store_true", help="feed the upsampled LR without c_in (demo models)")
    g.add_argument("--residual", action="store_true", help="diffuse the residual y - u (demo models)")
    g.add_argument("--sampler-sigma-max", type=float, default=None, help="first sampling noise level stored with the model (default 40)")
    g.add_argument("--sampler-steps", type=int, default=None, help="sampler steps stored with the model (default 20)")
    g.add_argument(
        "--sigma-data", type=float, default=None,
        help="spread of what the model diffuses, for the EDM scalings (default 0.5; about 0.12 for --residual)",
    )
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=100_000, help="stop after this many steps")
    t.add_argument("--minutes", type=float, default=None, help="stop after this much training time (counts across resumes)")
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--crop", type=int, default=256, help="HR crop side in pixels, at least 2 blocks (256 for 128-px blocks)")
    t.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--warmup", type=int, default=200)
    t.add_argument("--ema", type=float, default=0.999)
    t.add_argument("--p-mean", type=float, default=-1.0)
    t.add_argument("--p-std", type=float, default=1.4)
    t.add_argument("--blur", type=float, default=0.0, help="max Gaussian blur sigma of the LR (0 = off)")
    t.add_argument("--noise", type=float, default=0.0, help="max Gaussian noise std of the LR in [0,1] units (0 = off)")
    t.add_argument("--jpeg", type=float, default=0.0, help="max JPEG quality loss, e.g. 30 -> quality 70..100 (0 = off)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-every", type=int, default=250)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--device", default=None, help="cuda (NVIDIA or AMD), xpu (Intel), mps (Apple) or cpu; default: the "
                   "first of these this machine has")
    t.add_argument("--autocast", choices=("auto", "bf16", "none"), default="auto",
                   help="auto: bf16 on GPUs that multiply it natively (NVIDIA sm80+, AMD CDNA2/RDNA3+, Intel), else none")


def noise_options(args) -> dict:
    """The noise-level settings given on the command line (they also apply on top of --init)."""
    given = {"sigma_max": args.sampler_sigma_max, "sampler_steps": args.sampler_steps, "sigma_data": args.sigma_data}
    return {k: v for k, v in given.items() if v is not None}


def build_model(args) -> InfDiT:
    if args.init:
        model = load_inf_dit(args.init, clip_path=args.clip).float().requires_grad_(True)
        model.config = dataclasses.replace(model.config, **noise_options(args))
        model.train()
        if model.clip is not None:
            model.clip.requires_grad_(False).eval()
        return model
    cfg = InfDiTConfig(
        layers=args.layers, hidden=args.hidden, heads=args.heads, vector_dim=args.vector_dim,
        lr_input_scaled=not args.lr_input_unscaled, residual=args.residual, **noise_options(args),
    )
    model = InfDiT(cfg)
    model.initialize_weights()
    if cfg.vector_dim:
        if not args.clip:
            raise SystemExit("a model with a CLIP vector needs --clip (open_clip ViT-L-14 weights)")
        from ..network.clip import build_clip_visual
        from ..checkpoints.loader import read_clip_state

        model.clip = build_clip_visual(read_clip_state(args.clip))
    return model


def training_batch(sampler: CropSampler, args, gen: torch.Generator, device):
    """HR target y, upsampled LR u and LR l, all (B, 3, *, *) in [-1, 1]."""
    hr = sampler.batch(args.batch, gen)
    lr = degrade(downscale(hr, 4), gen, args.blur, args.noise, args.jpeg)
    y, l = hr * 2 - 1, lr * 2 - 1
    u = upsample(l, y.shape[-2:]).clamp(-1, 1)
    return y.to(device), u.to(device), l.to(device)


def edm_loss(model, y, u, l, gen: torch.Generator, p_mean: float, p_std: float, autocast: bool):
    b = y.shape[0]
    sigma = torch.exp(torch.randn(b, generator=gen) * p_std + p_mean).to(y.device)
    noise = torch.randn(y.shape, generator=gen).to(y.device) * sigma.view(-1, 1, 1, 1)
    vector = clip_vector(model.clip, l) if model.needs_clip else None
    with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=autocast):
        denoised = model(y + noise, sigma, u, l, vector)
    per_sample = ((denoised.float() - y) ** 2).mean(dim=(1, 2, 3))
    return (edm_loss_weight(sigma, model.config.sigma_data) * per_sample).mean()


def train(args) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device) if args.device else default_device()
    block = 128
    if args.crop < 2 * block or args.crop % block:
        raise SystemExit(f"--crop must be a multiple of {block} and at least {2 * block} (2x2 blocks), got {args.crop}")

    state = None
    if args.resume:
        path = out / STATE_FILE
        if not path.is_file():
            raise SystemExit(f"--resume: no {path} to resume from")
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = InfDiTConfig.from_json(state["config"])
        model = InfDiT(cfg)
        if cfg.vector_dim:
            raise SystemExit("resuming CLIP-conditioned training is not supported yet; restart with --init")
    else:
        torch.manual_seed(args.seed)  # the initial weights, so that a run is reproducible from its command
        model = build_model(args)
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("clip.")]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    step, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, elapsed = int(state["step"]), float(state["elapsed"])

    paths = folder_image_paths(args.images) if args.images else default_image_paths("train")
    sampler = CropSampler([load_rgb(p) for p in paths], args.crop)
    # auto: bf16 only where the card has it natively (precision.auto_dtype); fp16 training would need loss scaling
    use_autocast = args.autocast == "bf16" or (args.autocast == "auto" and device.type in ("cuda", "xpu")
                                                and auto_dtype(device) == torch.bfloat16)
    n_params = sum(p.numel() for p in params)
    print(f"training {n_params / 1e6:.2f} M parameters, {model.config}, on {len(sampler.images)} images, {device}", file=sys.stderr)

    log_new = not (out / LOG_FILE).exists() or not args.resume
    log = open(out / LOG_FILE, "w" if log_new else "a", newline="", encoding="utf-8")
    writer = csv.writer(log)
    if log_new:
        writer.writerow(["step", "minutes", "loss", "lr"])
    running, count, last_log = 0.0, 0, time.time()
    start = time.time() - elapsed

    def save():
        save_model(ema, out / MODEL_FILE, {"step": str(step)})
        tmp = out / (STATE_FILE + ".partial")
        torch.save(
            {
                "config": model.config.to_json(), "step": step, "elapsed": time.time() - start,
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(),
            },
            tmp,
        )
        tmp.replace(out / STATE_FILE)

    try:
        while step < args.steps and (args.minutes is None or time.time() - start < args.minutes * 60):
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
            y, u, l = training_batch(sampler, args, gen, device)
            loss = edm_loss(model, y, u, l, gen, args.p_mean, args.p_std, use_autocast)
            if not math.isfinite(loss.item()):
                raise SystemExit(f"loss became {loss.item()} at step {step}: lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - args.ema)
            step += 1
            running, count = running + loss.item(), count + 1
            if step % args.log_every == 0 or step == args.steps:
                minutes = (time.time() - start) / 60
                rate = (time.time() - last_log) / count
                writer.writerow([step, f"{minutes:.2f}", f"{running / count:.5f}", opt.param_groups[0]["lr"]])
                log.flush()
                _progress(step, args.steps, running / count, rate, minutes)
                running, count, last_log = 0.0, 0, time.time()
            if step % args.save_every == 0:
                save()
    except KeyboardInterrupt:  # Ctrl-C: keep what was learned, resumable with --resume
        print(f"\ninterrupted at step {step}", file=sys.stderr)
    finally:
        log.close()
    save()
    print(f"\nsaved {out / MODEL_FILE} after {step} steps", file=sys.stderr)
    return out / MODEL_FILE


def _progress(step, total, loss, sec_per_step, minutes):
    width = 30
    done = int(width * min(step / total, 1.0)) if total else 0
    bar = "#" * done + "-" * (width - done)
    line = f"[{bar}] step {step}/{total} loss {loss:.4f} {sec_per_step:.2f} s/step {minutes:.1f} min"
    end = "\r" if sys.stderr.isatty() else "\n"
    print(line, end=end, file=sys.stderr, flush=True)


