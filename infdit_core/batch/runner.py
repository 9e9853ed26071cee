"""Running `upscale` over one image or thousands: the model loaded once, progress bars, failures
collected instead of stopping, Ctrl-C (or torchrun's SIGTERM) stopping cleanly, a summary at the end.

The caller passes how to load the model and how to upscale one image (all the single-image options
already bound), so every option of the single-image command applies to every image unchanged.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..checkpoints.atomic import atomic_write, remove_stale_temps
from .jobs import Job, check_lossless, default_name, discover, is_single_image, output_name, plan_jobs, shard
from .distributed import Ranks, start
from ..hardware.precision import NonFiniteOutput
from ..sampling.recovery import InfDiTOutOfMemory
from .images import IMAGE_SUFFIXES, ImageReadError, image_size, is_complete_image, read_image, save_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options that only matter for several images."""
    p.add_argument("-r", "--recursive", action="store_true", help="also take images from sub-folders of input folders")
    p.add_argument("--name", metavar="PATTERN",
                   help="output file name, from {stem} {name} {ext}, {scale} for a factor, {width} {height} of the "
                   "output (default: {stem}_x{scale}.png; {stem}_{width}x{height}.png for a target size)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images whose output already exists (default: skip them, so an interrupted run resumes)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only when stderr is a terminal)")
    p.add_argument("--report", metavar="JSON", help="also write the run's summary, per rank and per image, to this file")


@dataclass
class Upscaler:
    """What the runner needs from the command line, every single-image option already bound."""

    load_model: Callable[[str], Any]  # device -> model
    upscale: Callable  # (model, image (1, H, W, C), seed, callback, output path) -> (1, H', W', C)
    output_size: Callable[[int, int], tuple]  # (height, width) -> output (height, width); ValueError if out of reach
    scale: str | None  # the factor as it appears in names ("4", "1.5"); None for a target size


def run_upscale(args, upscaler: Upscaler) -> int:
    """Plan, shard, upscale, report. Returns the exit code: 0 all done, 1 some images failed,
    130 interrupted."""
    with _sigterm_as_interrupt():
        ranks = start(args.device)
        try:
            return _run(args, ranks, upscaler)
        finally:
            ranks.close()


def _run(args, ranks: Ranks, upscaler: Upscaler) -> int:
    plan = ranks.broadcast(_plan_or_error(args, ranks.world_size, upscaler) if ranks.rank == 0 else None)
    if "error" in plan:
        raise SystemExit(plan["error"] if ranks.rank == 0 else 2)
    mine = [Job(Path(j["source"]), j["rel"], Path(j["output"]), j["seed"], j["pixels"]) for j in plan["shares"][ranks.rank]]
    single = plan["single"]
    show = (args.progress if args.progress is not None else sys.stderr.isatty()) and ranks.rank == 0
    stats = {"rank": ranks.rank, "device": ranks.device, "written": [], "failed": [], "interrupted": False}
    t0 = time.perf_counter()
    try:
        _upscale_share(args, ranks, mine, single, show, upscaler, stats)
    except KeyboardInterrupt:
        stats["interrupted"] = True
    stats["seconds"] = time.perf_counter() - t0
    if stats["interrupted"]:  # the other ranks are being stopped too: report this rank's part, no barrier
        print(f"\ninterrupted{' ' + ranks.label if ranks.distributed else ''}: " + _summary_line([stats], [], 0),
              file=sys.stderr)
        return 130
    gathered = ranks.gather(stats)
    code = None
    if ranks.rank == 0:
        failed = plan["failed"] + [f for s in gathered for f in s["failed"]]
        code = 1 if failed else 0
        if not single:
            _print_summary(gathered, plan, failed, ranks.world_size)
        elif failed:
            print(f"error: {failed[0]['error']}", file=sys.stderr)
        if args.report:
            _write_report(Path(args.report), gathered, plan, failed)
    return ranks.broadcast(code)


