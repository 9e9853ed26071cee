"""Load Inf-DiT's download choice: the official weights fetched by the core's `download` (the same code and
refusals as `python -m infdit_core download`) into models/inf_dit, with ComfyUI's progress bar over the bytes,
a line with the speed and time left, and Cancel, which keeps the part fetched for the next run to resume."""
from __future__ import annotations

import time

from . import comfy_adapter as comfy
from .core import download

DOWNLOAD_OPTION = "inf-dit.safetensors (download, 2 GB)"
TEXT_EVERY_S = 0.5  # progress text at most twice a second: a chunk arrives every few milliseconds


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(seconds, 1):.0f} s"


class DownloadProgress:
    """The core's `on_progress(done, total)`: Cancel first, then the bar (bytes) and, throttled, the text."""

    def __init__(self, node_id=None, clock=time.monotonic):
        self.node_id, self.clock = node_id, clock
        self.bar = None
        self.started = self.last_text = None
        self.first_bytes = 0  # a resumed download's start: the speed counts only this run's bytes

    def __call__(self, done: int, total: int | None) -> None:
        comfy.check_interrupted()  # raises: the core keeps the partial file and re-raises
        now = self.clock()
        if self.started is None:
            self.started, self.first_bytes = now, done
        if self.bar is None:
            self.bar = comfy.Progress(total or done, self.node_id)
        self.bar.update(done, total or done)
        if self.last_text is None or now - self.last_text >= TEXT_EVERY_S or done == total:
            self.last_text = now
            comfy.send_progress_text(self.text(done, total, now), self.node_id)

    def text(self, done: int, total: int | None, now: float) -> str:
        line = f"Inf-DiT weights: {_size(done)}" + (f" of {_size(total)}" if total else "")
        elapsed, fetched = now - self.started, done - self.first_bytes
        if elapsed > 0 and fetched > 0:
            rate = fetched / elapsed
            line += f", {rate / 1e6:.1f} MB/s"
            if total and done < total:
                line += f", about {_duration((total - done) / rate)} left"
        return line


def fetch_official_weights(node_id=None) -> str:
    """models/inf_dit/inf-dit.safetensors, downloaded and converted if it is not there yet; its path."""
    folders = comfy.model_folders()
    if not folders:
        raise FileNotFoundError("no models/inf_dit folder to download the Inf-DiT weights into")
    return str(download.download(folders[0], on_progress=DownloadProgress(node_id)))
