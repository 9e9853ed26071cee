"""The operating system as the pack sees it, emulated on this Linux machine: host memory as psutil reports it on
every OS with /proc/meminfo unreadable for the pack's own code (Windows and macOS have none), and Windows'
file rules (`windows_file_rules`): no deleting or replacing a file that is memory-mapped or open, no names
Windows refuses. Used by tests/core/test_devices.py, tests/core/test_windows.py and benchmarks/devices.py.
"""
from __future__ import annotations

import builtins
import contextlib
import os
import sys
import types
from collections import Counter

import torch


@contextlib.contextmanager
def patched():
    """Yields patch(obj, name, value); every patch is undone on the way out."""
    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name, None), hasattr(obj, name)))
        setattr(obj, name, value)

    try:
        yield patch
    finally:
        for obj, name, value, had in reversed(saved):
            if had:
                setattr(obj, name, value)
            else:
                delattr(obj, name)


@contextlib.contextmanager
def host_memory(available: int, meminfo_readable: bool = False):
    """psutil reports `available` bytes (as it does on every OS), and unless `meminfo_readable` the pack's own
    code cannot open /proc/meminfo, as on Windows and macOS (psutil itself, Linux-only reader, is stood in)."""
    import psutil

    real_open = builtins.open

    def guarded_open(file, *a, **k):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if str(file) == "/proc/meminfo" and caller.split(".")[0] in ("infdit_core", "nodes") and not meminfo_readable:
            raise FileNotFoundError(2, "No such file or directory (emulated Windows/macOS)", "/proc/meminfo")
        return real_open(file, *a, **k)

    memory = types.SimpleNamespace(total=available, available=available)  # the fields the pack reads
    with patched() as patch:
        patch(builtins, "open", guarded_open)
        patch(psutil, "virtual_memory", lambda: memory)
        yield


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def windows_name_problem(path) -> str | None:
    """Why Windows would refuse this file name, or None (reserved characters, device names, a trailing dot
    or space)."""
    name = os.path.basename(os.fspath(path))
    if any(c in name for c in '<>:"|?*') or any(ord(c) < 32 for c in name):
        return f"{name!r} holds a character Windows forbids in file names"
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        return f"{name!r} is a reserved device name on Windows"
    if name.endswith((".", " ")):
        return f"{name!r} ends in a dot or space, which Windows drops"
    return None


@contextlib.contextmanager
def windows_file_rules():
    """The pack's file handling under Windows rules, on this machine: a file that is memory-mapped by a live
    torch.load(mmap=True) tensor, or open in this process, cannot be deleted, replaced or renamed over
    (WinError 32); a name Windows refuses cannot be created or renamed to (WinError 123). Yields the
    list of refusals."""
    import weakref

    refusals: list[str] = []
    mapped: dict[str, weakref.WeakSet] = {}
    opened: dict[str, int] = Counter()
    real_load, real_open = torch.load, builtins.open
    real_unlink, real_replace = os.unlink, os.replace

    def key(path) -> str:
        return os.path.realpath(os.fspath(path))

    def in_use(path) -> bool:
        k = key(path)
        return opened[k] > 0 or any(True for _ in mapped.get(k, ()))

    def refuse(code: int, text: str, path):
        refusals.append(text)
        raise PermissionError(13, f"[WinError {code}] {text}", os.fspath(path))

    def load(f, *a, **k):
        obj = real_load(f, *a, **k)
        if k.get("mmap") and isinstance(f, (str, os.PathLike)):
            tensors = mapped.setdefault(key(f), weakref.WeakSet())
            for t in (obj.values() if isinstance(obj, dict) else []):
                for leaf in (t.values() if isinstance(t, dict) else [t]):
                    if isinstance(leaf, torch.Tensor):
                        tensors.add(leaf)
        return obj

    class TrackedFile:
        def __init__(self, file, path):
            self._file, self._key = file, key(path)
            opened[self._key] += 1

        def close(self):
            if self._key is not None:
                opened[self._key] -= 1
                self._key = None
            return self._file.close()

        def __enter__(self):
            self._file.__enter__()
            return self

        def __exit__(self, *exc):
            self.close()

        def __getattr__(self, name):
            return getattr(self._file, name)

        def __iter__(self):
            return iter(self._file)

    def guarded_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax"):
            problem = windows_name_problem(file)
            if problem:
                refusals.append(problem)
                raise OSError(22, f"[WinError 123] {problem}", os.fspath(file))
        handle = real_open(file, mode, *a, **k)
        return TrackedFile(handle, file) if isinstance(file, (str, os.PathLike)) else handle

    def unlink(path, *a, **k):
        if in_use(path):
            refuse(32, "The process cannot access the file because it is being used by another process", path)
        return real_unlink(path, *a, **k)

    def replace(src, dst, *a, **k):
        problem = windows_name_problem(dst)
        if problem:
            refusals.append(problem)
            raise OSError(22, f"[WinError 123] {problem}", os.fspath(dst))
        for p in (src, dst):
            if os.path.exists(p) and in_use(p):
                refuse(5, "Access is denied", p)
        return real_replace(src, dst, *a, **k)

    with patched() as patch:
        patch(torch, "load", load)
        patch(builtins, "open", guarded_open)
        patch(os, "unlink", unlink)
        patch(os, "remove", unlink)
        patch(os, "replace", replace)
        patch(os, "rename", replace)
        yield refusals