def _plan_or_error(args, world_size: int, upscaler: Upscaler) -> dict:
    try:
        return make_plan(args, world_size, upscaler)
    except (SystemExit, ValueError) as e:
        if world_size == 1:
            raise
        return {"error": str(e.code if isinstance(e, SystemExit) else f"error: {e}")}


def make_plan(args, world_size: int, upscaler: Upscaler) -> dict:
    """What to do, as JSON for the other ranks: the jobs per rank, what is already done, what failed."""
    pattern = args.name or default_name(upscaler.scale)

    def describe(path):
        w, h = image_size(path)
        out_h, out_w = upscaler.output_size(h, w)
        fields = {"width": out_w, "height": out_h}
        if upscaler.scale is not None:
            fields["scale"] = upscaler.scale
        return fields, w * h

    if is_single_image(args.inputs, args.output):
        src = Path(args.inputs[0])
        try:
            fields, pixels = describe(src)  # a size out of reach (ValueError) stops here, before the model loads
        except ImageReadError as e:
            raise SystemExit(str(e)) from None
        out = Path(args.output) if args.output else src.parent / output_name(pattern, PurePosixPath(src.name), fields)
        check_lossless(out)
        if not out.parent.is_dir():
            raise SystemExit(f"output folder does not exist: {out.parent}")
        jobs, failed = [Job(src, src.name, out, int(args.seed), pixels)], []  # the seed as given, as before batches
        single = True
    else:
        sources = discover(args.inputs, args.recursive)
        if args.output is None:
            raise SystemExit("several images (or a folder, list or glob) need an output folder: add -o DIR")
        out_dir = Path(args.output)
        if (out_dir.exists() or out_dir.suffix.lower() in IMAGE_SUFFIXES) and not out_dir.is_dir():
            raise SystemExit(f"-o {out_dir} names a file; several images (or a folder, list or glob) need an output folder")
        jobs, failed = plan_jobs(sources, out_dir, pattern, args.seed, describe)
        out_dir.mkdir(parents=True, exist_ok=True)
        single = False
    for f in failed:
        f["rank"] = 0
    skipped, pending = [], []
    for job in jobs:
        if not single and not args.overwrite and is_complete_image(job.output):
            skipped.append(job.rel)
        else:
            pending.append(job)
    by_folder: dict[Path, list[str]] = {}
    for job in pending:
        by_folder.setdefault(job.output.parent, []).append(job.output.name)
    for folder, names in by_folder.items():  # temporaries of a killed earlier run
        remove_stale_temps(folder, names)
    shares = [[{"source": str(j.source), "rel": j.rel, "output": str(j.output), "seed": j.seed, "pixels": j.pixels}
               for j in share] for share in shard(pending, world_size)]
    return {"single": single, "shares": shares, "skipped": skipped, "failed": failed, "total": len(jobs)}


def _upscale_share(args, ranks, jobs, single, show, upscaler: Upscaler, stats) -> None:
    from tqdm import tqdm

    if not jobs:
        return
    model = upscaler.load_model(ranks.device)
    prefix = f"[{ranks.label}] " if ranks.distributed else ""
    run_bar = tqdm(total=len(jobs), unit="image", desc=f"{prefix}images", disable=not show or single,
                   file=sys.stderr, dynamic_ncols=True)
    with run_bar:
        for job in jobs:
            t0 = time.perf_counter()
            try:
                image = read_image(job.source)
                with tqdm(unit="group", desc=job.rel, leave=False, disable=not show, file=sys.stderr,
                          dynamic_ncols=True, position=1 if not single else 0) as bar:
                    result = upscaler.upscale(model, image, job.seed, _progress(bar, args.verbose), job.output)
                    bar.refresh()  # draw the finished state even when the image beat tqdm's refresh interval
                job.output.parent.mkdir(parents=True, exist_ok=True)
                save_image(result[0], job.output)
            except (ImageReadError, OSError, InfDiTOutOfMemory, NonFiniteOutput, _out_of_memory()) as e:
                stats["failed"].append({"rel": job.rel, "error": _one_line(e), "rank": ranks.rank})
                tqdm.write(f"{prefix}failed {job.rel}: {_one_line(e)}", file=sys.stderr)
                run_bar.update(1)
                continue
            seconds = time.perf_counter() - t0
            (h, w), (oh, ow) = image.shape[1:3], result.shape[1:3]
            stats["written"].append({"rel": job.rel, "output": str(job.output), "seconds": seconds,
                                     "input": [w, h], "size": [ow, oh]})
            tqdm.write(f"{prefix}wrote {job.output} ({w}x{h} -> {ow}x{oh}) in {seconds:.1f}s", file=sys.stderr)
            run_bar.update(1)


