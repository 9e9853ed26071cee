"""Planning a many-image upscale: which files, where each output goes, its seed, and which rank runs it.

Everything here is plain and deterministic (no model, no torch.distributed), so every rank that is
handed the same plan does the same thing, and the tests can check each rule on its own.

- Inputs: files, folders (`recursive` for sub-folders), globs, and `.txt` lists with one path per line
  (relative paths in a list are relative to the list's folder; blank lines and `#` comments skipped).
- Each image gets a relative path: below the folder or the glob's fixed part it came from, below a
  list's folder, or just its name. The output mirrors it below the output folder, named by a pattern.
- Seeds: `derive_seed(base, relative path)`, so an image's result does not depend on which rank ran
  it, how many ranks there were, or in which order.
- Sharding: longest first onto the least-loaded rank (input pixels as the cost), then each rank runs
  its share in path order.
"""
from __future__ import annotations

import glob
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .images import IMAGE_SUFFIXES, LOSSLESS_SUFFIXES

LIST_SUFFIX = ".txt"
ON_WINDOWS = sys.platform == "win32"
# What Windows refuses in a file name (the rules of its file systems, not of Python).
WINDOWS_FORBIDDEN = set('<>:"|?*\\') | {chr(i) for i in range(32)}
WINDOWS_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


@dataclass(frozen=True)
class Source:
    path: Path  # the input file
    rel: PurePosixPath  # its relative path: mirrored below the output folder, and it names its seed


@dataclass
class Job:
    source: Path
    rel: str  # POSIX relative path of the input
    output: Path
    seed: int
    pixels: int = 0  # input width x height (0 = unknown): the sharding cost


def is_single_image(inputs: list[str], output: str | None) -> bool:
    """The one-image form kept from before batches: one existing image file (not a list) and an output
    that is a file name (or none). It keeps its `--seed` as given and overwrites its output."""
    if len(inputs) != 1:
        return False
    src = Path(inputs[0])
    return src.is_file() and src.suffix.lower() != LIST_SUFFIX and (output is None or not is_folder_output(output))


def is_folder_output(output: str) -> bool:
    """An existing folder, a path ending in a separator, or a path without a suffix is an output folder."""
    return Path(output).is_dir() or output.endswith(("/", os.sep)) or not Path(output).suffix


def discover(inputs: list[str], recursive: bool = False) -> list[Source]:
    """All images named by `inputs`, without duplicates, in the order given (files of a folder or a
    glob sorted). A name that is no file, folder or glob match is an error (SystemExit)."""
    sources: list[Source] = []
    for spec in inputs:
        path = Path(spec).expanduser()
        if path.is_dir():
            sources += _folder(path, recursive)
        elif path.is_file() and path.suffix.lower() == LIST_SUFFIX:
            sources += _list_file(path)
        elif path.is_file():
            sources.append(Source(path, PurePosixPath(path.name)))
        elif glob.has_magic(spec):
            sources += _glob(spec)
        else:
            raise SystemExit(f"input image not found: {spec} (not a file, a folder, a .txt list or a glob with matches)")
    seen, unique = set(), []
    for s in sources:
        key = os.path.realpath(s.path)
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def _wanted(path: Path, root: Path) -> bool:
    """Image files that are not hidden (our own temporary files are hidden) below `root`."""
    rel = path.relative_to(root)
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in rel.parts) and path.is_file()


def _folder(folder: Path, recursive: bool) -> list[Source]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return [Source(p, PurePosixPath(p.relative_to(folder).as_posix())) for p in sorted(files) if _wanted(p, folder)]


def _glob(pattern: str) -> list[Source]:
    parts = Path(pattern).expanduser().parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    matches = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True))
    found = [Source(p, PurePosixPath(p.relative_to(root).as_posix())) for p in matches if _wanted(p, root)]
    if not found:
        raise SystemExit(f"no image files match {pattern}")
    return found


def _list_file(listing: Path) -> list[Source]:
    """Entries that do not exist stay in: they are reported as failed images, not a reason to stop."""
    sources = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else listing.parent / path
        try:
            rel = PurePosixPath(path.resolve().relative_to(listing.parent.resolve()).as_posix())
        except ValueError:
            rel = PurePosixPath(path.name)  # outside the list's folder: just the name
        sources.append(Source(path, rel))
    return sources


