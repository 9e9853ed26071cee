"""Inf-DiT Upscale end to end on a tiny model: exact sizes, batches, RGBA, seeds, progress, Cancel, and
the out-of-memory fallback."""
import dataclasses

import pytest
import torch
from node_fixtures import folders, model_dir, tiny_handle  # noqa: F401 (fixtures)

from nodes import comfy_adapter, upscale
from nodes.block_size import BlockSettings


def run(handle, image, scale="4", steps=1, seed=0, control=None, **widgets):
    return upscale.upscale(handle, image, scale, steps, seed, control, **widgets)


def image(b=1, h=16, w=16, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("h,w,scale", [(16, 16, "4"), (17, 9, "4"), (21, 13, "2")])
def test_output_is_exactly_scale_times_input(tiny_handle, h, w, scale):
    out = run(tiny_handle, image(h=h, w=w), scale).outputs[0]
    s = int(scale)
    assert out.shape == (1, h * s, w * s, 3)
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_batch_runs_each_image_with_seed_plus_index(tiny_handle):
    pic = image()
    batch = run(tiny_handle, torch.cat([pic, pic]), seed=5).outputs[0]
    assert batch.shape == (2, 64, 64, 3)
    assert torch.equal(batch[0], run(tiny_handle, pic, seed=5).outputs[0][0])
    assert torch.equal(batch[1], run(tiny_handle, pic, seed=6).outputs[0][0])
    assert not torch.equal(batch[0], batch[1])


def test_rgba_keeps_an_upscaled_alpha(tiny_handle):
    pic = image(c=4)
    pic[..., 3] = 0.25
    out = run(tiny_handle, pic).outputs[0]
    assert out.shape == (1, 64, 64, 4)
    assert torch.allclose(out[..., 3], torch.full((1, 64, 64), 0.25), atol=1e-4)


def test_seed_decides_the_result(tiny_handle):
    pic = image()
    a, b, c = (run(tiny_handle, pic, seed=s).outputs[0] for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_block_control_sets_the_block_batch(tiny_handle):
    pic = image(h=40, w=24)  # 160x96 output: a 2x1 grid of 128 px blocks
    assert run(tiny_handle, pic, control=BlockSettings(block_batch=1)).extra["block_batch"] == 1
    assert run(tiny_handle, pic, control=BlockSettings(block_batch=2, scan="rows")).extra["block_batch"] == 2
    assert run(tiny_handle, pic).extra["block_batch"] == 1  # auto on a CPU: the fastest that fits, one block


def test_progress_and_block_messages_advance_per_group(tiny_handle, monkeypatch):
    messages, updates = [], []
    monkeypatch.setattr(comfy_adapter, "send_to_browser", lambda event, data: messages.append((event, data)))
    monkeypatch.setattr(comfy_adapter.Progress, "update",
                        lambda self, v, t, preview=None: updates.append((v, t, preview and preview.size)))
    from types import SimpleNamespace

    from nodes import progress

    clock = iter(0.1 * i for i in range(1000))  # the preview's clock: a group every 0.1 s
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    run(tiny_handle, image(h=40, w=24), steps=3, control=BlockSettings(block_batch=1, scan="rows"))
    # 3 steps of the default ipndm = 3 network passes, 2 groups each
    assert [u[:2] for u in updates] == [(i, 6) for i in range(1, 7)]
    assert updates[0][2] == updates[-1][2] == (96, 160)  # preview = the real output, width x height
    # throttled to 4 a second: at 0.0, 0.3 (not 0.1, 0.2: under 0.25 s apart), then the last group, 0.5
    assert [u[0] for u in updates if u[2] is not None] == [1, 4, 6]
    event, first = messages[0]
    assert event == "inf_dit.blocks"
    assert first["grid"] == [2, 1] and first["done"] == [[0, 0]] and first["running"] == [[1, 0]]
    # only what changed: the group just done, not the list of every block done so far
    assert messages[1][1]["done"] == [[1, 0]] and messages[1][1]["group"] == 1 and messages[1][1]["running"] == []


def test_steps_0_samples_with_the_models_own_number(tiny_handle, monkeypatch):
    updates = []
    monkeypatch.setattr(comfy_adapter.Progress, "update", lambda self, v, t, preview=None: updates.append((v, t)))
    monkeypatch.setattr(tiny_handle.model, "config", dataclasses.replace(tiny_handle.config, sampler_steps=2))
    blocks = BlockSettings(block_batch=1, scan="rows")
    release = run(tiny_handle, image(h=40, w=24), steps=0, control=blocks, solver="heun")
    assert updates[-1] == (6, 6)  # heun, the model's 2 steps = 3 network passes of 2 groups
    same = run(tiny_handle, image(h=40, w=24), steps=2, control=blocks, solver="heun")
    assert torch.equal(release.outputs[0], same.outputs[0])
    default = run(tiny_handle, image(h=40, w=24), steps=0, control=blocks)
    assert updates[-1] == (6, 6)  # ipndm: as many passes as the model's Heun, at most 13
    assert torch.equal(default.outputs[0], run(tiny_handle, image(h=40, w=24), steps=3, control=blocks, solver="ipndm").outputs[0])


def test_a_saved_heun_with_steps_0_runs_the_releases_39_evaluations(tiny_handle, monkeypatch):
    """A workflow saved before ipndm became the default holds solver heun, steps 0: still the release's 20
    Heun steps. Left at their defaults the widgets run 13 evaluations (the released model's config)."""
    seen = []
    real = upscale.upscale_image
    monkeypatch.setattr(upscale, "upscale_image", lambda model, **kw: (seen.append(kw), real(model, **kw))[1])
    monkeypatch.setattr(tiny_handle.model, "config", dataclasses.replace(tiny_handle.config, sampler_steps=20))
    spec = upscale.spec()
    defaults = {i.name: i.default for i in spec.inputs if i.is_widget}
    pic = image(h=8, w=8)
    saved = run(tiny_handle, pic, steps=0, solver="heun")
    assert (seen[-1]["sampler"], seen[-1]["steps"]) == ("heun", 20) and saved.extra["progress"] == 39
    fresh = upscale.upscale(tiny_handle, pic, defaults["scale"], defaults["steps"], 0, **{
        k: v for k, v in defaults.items() if k not in ("scale", "steps", "seed")})
    assert (seen[-1]["sampler"], seen[-1]["steps"]) == ("ipndm", 13) and fresh.extra["progress"] == 13


def test_cancel_stops_within_one_group_and_frees_memory(tiny_handle, monkeypatch):
    groups, emptied = [], []
    monkeypatch.setattr(comfy_adapter, "send_to_browser",
                        lambda event, data: (groups.append(data), comfy_adapter.request_interrupt()))
    monkeypatch.setattr(comfy_adapter, "empty_cache", lambda: emptied.append(True))
    with pytest.raises(comfy_adapter.Interrupted):
        run(tiny_handle, image(h=40, w=24), steps=3, control=BlockSettings(block_batch=1))
    assert len(groups) == 1  # cancelled right after the first of 10 groups
    assert emptied
    monkeypatch.setattr(comfy_adapter, "send_to_browser", lambda event, data: None)
    assert run(tiny_handle, image()).outputs[0].shape == (1, 64, 64, 3)  # the next run is not cancelled


def fake_oom(monkeypatch, fails_when):
    calls = []
    real = upscale.upscale_image

    def flaky(model, **kw):
        plan = kw["plan"]
        calls.append((plan.block_batch, plan.offload_frontier))
        if fails_when(plan.block_batch, plan.offload_frontier):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(model, **kw)

    monkeypatch.setattr(upscale, "upscale_image", flaky)
    return calls


def test_out_of_memory_halves_the_block_batch_and_retries(tiny_handle, monkeypatch):
    calls = fake_oom(monkeypatch, lambda n, off: n > 1)
    result = run(tiny_handle, image(h=40, w=24), control=BlockSettings(block_batch=2))
    assert calls == [(2, False), (1, False)]
    assert result.extra["retried"] == (1, False)
    assert result.outputs[0].shape == (1, 160, 96, 3)


def test_out_of_memory_at_block_batch_one_offloads_the_frontier(tiny_handle, monkeypatch):
    calls = fake_oom(monkeypatch, lambda n, off: not off)
    run(tiny_handle, image(), control=BlockSettings(block_batch=1))
    assert calls == [(1, False), (1, True)]


def test_second_out_of_memory_gives_a_clear_error(tiny_handle, monkeypatch):
    calls = fake_oom(monkeypatch, lambda n, off: True)
    with pytest.raises(upscale.InfDiTOutOfMemory) as err:
        run(tiny_handle, image(h=40, w=24), control=BlockSettings(block_batch=2))
    assert calls == [(2, False), (1, False), (1, True)]  # halved, then offloaded, then stopped
    message = str(err.value)
    assert "40x24 -> 160x96" in message.replace("24x40", "40x24") or "24x40 -> 96x160" in message
    assert "Block Size Control" in message or "smaller input" in message
    assert err.value.__cause__ is None and err.value.__context__ is None  # no torch traceback chained


def test_not_an_image_is_a_clear_error(tiny_handle):
    with pytest.raises(ValueError, match="IMAGE batch"):
        run(tiny_handle, torch.rand(16, 16, 3))


@pytest.mark.parametrize("scale,target,size", [("8", "", (72, 56)), ("1.5", "", (14, 11)), ("4", "100", (100, 78)),
                                               ("4", "30x20", (20, 30)), ("2", "x3", (27, 21))])
def test_any_factor_or_target_gives_the_exact_size(tiny_handle, scale, target, size):
    out = upscale.upscale(tiny_handle, image(h=9, w=7), scale, 1, 0, None, target).outputs[0]
    assert out.shape == (1, *size, 3)


def test_progress_and_messages_cover_both_passes_of_x8(tiny_handle, monkeypatch):
    messages, updates = [], []
    monkeypatch.setattr(comfy_adapter, "send_to_browser", lambda event, data: messages.append(data))
    monkeypatch.setattr(comfy_adapter.Progress, "update", lambda self, v, t, preview=None: updates.append((v, t, preview.size)))
    result = upscale.upscale(tiny_handle, image(h=20, w=12), "8", 1, 0, BlockSettings(block_batch=1, scan="rows"))
    # x4: 80x48 = 1 block; x2: 160x96 = 2 blocks; 1 network evaluation each
    assert [u[:2] for u in updates] == [(1, 3), (2, 3), (3, 3)]
    assert [u[2] for u in updates] == [(48, 80), (96, 160), (96, 160)]  # each pass's own preview
    assert [(m["run_pass"], m["run_passes"], m["scale"]) for m in messages] == [(0, 2, 4), (1, 2, 2), (1, 2, 2)]
    assert result.outputs[0].shape == (1, 160, 96, 3)


def test_bad_scale_or_target_is_a_clear_error(tiny_handle):
    with pytest.raises(ValueError, match="smaller than the input"):
        upscale.upscale(tiny_handle, image(), "4", 1, 0, None, "8")
    with pytest.raises(ValueError, match="not understood"):
        upscale.upscale(tiny_handle, image(), "4", 1, 0, None, "huge")


def test_cancel_then_the_same_prompt_again_resumes_where_it_stopped(tiny_handle, monkeypatch, tmp_path):
    monkeypatch.setattr(comfy_adapter, "state_directory", lambda: str(tmp_path / "resume"))
    blocks = BlockSettings(block_batch=1, scan="rows")
    pic = image(h=40, w=24)
    whole = run(tiny_handle, pic, steps=4, control=blocks, resume=False).outputs[0]
    assert not (tmp_path / "resume").exists()  # resume off: nothing written
    updates = []

    def cancel_in_the_third_evaluation(self, v, t, preview=None):
        updates.append(v)
        if v == 5:  # 2 groups an evaluation: the first group of the third
            comfy_adapter.request_interrupt()

    monkeypatch.setattr(comfy_adapter.Progress, "update", cancel_in_the_third_evaluation)
    with pytest.raises(comfy_adapter.Interrupted):
        run(tiny_handle, pic, steps=4, control=blocks)
    assert list((tmp_path / "resume").glob("*/pass0.state"))
    updates.clear()
    monkeypatch.setattr(comfy_adapter.Progress, "update", lambda self, v, t, preview=None: updates.append(v))
    again = run(tiny_handle, pic, steps=4, control=blocks).outputs[0]
    assert torch.equal(again, whole)
    assert updates[0] == 5 and updates[-1] == 8  # progress starts at the third evaluation, not at 0
    assert not (tmp_path / "resume").exists()