def _progress(bar, verbose: bool):
    """Per-image bar over the block groups of every evaluation; a later pass (x8 = x4 then x2) adds its
    groups to the total when it starts, since its grid is only known then."""
    from tqdm import tqdm

    from ..sampling.sampler import BlockGroupDone

    passes_seen = set()

    def callback(event):
        if not isinstance(event, BlockGroupDone):
            return
        pass_index, passes = getattr(event, "pass_index", 0), getattr(event, "passes", 1)
        if pass_index not in passes_seen:
            passes_seen.add(pass_index)
            bar.total = (bar.total or 0) + event.evaluations * event.groups
        stage = f"pass {pass_index + 1}/{passes} " if passes > 1 else ""
        bar.set_postfix_str(f"{stage}evaluation {event.evaluation + 1}/{event.evaluations}", refresh=False)
        bar.update(1)
        if verbose:
            tqdm.write(f"  {stage}evaluation {event.evaluation + 1}/{event.evaluations} group {event.group + 1}/"
                       f"{event.groups} blocks {event.blocks}", file=sys.stderr)

    return callback


def _summary_line(per_rank: list[dict], skipped: list, planned_failures: int, world_size: int = 1) -> str:
    written = [w for s in per_rank for w in s["written"]]
    failed = planned_failures + sum(len(s["failed"]) for s in per_rank)
    seconds = max((s["seconds"] for s in per_rank), default=0.0)
    megapixels = sum(w["size"][0] * w["size"][1] for w in written) / 1e6
    on = f" on {world_size} ranks" if world_size > 1 else ""
    rate = f" ({seconds / len(written):.2f} s/image, {megapixels / seconds:.3g} megapixels/s)" if written and seconds else ""
    images = f"{len(written)} image{'' if len(written) == 1 else 's'}"
    return f"{images} upscaled in {seconds:.1f} s{on}{rate}, {len(skipped)} skipped (already done), {failed} failed"


def _print_summary(gathered, plan, failed, world_size) -> None:
    print(_summary_line(gathered, plan["skipped"], len(plan["failed"]), world_size), file=sys.stderr)
    for f in failed:
        print(f"  failed {f['rel']}: {f['error']}", file=sys.stderr)


def _write_report(path: Path, gathered, plan, failed) -> None:
    written = [dict(w, rank=s["rank"]) for s in gathered for w in s["written"]]
    seconds = max(s["seconds"] for s in gathered)
    megapixels = sum(w["size"][0] * w["size"][1] for w in written) / 1e6
    report = {
        "images": len(written), "skipped": plan["skipped"], "failed": failed, "seconds": seconds,
        "seconds_per_image": seconds / len(written) if written else None,
        "megapixels_per_second": megapixels / seconds if written and seconds else None,
        "ranks": [{"rank": s["rank"], "device": s["device"], "images": [w["rel"] for w in s["written"]],
                   "failed": [f["rel"] for f in s["failed"]], "seconds": s["seconds"]} for s in gathered],
        "written": written,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8"))


def _out_of_memory():
    import torch

    return getattr(torch, "OutOfMemoryError", MemoryError)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


@contextmanager
def _sigterm_as_interrupt():
    """torchrun stops workers with SIGTERM: treat it like Ctrl-C so temporary files are cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
