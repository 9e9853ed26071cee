"""The official weights in one command: `python -m infdit_core download [--to DIR] [--url URL] [--keep-pt]`.

Fetches the released checkpoint (a ~2 GB pickle behind the link of the reference's README), resuming with
HTTP Range requests after a dropped connection, retrying with timeouts instead of hanging, with a tqdm bar
and a free-disk check first. It refuses what is not the checkpoint (a web page, a truncated file, another
model) and leaves nothing behind, checks that the file loads strictly as the released config, then writes
bf16 safetensors atomically next to where ComfyUI looks for them. A second run finds the file and does
nothing. The only network access of the whole pack, and only when asked for (this command, or Load Inf-DiT's
download choice, which calls `download` with its own progress callback).

The URL: `--url`, else the environment variable INFDIT_WEIGHTS_URL (a mirror), else the official link.
"""
from __future__ import annotations

import gc
import logging
import os
import shutil
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

from ..network.config import InfDiTConfig
from .checkpoint import CheckpointError, convert, read_state_dict, split_state

log = logging.getLogger("inf_dit")

OFFICIAL_URL = "https://cloud.tsinghua.edu.cn/f/6e313f7e1236468e973b/?dl=1"  # from the reference's README
URL_VARIABLE = "INFDIT_WEIGHTS_URL"  # a mirror of the same file (or a test's loopback server)
RELEASED = InfDiTConfig.released()  # what the downloaded file must be
OUTPUT_NAME = "inf-dit.safetensors"
FETCHED_NAME = "inf-dit.pt"  # the official checkpoint as fetched (ComfyUI-Manager's model entry puts it here too)
CHUNK = 1 << 20
TIMEOUT_S = 30  # per connection and read: a stalled server is retried, never waited on forever
RETRIES = 5


class DownloadError(RuntimeError):
    """The download failed or was not the checkpoint; the message says what to do."""


class ResumableDownloadError(DownloadError):
    """The connection kept failing: the part already fetched is kept, and the next run resumes from it."""


def weights_url() -> str:
    """Where the weights come from: INFDIT_WEIGHTS_URL when set, else the official link."""
    return os.environ.get(URL_VARIABLE, "").strip() or OFFICIAL_URL


def default_folder() -> Path | None:
    """ComfyUI/models/inf_dit when this pack sits in a ComfyUI's custom_nodes folder, else None."""
    pack = Path(__file__).resolve().parents[2]
    comfyui = pack.parent.parent
    if pack.parent.name == "custom_nodes" and (comfyui / "models").is_dir():
        return comfyui / "models" / "inf_dit"
    return None


def download(folder=None, url: str | None = None, keep_pt: bool = False, progress: bool = True,
             expected_config: InfDiTConfig | None = None, on_progress=None) -> Path:
    """The released weights as `folder`/inf-dit.safetensors (bf16); returns its path. `url`: None =
    `weights_url()`. `expected_config`: what the file must be (the released config; tests pass their small
    one). `on_progress(done_bytes, total_bytes or None)` after every chunk: anything it raises (a Cancel)
    stops the download, keeps the part fetched for the next run to resume, and is raised again."""
    folder = Path(folder) if folder is not None else default_folder()
    if folder is None:
        raise DownloadError("where to put the weights? This pack is not inside a ComfyUI's custom_nodes folder: "
                            "pass --to DIR (for ComfyUI: ComfyUI/models/inf_dit)")
    output = folder / OUTPUT_NAME
    if output.is_file():
        return output  # a second run: nothing to do
    folder.mkdir(parents=True, exist_ok=True)
    pt = folder / FETCHED_NAME
    partial = folder / (FETCHED_NAME + ".partial")
    stopped = []  # set when on_progress raised: the caller stopped us, the file is not to blame

    def report(done, total):
        try:
            on_progress(done, total)
        except BaseException:
            stopped.append(True)
            raise

    try:
        if not pt.is_file():
            _fetch(url or weights_url(), partial, progress, report if on_progress is not None else None)
            partial.replace(pt)
        _check_and_convert(pt, output, expected_config or RELEASED)
    except (ResumableDownloadError, KeyboardInterrupt):
        raise  # the partial file stays for the next run to resume
    except BaseException as error:
        if stopped:
            raise  # cancelled: the partial file stays too
        # not the checkpoint: nothing of it is left behind
        _remove_leftovers(error, (partial, pt))
        raise
    if not keep_pt:
        pt.unlink()
    return output


