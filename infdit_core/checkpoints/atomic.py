"""Atomic file writes: a kill, a crash or a full disk never leaves a half-written file under the final name.

The data goes to a hidden temporary file in the destination's folder (same file system, so the final
rename is atomic), is flushed to disk, gets the permissions an ordinary `open(path, "w")` would give
(0666 minus the umask; `tempfile` and safetensors create files at 0600, which a ComfyUI running as
another user cannot read) and is then renamed over the destination.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".partial"


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Call `write(temp_path)` to produce the file, then move it to `path` in one step. The temporary
    file is `.<name>.<random>.partial` in the same folder: hidden, and not an image by its name.

    On any exception (KeyboardInterrupt included) the temporary file is removed and the exception
    propagates; `path` is then either untouched or, if it existed, still the old complete file.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def temp_target(name: str) -> str | None:
    """The file name a temporary file of ours was going to become, or None if `name` is not one."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    target, _, random_part = name[1:-len(TEMP_SUFFIX)].rpartition(".")
    return target or None  # mkstemp's random part never holds a dot, so rpartition splits it off


def remove_stale_temps(folder, targets) -> int:
    """Delete the temporary files a killed earlier run left in `folder` for the file names in
    `targets` (one scan of the folder); returns how many were removed."""
    folder, targets = Path(folder), set(targets)
    removed = 0
    if folder.is_dir():
        for entry in os.scandir(folder):
            if temp_target(entry.name) in targets:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed
