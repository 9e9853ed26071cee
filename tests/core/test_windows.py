"""Windows, emulated on this machine (benchmarks/fake_os.py, `windows_file_rules`): a file that is memory-
mapped or open cannot be deleted or replaced, some names cannot be made, and text files are read in the
locale's code page (cp1252, GBK) unless the code says UTF-8."""
import ast
import os
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY, random_model, write_official_pt, write_safetensors
from infdit_core.batch import jobs
from infdit_core.checkpoints import atomic, checkpoint
from infdit_core.checkpoints import download as dl
from infdit_core.cli import main

sys.path.insert(0, str(ROOT / "benchmarks"))
from fake_os import windows_file_rules, windows_name_problem  # noqa: E402


def test_a_failed_conversion_cleans_up_and_shows_the_real_error(tmp_path, monkeypatch):
    """Finding 11: when conversion failed, the memory-mapped .pt was still referenced by the exception's
    frames; deleting it raised WinError 32, which hid the real error and left 2 GB behind."""
    pt = write_official_pt(random_model(TINY, seed=5), tmp_path / "inf-dit.pt")  # as if just downloaded
    monkeypatch.setattr(dl, "_fetch", lambda url, partial, progress: pytest.fail("the .pt is there: no fetch"))

    def convert_fails(src, dst, dtype=None):
        state, _ = checkpoint.read_state_dict(src)  # memory-mapped, held by this frame
        raise RuntimeError(f"could not write {dst}: no space left on device ({len(state)} tensors read)")

    monkeypatch.setattr(dl, "convert", convert_fails)
    with windows_file_rules() as refusals:
        with pytest.raises(RuntimeError, match="no space left on device"):
            dl.download(tmp_path, "http://127.0.0.1:9/unused", progress=False, expected_config=TINY)
    assert not pt.exists() and sorted(os.listdir(tmp_path)) == []
    assert refusals == []


def test_the_emulation_refuses_what_windows_refuses(tmp_path):
    """The rules themselves: a mapped file cannot go while its tensors live; it can once they are gone."""
    pt = write_official_pt(random_model(TINY, seed=6), tmp_path / "m.pt")
    with windows_file_rules() as refusals:
        state, _ = checkpoint.read_state_dict(pt)
        with pytest.raises(PermissionError, match="WinError 32"):
            pt.unlink()
        del state
        pt.unlink()
        with pytest.raises(OSError, match="WinError 123"):
            open(tmp_path / "a:b.png", "wb")
    assert len(refusals) == 2


def test_an_output_that_is_open_elsewhere_is_never_half_written(tmp_path):
    """os.replace over a file another program holds open fails on Windows: the old file stays whole and no
    temporary file is left."""
    target = tmp_path / "out.png"
    target.write_bytes(b"old complete image")
    with windows_file_rules():
        with open(target, "rb"):
            with pytest.raises(PermissionError):
                atomic.atomic_write(target, lambda tmp: tmp.write_bytes(b"new image"))
        atomic.atomic_write(target, lambda tmp: tmp.write_bytes(b"new image"))  # closed again: replaced
    assert target.read_bytes() == b"new image" and os.listdir(tmp_path) == ["out.png"]


def test_a_folder_upscale_under_windows_rules(tmp_path):
    """The command line on a folder with spaces and non-ASCII names, outputs replaced atomically, the report."""
    model = write_safetensors(random_model(TINY, seed=3), tmp_path / "tiny.safetensors")
    src = tmp_path / "Mes images"
    for name in ("été 1.png", "photo (2).png"):
        src.mkdir(exist_ok=True)
        Image.fromarray(np.full((6, 9, 3), 120, np.uint8)).save(src / name)
    out = tmp_path / "out"
    args = [str(src), "-o", str(out), "--model", str(model), "--steps", "1", "--no-progress", "--device", "cpu"]
    with windows_file_rules() as refusals:
        assert main(["upscale", *args]) == 0
        assert main(["upscale", *args]) == 0  # a second run: finished outputs skipped, the report replaced
    assert refusals == []
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert "été 1_x4.png" in names and "photo (2)_x4.png" in names
    assert all(windows_name_problem(n) is None for n in os.listdir(out))


@pytest.mark.parametrize("pattern,ok", [("{stem}_x{scale}.png", True), ("{stem}:{scale}.png", False),
                                        ("con.png", False), ("{stem}?.png", False)])
def test_output_names_windows_cannot_create_are_refused_there(monkeypatch, pattern, ok):
    from pathlib import PurePosixPath

    monkeypatch.setattr(jobs, "ON_WINDOWS", True)
    if ok:
        assert str(jobs.output_name(pattern, PurePosixPath("a/b.png"), {"scale": "4"})) == "a/b_x4.png"
    else:
        with pytest.raises(SystemExit, match="Windows cannot create"):
            jobs.output_name(pattern, PurePosixPath("a/b.png"), {"scale": "4"})


def _text_calls_without_encoding(path):
    """(line, call) of every open() in text mode, read_text() and write_text() in `path` that names no encoding."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("read_text", "write_text"):
            found.append((node.lineno, f.attr))
        elif isinstance(f, ast.Name) and f.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            binary = isinstance(mode, ast.Constant) and "b" in mode.value
            binary = binary or (isinstance(mode, ast.IfExp) and all(isinstance(m, ast.Constant) and "b" in m.value
                                                                  for m in (mode.body, mode.orelse)))
            if not binary:
                found.append((node.lineno, "open"))
    return found


def test_every_text_file_is_read_and_written_as_utf8():
    """Finding 12: without an encoding Python uses the locale's code page on Windows (cp1252, GBK), and the
    Chinese node docs, the workflows and the logs fail or come out garbled there."""
    offenders = {}
    for path in sorted(ROOT.rglob("*.py")):
        if ".venv" in path.parts or ".git" in path.parts:
            continue
        calls = _text_calls_without_encoding(path)
        if calls:
            offenders[str(path.relative_to(ROOT))] = calls
    assert offenders == {}


def test_the_check_sees_a_call_without_encoding(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('open("x")\nopen("x", "rb")\nopen("x", encoding="utf-8")\np.read_text()\n', encoding="utf-8")
    assert _text_calls_without_encoding(sample) == [(1, "open"), (4, "read_text")]
