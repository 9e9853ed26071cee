"""Resumable runs: after every network evaluation a run writes what it needs to go on (the current sample, the
solver's history, the pass, step and phase) into a state folder, and a run with the same identity that finds it
continues from there, giving the same result bit for bit (the built-in solvers are deterministic).

One folder per run, named by the run's identity: a hash of the model's weights, the input, every setting that
changes the result and `SAMPLING_VERSION`. Each pass keeps two files: `pass<k>.state`, the solver's state after
the last finished evaluation, and `pass<k>.done`, the pass's output once it is finished (multi-pass plans). A
file whose identity, checksum or layout does not match is ignored with one message; the run then starts that
pass afresh. Files are written atomically, streamed a slice at a time (a device tensor is never copied whole
to the host), and only when the disk has room. The folder goes once the run's result is complete; folders older
than a week, or beyond a size cap (oldest first), are cleaned when a run starts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import solvers

log = logging.getLogger("inf_dit")

SAMPLING_VERSION = 1  # raise when a change of the sampling code changes results: older states are then foreign
MAGIC = b"INFDIT-STATE-1\n"
SLICE_BYTES = 64 << 20  # written and read this much at a time
STALE_AFTER_S = 7 * 24 * 3600
SIZE_CAP_BYTES = 64 << 30
FREE_MARGIN_BYTES = 256 << 20  # left free on the disk after a state is written
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class StateError(ValueError):
    """A state file that cannot be used (truncated, corrupted, foreign): the run ignores it."""


# ------------------------------------------------------------------------------------------ identity

def _host_slices(tensor: torch.Tensor):
    """The tensor's bytes, about SLICE_BYTES at a time, each slice copied to the host on its own (a device
    tensor is never copied whole; a host tensor not at all)."""
    flat = tensor.detach().reshape(-1)
    step = max(1, SLICE_BYTES // flat.element_size())
    for start in range(0, flat.numel(), step):
        yield memoryview(flat[start:start + step].cpu().contiguous().view(torch.uint8).numpy())


def _hash_tensor(h, tensor: torch.Tensor) -> None:
    h.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    for data in _host_slices(tensor):
        h.update(data)


def model_fingerprint(model) -> str:
    """A hash of the model's weights and config, computed once per loaded model (about a second for the
    released weights): the same weights give the same identity whichever file they came from."""
    cached = getattr(model, "_infdit_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.blake2b(digest_size=20)
    h.update(model.config.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, tensor)
    model._infdit_fingerprint = h.hexdigest()
    return model._infdit_fingerprint


def identity(*parts) -> str:
    """A hash of the parts: strings, numbers, tuples, None and tensors (hashed by value)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"sampling-version {SAMPLING_VERSION}".encode())
    for part in parts:
        if isinstance(part, torch.Tensor):
            _hash_tensor(h, part)
        else:
            h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ files

