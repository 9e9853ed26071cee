"""ODE accuracy of the built-in solvers, per network evaluation, on small random Inf-DiT models.

Every solver integrates the same probability-flow ODE (the release's Karras noise levels, sigma 40 ->
0.002 -> 0, from the same u + 40 * noise) through the real pipeline (`infdit_core.sample`, block
scheduler included); its output is compared with a fine reference solution (Heun, 300 steps = 599
evaluations). Error figures on the output image in [0, 1]: PSNR of the difference (dB, higher =
closer to the exact ODE solution) and the largest difference in 8-bit levels. Averaged over several
models (seeds), image sizes and both the CLIP and the no-CLIP path.

This measures how exactly a solver solves the ODE, on random weights: not image quality, and not
the released weights. The release's 20-step Heun (39 evaluations) is the bar.

    python benchmarks/solvers.py            # the table of the README (about half an hour on a shared 2-core machine)
    python benchmarks/solvers.py --quick    # fewer cases
    python benchmarks/solvers.py --released --threads 2
        # the released layer widths (hidden 1280, 16 heads; 2 of its 28 layers, so that a 599-evaluation
        # reference fits a CPU) and the bundled demo model, every solver at 13 evaluations against the
        # release's 39 (about 40 minutes on a 2-core CPU)
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infdit_core import InfDiT, InfDiTConfig, sample, solvers  # noqa: E402

REFERENCE = ("heun", 300)
EVALUATIONS = (7, 13, 20, 39)  # network evaluations to compare at
RELEASE = ("heun", 20)


def random_model(config: InfDiTConfig, seed: int) -> InfDiT:
    """Every parameter random (a fresh DiT has zeroed adaLN/output layers and would hide the network)."""
    torch.manual_seed(seed)
    model = InfDiT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 / max(p.shape[-1], 1) ** 0.5))
    if config.vector_dim:
        model.clip = small_clip_tower(config.vector_dim, seed)
    return model.eval()


def small_clip_tower(out_dim: int, seed: int):
    """A one-layer open_clip ViT image tower shaped like ViT-L-14's but narrow (random weights)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    torch.manual_seed(seed + 1000)
    cfg = CLIPVisionCfg(layers=1, width=128, head_width=64, patch_size=14, image_size=224)
    return _build_vision_tower(out_dim, cfg, quick_gelu=False).eval()


def cases(quick: bool):
    """(label, config, model seed, LR size (h, w))."""
    no_clip = InfDiTConfig(layers=2, hidden=32, heads=2, vector_dim=0)
    with_clip = InfDiTConfig(layers=2, hidden=32, heads=2, vector_dim=16)
    wide = InfDiTConfig(layers=3, hidden=64, heads=4, vector_dim=0)
    all_cases = [
        ("no CLIP", no_clip, 0, (32, 32)),
        ("CLIP", with_clip, 1, (32, 32)),
        ("no CLIP, 3x64", wide, 2, (32, 64)),
        ("CLIP", with_clip, 3, (24, 40)),
    ]
    return all_cases[:2] if quick else all_cases


def released_cases():
    """(label, config or "demo", model seed, LR size (h, w)): the released widths with and without the CLIP
    vector, one and two blocks, and the bundled demo model."""
    import dataclasses

    widths = dataclasses.replace(InfDiTConfig.released(), layers=2)
    return [
        ("released widths, 2 layers, no CLIP", dataclasses.replace(widths, vector_dim=0), 0, (32, 32)),
        ("released widths, 2 layers, CLIP", widths, 1, (32, 32)),
        ("released widths, 2 layers, no CLIP", dataclasses.replace(widths, vector_dim=0), 2, (32, 48)),
        ("demo model", "demo", 3, (48, 64)),
    ]


def model_for(config, seed: int):
    if config == "demo":
        from infdit_core import DEMO_MODEL_PATH, load_inf_dit

        return load_inf_dit(DEMO_MODEL_PATH, dtype=torch.float32)
    return random_model(config, seed)


def steps_for(name: str, evaluations: int) -> int | None:
    """Steps that make exactly `evaluations` evaluations, or None."""
    for steps in range(1, evaluations + 1):
        if solvers.evaluations_for(name, steps) == evaluations:
            return steps
    return None


def error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(PSNR of the difference in dB, max difference in 8-bit levels) on images in [0, 1]."""
    diff = (out.double() - ref.double()) / 2  # [-1, 1] -> [0, 1] units
    mse = diff.pow(2).mean().item()
    return (math.inf if mse == 0 else -10 * math.log10(mse)), diff.abs().max().item() * 255


def lr_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth LR image in [-1, 1] (random values, slightly blurred)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 3, h, w), generator=g) * 2 - 1
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False).clamp(-1, 1)


def run_case(model, lr, seed, runs):
    """Yields ((solver, steps), (psnr, max)) against the reference, for the (solver, steps) in runs."""
    ref = sample(model, lr, steps=REFERENCE[1], seed=seed, sampler=REFERENCE[0])
    for name, steps in runs:
        yield (name, steps), error(sample(model, lr, steps=steps, seed=seed, sampler=name), ref)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 cases instead of 4")
    parser.add_argument("--released", action="store_true",
                        help="the released widths and the demo model, every solver at 13 evaluations")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    budgets = (13,) if args.released else EVALUATIONS
    runs = sorted({(n, s) for n in solvers.SOLVERS for e in budgets if (s := steps_for(n, e))} | {RELEASE})
    results = {run: [] for run in runs}
    t0 = time.time()
    case_list = released_cases() if args.released else cases(args.quick)
    for label, cfg, seed, (h, w) in case_list:
        model = model_for(cfg, seed)
        for run, err in run_case(model, lr_image(h, w, seed), seed, runs):
            results[run].append(err)
            print(f"  {label} seed {seed}: {run[0]} {run[1]} steps: {err[0]:.1f} dB, max {err[1]:.2f}", file=sys.stderr, flush=True)
        print(f"case {label} seed {seed} LR {w}x{h}: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    bar = min(p for p, _ in results[RELEASE])
    models = "; ".join(f"{label} (seed {seed}, LR {w}x{h})" for label, _, seed, (h, w) in case_list)
    print(f"ODE error against {REFERENCE[0]} {REFERENCE[1]} steps, float32, {len(case_list)} models: {models}; "
          "each model's own Karras noise levels (the release's: 40 -> 0.002 -> 0; the demo model's: 4 -> 0.002 -> 0).")
    print("PSNR of the difference (dB; mean and worst over models) and largest difference in 8-bit levels (worst).")
    print(f"Bar: {RELEASE[0]} {RELEASE[1]} steps (39 evaluations), worst case {bar:.1f} dB.\n")
    print("| solver | steps | evaluations | PSNR dB (mean) | PSNR dB (worst) | max diff (8-bit) | at least the bar |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in solvers.SOLVERS:
        for steps in sorted(s for n, s in runs if n == name):
            errs = results[(name, steps)]
            mean = sum(p for p, _ in errs) / len(errs)
            worst = min(p for p, _ in errs)
            biggest = max(m for _, m in errs)
            ok = "yes" if all(p >= b for (p, _), (b, _) in zip(errs, results[RELEASE])) else ""
            print(f"| {name} | {steps} | {solvers.evaluations_for(name, steps)} | {mean:.1f} | {worst:.1f} | {biggest:.2f} | {ok} |")
    print(f"\n{time.time() - t0:.0f} s on this machine.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