def _remove_leftovers(error: BaseException, paths) -> None:
    """Delete what a failed download left, without hiding `error`. Windows refuses to delete a file that is
    still memory-mapped, and the checkpoint's tensors stay alive in the frames of the error's traceback,
    so those frames are cleared first; a file that still cannot go is named in a note on the error."""
    traceback.clear_frames(error.__traceback__)
    gc.collect()
    for leftover in paths:
        try:
            leftover.unlink(missing_ok=True)
        except OSError as e:
            log.warning("Inf-DiT: could not delete %s (%s): delete it by hand", leftover, e)
            if hasattr(error, "add_note"):
                error.add_note(f"{leftover} could not be deleted ({e}): delete it by hand")


def _fetch(url: str, partial: Path, progress: bool, on_progress=None) -> None:
    """Download to `partial`, resuming after a dropped connection; refuses a web page or a short file."""
    from tqdm import tqdm

    total = None
    with tqdm(unit="B", unit_scale=True, desc="Inf-DiT weights", disable=not progress) as bar:
        for attempt in range(RETRIES + 1):
            have = partial.stat().st_size if partial.exists() else 0
            request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    resumed = have and response.status == 206
                    if not resumed:
                        have = 0
                    total = _expected_size(response, have, total)
                    if attempt == 0:
                        _check_disk(partial.parent, total, have)
                    bar.total, bar.n = total, have
                    bar.refresh()
                    _refuse_web_page(response)
                    read = getattr(response, "read1", response.read)  # what has arrived: progress and Cancel stay live
                    with open(partial, "ab" if resumed else "wb") as out:
                        while chunk := read(CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
                            have += len(chunk)
                            if on_progress is not None:
                                on_progress(have, total)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 416:
                    raise DownloadError(f"the server refused the download (HTTP {e.code}) at {url}: check the link, "
                                        "or download the checkpoint in a browser and run `python -m infdit_core "
                                        "convert`") from None
                if attempt == RETRIES:
                    raise ResumableDownloadError(f"the download kept failing ({e}); run the command again to "
                                                 "resume where it stopped") from None
                time.sleep(min(2**attempt, 30) * 0.1)
                continue
            size = partial.stat().st_size
            if total is None or size == total:
                return
            if attempt == RETRIES:
                break
    raise ResumableDownloadError(f"the download stopped at {partial.stat().st_size} of {total} bytes after "
                                 f"{RETRIES + 1} tries; run the command again to resume where it stopped")


def _expected_size(response, have: int, known):
    """Whole file size from Content-Range (a resumed answer) or Content-Length."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else known


def _check_disk(folder: Path, total, have: int = 0) -> None:
    """Room for the rest of the download and the bf16 safetensors written from it (about half its size)."""
    if total is None:
        return
    free = shutil.disk_usage(folder).free
    need = total - have + total // 2
    if free < need:
        raise DownloadError(f"{folder} has {free / 2**30:.1f} GiB free; the download and the converted weights "
                            f"need about {need / 2**30:.1f} GiB: free some space or pass --to another folder")


def _refuse_web_page(response) -> None:
    kind = response.headers.get("Content-Type", "")
    start = response.peek(64) if hasattr(response, "peek") else b""
    if "text/html" in kind or start.lstrip().lower().startswith((b"<!doctype", b"<html")):
        raise DownloadError("the server sent a web page, not the checkpoint (the link may have moved or may need "
                            "a browser): download it by hand from the link in the README and run "
                            "`python -m infdit_core convert IN.pt inf-dit.safetensors --dtype bf16`")


def _check_and_convert(pt: Path, output: Path, expected: InfDiTConfig) -> None:
    try:
        state, metadata = read_state_dict(pt)
        config, _, _, _ = split_state(pt, state, metadata)
    except CheckpointError as e:
        raise DownloadError(f"the downloaded file is not the Inf-DiT checkpoint: {e}") from None
    del state
    if config != expected:
        raise DownloadError(f"the downloaded file is another model ({config}), not the released Inf-DiT "
                            f"({expected}): check --url")
    try:
        convert(pt, output, "bf16")  # checks every tensor against the model, writes atomically
    except CheckpointError as e:
        raise DownloadError(f"the downloaded checkpoint does not load: {e}") from None
