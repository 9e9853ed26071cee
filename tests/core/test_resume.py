"""An interrupted upscale resumes from its last finished network evaluation and gives the same image bit for
bit (CPU, float32): every built-in solver, each multi-pass plan in its second pass, the command line killed
with SIGKILL; bad states (truncated, corrupted, foreign) are ignored; a full disk runs on without resume."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, random_model, write_safetensors
from infdit_core import EvaluationDone, upscale_image
from infdit_core.sampling import resume, solvers

ROOT = Path(__file__).resolve().parents[2]


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=1)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 24, 40, 3, generator=torch.Generator().manual_seed(0))


def run(model, image, state_dir=None, stop_after=None, **kwargs):
    """upscale_image; `stop_after` evaluations in, a callback raises (as Cancel does). Returns (output or None,
    the (pass, evaluation) of every evaluation reported)."""
    seen = []

    def callback(event):
        if isinstance(event, EvaluationDone):
            seen.append((event.pass_index, event.evaluation))
            if stop_after is not None and len(seen) == stop_after:
                raise Stop

    kwargs = {"scale": 4, "steps": 4, "seed": 2, **kwargs}
    try:
        return upscale_image(model, image, state_dir=state_dir, callback=callback, **kwargs), seen
    except Stop:
        return None, seen


@pytest.mark.parametrize("sampler", solvers.SOLVERS)
def test_every_solver_resumes_after_any_evaluation_bit_for_bit(model, image, sampler, tmp_path):
    reference, events = run(model, image, sampler=sampler)
    total = len(events)
    for stop in range(1, total):
        state = tmp_path / f"stop{stop}"
        # stopped as evaluation `stop` reports (as Cancel does, inside it): `stop - 1` are saved
        assert run(model, image, state, stop_after=stop, sampler=sampler)[0] is None
        assert len(list(state.glob("*/pass0.state"))) == (stop > 1)
        out, resumed = run(model, image, state, sampler=sampler)
        assert torch.equal(out, reference), (sampler, stop)
        assert resumed[0] == (0, stop - 1) and len(resumed) == total - stop + 1  # only the interrupted one again
        assert not state.exists()  # removed once the result is complete


@pytest.mark.parametrize("scale", [8, 16])
def test_multi_pass_plans_resume_in_their_second_pass(model, image, scale, tmp_path):
    small = image[:, :12, :16]
    reference, events = run(model, small, scale=scale, steps=3, sampler="heun")
    first_pass = sum(1 for p, _ in events if p == 0)
    stop = first_pass + 2  # two evaluations into the second pass
    assert run(model, small, tmp_path, stop_after=stop, scale=scale, steps=3, sampler="heun")[0] is None
    folder = next(tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["pass0.done", "pass1.state"]
    out, resumed = run(model, small, tmp_path, scale=scale, steps=3, sampler="heun")
    assert torch.equal(out, reference)
    assert resumed[0] == (1, 1) and all(p == 1 for p, _ in resumed)  # the first pass is not run again


def test_a_different_setting_starts_afresh(model, image, tmp_path):
    run(model, image, tmp_path, stop_after=2)
    other, events = run(model, image, tmp_path, seed=3)
    assert events[0] == (0, 0) and torch.equal(other, run(model, image, seed=3)[0])
    again, events = run(model, image, tmp_path, resume=False)
    assert events[0] == (0, 0) and torch.equal(again, run(model, image)[0])


def bad_states():
    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def flip_a_byte(path):
        data = bytearray(path.read_bytes())
        data[len(resume.MAGIC) + 100] ^= 0xFF
        path.write_bytes(bytes(data))

    def foreign(path):
        header, tensors = resume.read_state(path)
        resume.write_state(path, {**header, "identity": "another run"}, tensors)

    def not_a_state(path):
        path.write_bytes(b"PK\x03\x04 a zip, say")

    return [truncate, flip_a_byte, foreign, not_a_state]


@pytest.mark.parametrize("spoil", bad_states(), ids=lambda f: f.__name__)
def test_bad_states_are_ignored_with_one_message_and_never_give_a_wrong_image(model, image, tmp_path, spoil, caplog):
    reference, _ = run(model, image)
    run(model, image, tmp_path, stop_after=3)
    (state,) = tmp_path.glob("*/pass0.state")
    spoil(state)
    out, events = run(model, image, tmp_path)
    assert torch.equal(out, reference) and events[0] == (0, 0)
    messages = [r.getMessage() for r in caplog.records if "ignoring the saved state" in r.getMessage()]
    assert len(messages) == 1 and "\n" not in messages[0]


def test_a_full_disk_runs_on_without_resume_and_says_so_once(model, image, tmp_path, monkeypatch, caplog):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    out, _ = run(model, image, tmp_path)
    assert torch.equal(out, run(model, image)[0])
    messages = [r.getMessage() for r in caplog.records if "goes on without resume" in r.getMessage()]
    assert len(messages) == 1
    assert not any(tmp_path.rglob("*.state"))


def test_state_files_round_trip_and_are_written_atomically(tmp_path):
    tensors = {"x": torch.randn(3, 5, 7), "h": torch.randn(4).to(torch.bfloat16), "e": torch.zeros(0)}
    path = tmp_path / "s.state"
    size = resume.write_state(path, {"identity": "abc", "step": 3}, tensors)
    assert size == path.stat().st_size and [p.name for p in tmp_path.iterdir()] == ["s.state"]  # no temporary left
    header, back = resume.read_state(path)
    assert header == {"identity": "abc", "step": 3}
    assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)


def test_stale_and_oversized_states_are_cleaned(tmp_path):
    now = time.time()
    for name, age_days, size in (("old", 8, 10), ("big", 1, 600), ("new", 0, 500)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "pass0.state").write_bytes(b"x" * size)
        os.utime(folder / "pass0.state", (now - age_days * 86400, now - age_days * 86400))
    removed = resume.clean_stale(tmp_path, size_cap=1000, now=now)
    assert sorted(p.name for p in removed) == ["big", "old"]  # a week old; then the oldest while over the cap
    assert [p.name for p in tmp_path.iterdir()] == ["new"]


def test_the_command_line_killed_with_sigkill_resumes_bit_for_bit(tmp_path):
    from PIL import Image

    model_file = write_safetensors(random_model(TINY, seed=5), tmp_path / "tiny.safetensors")
    Image.new("RGB", (160, 96), (120, 40, 200)).save(tmp_path / "in.png")  # 15 blocks: about 0.2 s an evaluation
    command = [sys.executable, "-m", "infdit_core", "upscale", str(tmp_path / "in.png"), "--model", str(model_file),
               "--steps", "12", "--sampler", "heun"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command + ["-o", str(tmp_path / "whole.png"), "--no-resume"], check=True, env=env, capture_output=True)
    killed = subprocess.Popen(command + ["-o", str(tmp_path / "out.png")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    state_root = tmp_path / ".infdit-state"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None:
        states = list(state_root.glob("*/pass0.state"))
        if states:
            try:
                if resume.read_state(states[0])[0]["step"] >= 3:
                    break
            except resume.StateError:
                pass  # being replaced right now
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed: make it longer"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "out.png").exists()  # no partial output
    again = subprocess.run(command + ["-o", str(tmp_path / "out.png")], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming at pass 1 of 1, evaluation " in again.stderr and " of 23" in again.stderr
    whole, out = Image.open(tmp_path / "whole.png"), Image.open(tmp_path / "out.png")
    assert whole.tobytes() == out.tobytes()
    assert not state_root.exists()  # removed with the output written