def write_state(path: Path, header: dict, tensors: dict[str, torch.Tensor]) -> int:
    """Tensors then a JSON trailer (layout, a CRC32 per tensor, `header`), written to a temporary file and
    renamed over `path`. Streams each tensor a slice at a time. Returns the bytes written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    layout, offset = [], len(MAGIC)
    try:
        with open(tmp, "wb") as out:
            out.write(MAGIC)
            for name, tensor in tensors.items():
                crc = 0
                for data in _host_slices(tensor):
                    out.write(data)
                    crc = zlib.crc32(data, crc)
                nbytes = tensor.numel() * tensor.element_size()
                layout.append({"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
                               "offset": offset, "bytes": nbytes, "crc32": crc})
                offset += nbytes
            trailer = json.dumps({"header": header, "tensors": layout}).encode()
            out.write(trailer)
            out.write(struct.pack("<Q", len(trailer)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return offset + len(trailer) + 8


def read_state(path: Path, device=None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors) of a state file; StateError if it is truncated, corrupted or not a state file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC or size < len(MAGIC) + 8:
                raise StateError("not an Inf-DiT state file")
            f.seek(size - 8)
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - len(MAGIC) - 8:
                raise StateError("truncated")
            f.seek(size - 8 - length)
            trailer = json.loads(f.read(length))
            tensors = {}
            for item in trailer["tensors"]:
                dtype = _DTYPES[item["dtype"]]
                tensor = torch.empty(item["shape"], dtype=dtype)
                raw = tensor.view(-1).view(torch.uint8).numpy() if tensor.numel() else bytearray()
                if item["bytes"] != len(raw) or item["offset"] + item["bytes"] > size - 8 - length:
                    raise StateError("its layout does not add up")
                f.seek(item["offset"])
                crc, view = 0, memoryview(raw)
                for start in range(0, len(raw), SLICE_BYTES):
                    piece = view[start:start + SLICE_BYTES]
                    if f.readinto(piece) != len(piece):
                        raise StateError("truncated")
                    crc = zlib.crc32(piece, crc)
                if crc != item["crc32"]:
                    raise StateError("its checksum does not match (corrupted)")
                tensors[item["name"]] = tensor.to(device) if device is not None else tensor
            return trailer["header"], tensors
    except StateError:
        raise
    except (OSError, ValueError, KeyError, TypeError, struct.error, RuntimeError) as e:
        raise StateError(f"unreadable ({type(e).__name__})") from None


# ------------------------------------------------------------------------------------------ a run's state

@dataclass
class SavedSolver:
    """What a built-in solver continues from: the next step, the phase within it (1: a two-evaluation solver
    after the step's first evaluation), the sample and the solver's history."""

    step: int
    phase: int
    x: torch.Tensor
    history: list
    extra: dict = field(default_factory=dict)


class PassCheckpoint:
    """The solver's end of one pass: `saved` (what to continue from, or None) and `save(...)` after each
    evaluation. Handed to the built-in solvers by `run_solver`."""

    def __init__(self, run: "RunState", index: int, pass_identity: str):
        self.run, self.index, self.identity = run, index, pass_identity
        self.path = run.folder / f"pass{index}.state"
        self.saved = run.load_solver(self) if run.resume else None

    def evaluations_done(self, sampler: str) -> int:
        """Network evaluations the saved state stands for."""
        return solvers.evaluations_before(sampler, self.saved.step, self.saved.phase)

    def save(self, step: int, phase: int, x: torch.Tensor, history: list, extra: dict | None = None) -> None:
        tensors = {"x": x, **{f"history{i}": d for i, d in enumerate(history)}}
        header = {"identity": self.identity, "step": step, "phase": phase, "history": len(history),
                  "extra": extra or {}}
        self.run.write(self.path, header, tensors)


class RunState:
    """A run's state folder below `root` (None: no state kept). `resume=False` starts afresh but still saves."""

    def __init__(self, root, run_identity: str, resume: bool = True, say=None, size_cap: int = SIZE_CAP_BYTES):
        self.root = Path(root)
        self.folder = self.root / run_identity[:32]
        self.resume, self.say = resume, say or log.warning
        self.enabled = True
        self.written = 0  # bytes written by this run (benchmarks read it)
        self.seconds = 0.0  # time spent writing
        clean_stale(self.root, size_cap=size_cap, keep=self.folder)
        if not resume:
            shutil.rmtree(self.folder, ignore_errors=True)

    def write(self, path: Path, header: dict, tensors: dict) -> None:
        if not self.enabled:
            return
        need = sum(t.numel() * t.element_size() for t in tensors.values()) + FREE_MARGIN_BYTES
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.folder).free + (path.stat().st_size if path.exists() else 0)
            if free < need:
                raise OSError(f"{free / 2**30:.1f} GiB free, {need / 2**30:.1f} GiB needed")
            t0 = time.perf_counter()
            self.written += write_state(path, header, tensors)
            self.seconds += time.perf_counter() - t0
        except (OSError, RuntimeError) as e:  # RuntimeError: tensors without host data (an emulated device)
            self.enabled = False
            self.say(f"Inf-DiT: cannot save the run's state in {self.folder} ({e}); it goes on without resume")

    def _read(self, path: Path, expected_identity: str, device):
        if not path.exists():
            return None
        try:
            header, tensors = read_state(path, device)
            if header.get("identity") != expected_identity:
                raise StateError("it belongs to another run")
            return header, tensors
        except StateError as e:
            self.say(f"Inf-DiT: ignoring the saved state {path.name} ({e}); starting this pass afresh")
            path.unlink(missing_ok=True)
            return None

    def load_solver(self, checkpoint: PassCheckpoint) -> SavedSolver | None:
        found = self._read(checkpoint.path, checkpoint.identity, None)
        if found is None:
            return None
        header, tensors = found
        history = [tensors[f"history{i}"] for i in range(header["history"])]
        return SavedSolver(header["step"], header["phase"], tensors["x"], history, header.get("extra", {}))

    def pass_identity(self, plan, index: int) -> str:
        """The run's identity and everything of passes 0..index that changes their bits: a pass finished before
        a changed later setting (say a smaller block batch after running out of memory) is still used."""
        passes = tuple((p.scale, p.block_batch, p.images_on_host) for p in plan.passes[: index + 1])
        return identity(self.folder.name, passes, plan.scan, plan.offload_frontier, plan.float8_frontier)

    def solver_checkpoint(self, index: int, pass_identity: str) -> PassCheckpoint:
        return PassCheckpoint(self, index, pass_identity)

    def load_output(self, index: int, pass_identity: str, device) -> torch.Tensor | None:
        found = self._read(self.folder / f"pass{index}.done", pass_identity, None) if self.resume else None
        return found[1]["output"].to(device) if found is not None else None

    def save_output(self, index: int, pass_identity: str, output: torch.Tensor) -> None:
        self.write(self.folder / f"pass{index}.done", {"identity": pass_identity}, {"output": output})
        (self.folder / f"pass{index}.state").unlink(missing_ok=True)  # the pass is done: its solver state is not needed

    def finish(self) -> None:
        """The result is complete: the state goes (and the root too, once empty)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:
            pass  # other runs' states, or not there


def open_run_state(model, lr: torch.Tensor, plan, sampling, noise=None) -> RunState | None:
    """The run's state (for `run_plan`) when `sampling.state_dir` is set and the sampler is a built-in one (a
    sampler function's inner state cannot be saved); else None. lr: the input in [-1, 1]."""
    if sampling.state_dir is None:
        return None
    if not isinstance(sampling.sampler, str):
        log.warning("Inf-DiT: a wired sampler cannot resume; this run keeps no state")
        return None
    settings = {k: v for k, v in sampling.keywords().items() if k != "sigmas"}
    try:
        run_id = identity(model_fingerprint(model), lr.float(), noise, sampling.sigmas, sampling.seed,
                          sorted(settings.items()), plan.out_size, plan.resize, len(plan.passes))
    except RuntimeError as e:  # tensors without host data (fake or meta tensors of an emulated device)
        log.warning("Inf-DiT: this run cannot keep a state (%s); it runs without resume", e)
        return None
    return RunState(sampling.state_dir, run_id, sampling.resume)


def clean_stale(root: Path, max_age_s: float = STALE_AFTER_S, size_cap: int = SIZE_CAP_BYTES, keep=None,
                now: float | None = None) -> list[Path]:
    """Remove run folders below `root` older than `max_age_s` (last written), then the oldest until all
    together fit `size_cap`; `keep` is never removed. Returns what was removed."""
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    runs = []
    for folder in root.iterdir():
        if not folder.is_dir() or folder == keep:
            continue
        files = [p for p in folder.iterdir() if p.is_file()]
        newest = max((p.stat().st_mtime for p in files), default=folder.stat().st_mtime)
        runs.append((newest, sum(p.stat().st_size for p in files), folder))
    removed = []
    total = sum(size for _, size, _ in runs)
    for newest, size, folder in sorted(runs):
        if now - newest > max_age_s or total > size_cap:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            total -= size
    return removed