def default_name(scale: str | None) -> str:
    """`<stem>_x4.png` for a factor (following it: `_x2`, `_x1.5`), `<stem>_<W>x<H>.png` for a target size."""
    return "{stem}_x{scale}.png" if scale is not None else "{stem}_{width}x{height}.png"


def output_name(pattern: str, rel: PurePosixPath, fields: dict) -> PurePosixPath:
    """The output's path relative to the output folder: the input's sub-folders, then the pattern
    ({stem}, {name}, {ext}, and `fields`: {scale} for a factor, {width} {height} of the output) applied
    to its file name."""
    rel = PurePosixPath(rel)
    known = dict(fields, stem=rel.stem, name=rel.name, ext=rel.suffix.lstrip("."))
    try:
        name = pattern.format(**known)
    except (KeyError, IndexError, ValueError) as e:
        raise SystemExit(f"--name {pattern!r} is not a valid pattern ({type(e).__name__} {e}): "
                         f"use {', '.join('{' + k + '}' for k in known)}") from None
    out = rel.parent / name
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise SystemExit(f"--name {pattern!r} must stay inside the output folder")
    check_lossless(out, hint=" (set it with --name)")
    if ON_WINDOWS:
        check_windows_name(name, pattern)
    return out


def check_windows_name(name: str, pattern: str) -> None:
    """A one-line SystemExit for an output name Windows cannot create."""
    bad = sorted(set(name) & WINDOWS_FORBIDDEN)
    if bad or PurePosixPath(name).name.split(".")[0].upper() in WINDOWS_DEVICE_NAMES or name.endswith((".", " ")):
        what = f"the characters {''.join(bad)!r}" if bad else "a device name or a trailing dot or space"
        raise SystemExit(f"--name {pattern!r} gives {name!r}, which Windows cannot create ({what}): change the pattern")


def check_lossless(path, hint: str = "") -> None:
    if PurePosixPath(path).suffix.lower() not in LOSSLESS_SUFFIXES:
        raise SystemExit(f"output {path} must be a lossless format: .png, .tif, .webp or .bmp{hint}")


def derive_seed(base_seed: int, rel) -> int:
    """A 63-bit seed from the base seed and the image's relative path (SHA-256), the same on any rank."""
    digest = hashlib.sha256(f"{int(base_seed)}:{PurePosixPath(rel).as_posix()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def plan_jobs(sources: list[Source], out_dir: Path, pattern: str, base_seed: int, describe) -> tuple[list[Job], list[dict]]:
    """One job per source, its output below `out_dir`. `describe(path)` -> (name fields, input pixels)
    reads the image's header; an image it cannot describe (ImageReadError, or ValueError for a size out
    of reach) becomes a failure {rel, error} instead. Two sources writing one output is an error.
    Sources inside the output folder (earlier outputs, when it sits inside an input folder) are left out."""
    from .images import ImageReadError

    out_real = os.path.realpath(out_dir)
    jobs, failed, by_output = [], [], {}
    for s in sources:
        if os.path.realpath(s.path).startswith(out_real + os.sep):
            continue
        try:
            fields, pixels = describe(s.path)
        except (ImageReadError, ValueError) as e:
            failed.append({"rel": s.rel.as_posix(), "error": str(e).strip().splitlines()[0]})
            continue
        output = out_dir / output_name(pattern, s.rel, fields)
        if output in by_output:
            raise SystemExit(
                f"{by_output[output]} and {s.path} would both be written to {output}: "
                "give them different folders or names, or add {ext} to --name"
            )
        by_output[output] = s.path
        jobs.append(Job(s.path, s.rel.as_posix(), output, derive_seed(base_seed, s.rel), pixels))
    return jobs, failed


def shard(jobs: list[Job], world_size: int) -> list[list[Job]]:
    """Split jobs over ranks with similar total cost: largest first onto the least-loaded rank (lowest
    rank on ties), each share then sorted by path. Each job lands in exactly one share."""
    shares: list[list[Job]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for job in sorted(jobs, key=lambda j: (-max(j.pixels, 1), j.rel)):
        r = min(range(world_size), key=lambda i: (load[i], i))
        shares[r].append(job)
        load[r] += max(job.pixels, 1)
    return [sorted(share, key=lambda j: j.rel) for share in shares]
