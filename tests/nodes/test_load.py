"""Load Inf-DiT end to end on tiny checkpoints: both formats, the cache, dtypes, and readable errors."""
import pytest
import torch
from node_fixtures import folders, model_dir, tiny_handle  # noqa: F401 (fixtures)

from infdit_core import CheckpointError
from nodes import load


def test_lists_models_in_the_folder(model_dir):
    options = load.model_options()
    assert "tiny.safetensors" in options
    assert "official/mp_rank_00_model_states.pt" in options


def test_bundled_demo_is_offered_when_present(tmp_path, monkeypatch, model_dir):
    demo = tmp_path / "infdit-demo.safetensors"
    monkeypatch.setattr(load, "DEMO_MODEL_PATH", demo)
    assert load.DEMO_OPTION not in load.model_options()
    demo.write_bytes((model_dir / "tiny.safetensors").read_bytes())
    assert load.DEMO_OPTION in load.model_options()
    handle = load.load(load.DEMO_OPTION, "fp32").outputs[0]
    assert handle.path == str(demo)


def test_safetensors_and_official_pt_give_the_same_model():
    a = load.load("tiny.safetensors", "fp32").outputs[0]
    b = load.load("official/mp_rank_00_model_states.pt", "fp32").outputs[0]
    assert a is not b
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.config.layers == 1 and a.config.hidden == 64


def test_same_file_is_loaded_once_per_dtype():
    first = load.load("tiny.safetensors", "fp32")
    again = load.load("tiny.safetensors", "fp32")
    assert again.outputs[0] is first.outputs[0] and again.extra["cached"]
    half = load.load("tiny.safetensors", "bf16").outputs[0]
    assert half is not first.outputs[0]
    assert half.model.dtype == torch.bfloat16


def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch):
    """auto = bf16 on a CPU that multiplies bf16 natively (AMX / AVX512-BF16), fp32 on one that doesn't."""
    from infdit_core.hardware import precision

    for native, expected in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert load.load("tiny.safetensors", "auto").outputs[0].model.dtype == expected


def test_missing_file_names_the_folder():
    with pytest.raises(FileNotFoundError, match="models/inf_dit"):
        load.load("gone.safetensors", "fp32")


def test_nothing_selected_says_where_to_put_models():
    with pytest.raises(FileNotFoundError, match="models/inf_dit"):
        load.load("", "fp32")


@pytest.mark.parametrize("name", ["notes.safetensors", "broken.pt"])
def test_wrong_file_is_a_one_line_checkpoint_error(name):
    with pytest.raises(CheckpointError) as err:
        load.load(name, "fp32")
    assert name in str(err.value) and "\n" not in str(err.value)


def test_missing_clip_file_is_reported():
    with pytest.raises(FileNotFoundError, match="clip_vision"):
        load.load("tiny.safetensors", "fp32", clip_name="vit-l-14.safetensors")


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="weight_dtype"):
        load.load("tiny.safetensors", "fp8")


# ---------------------------------------------------------------- the download choice

@pytest.fixture
def official(model_dir):
    """The tiny model in the official .pt layout, served as "the official weights" (the real ones are 2 GB)."""
    return (model_dir / "official" / "mp_rank_00_model_states.pt").read_bytes()


@pytest.fixture
def weights_folder(tmp_path, monkeypatch, model_dir):
    """An empty models/inf_dit first (where downloads go), the tiny models after it; the download expects
    the tiny config and comes from the loopback server the test sets in INFDIT_WEIGHTS_URL."""
    from node_fixtures import TINY
    from nodes import comfy_adapter
    from nodes.core import download

    folder = tmp_path / "inf_dit"
    folder.mkdir()
    monkeypatch.setattr(comfy_adapter, "FALLBACK_FOLDERS", {"inf_dit": [str(folder), str(model_dir)], "clip_vision": []})
    monkeypatch.setattr(download, "RELEASED", TINY)
    monkeypatch.setattr(download, "CHUNK", 4096)
    return folder


def test_the_official_weights_are_offered_after_the_files_and_the_demo():
    options = load.model_options()
    assert options[-1] == load.DOWNLOAD_OPTION == "inf-dit.safetensors (download, 2 GB)"
    assert options.index(load.DEMO_OPTION) < options.index(load.DOWNLOAD_OPTION)  # the demo stays the first default
    assert "INFDIT_WEIGHTS_URL" in load.spec().input("model_name").tooltip


def test_picking_the_download_fetches_resumes_after_a_cut_and_loads(weights_folder, official, monkeypatch):
    from loopback import LoopbackServer
    from nodes import comfy_adapter

    bars, texts = [], []
    monkeypatch.setattr(comfy_adapter.Progress, "update", lambda self, v, t, preview=None: bars.append((v, t)))
    monkeypatch.setattr(comfy_adapter, "send_progress_text", lambda text, node_id: texts.append((text, node_id)))
    server = LoopbackServer(official, cut_first_at=len(official) // 2)
    monkeypatch.setenv("INFDIT_WEIGHTS_URL", server.url)
    try:
        result = load.load(load.DOWNLOAD_OPTION, "fp32", node_id="7")
    finally:
        server.shutdown()
    assert server.log == [0, len(official) // 2]  # cut, then resumed from where it stopped
    assert sorted(p.name for p in weights_folder.iterdir()) == ["inf-dit.safetensors"]
    handle = result.outputs[0]
    assert handle.path == str(weights_folder / "inf-dit.safetensors") and handle.config.hidden == 64
    assert bars[-1] == (len(official), len(official)) and all(t == len(official) for _, t in bars)
    assert texts and all(node == "7" for _, node in texts) and texts[-1][0].startswith("Inf-DiT weights: ")
    assert " of " in texts[-1][0] and "MB/s" in texts[-1][0]
    assert "inf-dit.safetensors" in load.model_options()  # the next run can pick the file itself
    again = load.load(load.DOWNLOAD_OPTION, "fp32")  # the download choice once the file is there: no network
    assert again.outputs[0] is handle


def test_cancel_keeps_the_partial_download_and_the_next_run_resumes(weights_folder, official, monkeypatch):
    from loopback import LoopbackServer
    from nodes import comfy_adapter

    calls = []

    def cancel_on_the_third_chunk(self, v, t, preview=None):
        calls.append(v)
        if len(calls) == 3:
            comfy_adapter.request_interrupt()  # what the Cancel button does; the next chunk raises

    monkeypatch.setattr(comfy_adapter.Progress, "update", cancel_on_the_third_chunk)
    server = LoopbackServer(official)
    monkeypatch.setenv("INFDIT_WEIGHTS_URL", server.url)
    try:
        with pytest.raises(comfy_adapter.Interrupted):
            load.load(load.DOWNLOAD_OPTION, "fp32")
        partial = weights_folder / "inf-dit.pt.partial"
        kept = partial.stat().st_size
        assert kept == calls[-1] + 4096 or kept == calls[-1]  # the chunk that arrived with the Cancel is kept too
        monkeypatch.setattr(comfy_adapter.Progress, "update", lambda self, v, t, preview=None: None)
        handle = load.load(load.DOWNLOAD_OPTION, "fp32").outputs[0]
    finally:
        server.shutdown()
    assert server.log == [0, kept] and handle.config.hidden == 64 and not partial.exists()


@pytest.mark.parametrize("body, kind, message", [
    (b"<!DOCTYPE html><html>Link expired</html>", "text/html", "web page"),
    (b"\x00" * 5000, "application/octet-stream", "not the Inf-DiT checkpoint"),
])
def test_what_is_not_the_checkpoint_leaves_nothing_and_says_so_in_one_line(weights_folder, monkeypatch, body, kind, message):
    from loopback import LoopbackServer
    from nodes.core import download

    server = LoopbackServer(body, kind)
    monkeypatch.setenv("INFDIT_WEIGHTS_URL", server.url)
    try:
        with pytest.raises(download.DownloadError, match=message) as err:
            load.load(load.DOWNLOAD_OPTION, "fp32")
    finally:
        server.shutdown()
    assert "\n" not in str(err.value) and list(weights_folder.iterdir()) == []


def test_another_model_is_refused_by_the_node_too(weights_folder, official, monkeypatch):
    from loopback import LoopbackServer
    from nodes.core import download

    monkeypatch.setattr(download, "RELEASED", download.InfDiTConfig.released())
    server = LoopbackServer(official)
    monkeypatch.setenv("INFDIT_WEIGHTS_URL", server.url)
    try:
        with pytest.raises(download.DownloadError, match="another model"):
            load.load(load.DOWNLOAD_OPTION, "fp32")
    finally:
        server.shutdown()
    assert list(weights_folder.iterdir()) == []


def test_the_progress_text_gives_bytes_speed_and_time_left():
    from nodes.weights import DownloadProgress

    clock = iter([0.0, 10.0])
    progress = DownloadProgress(clock=lambda: next(clock))
    progress.started, progress.first_bytes = 0.0, 500_000_000  # resumed at 0.5 GB
    assert progress.text(700_000_000, 2_000_000_000, 10.0) == \
        "Inf-DiT weights: 700.0 MB of 2.00 GB, 20.0 MB/s, about 65 s left"
    assert progress.text(600_000_000, 2_000_000_000, 10.0).endswith("10.0 MB/s, about 2 min left")  # 140 s
    assert progress.text(1_700_000_000, None, 10.0) == "Inf-DiT weights: 1.70 GB, 120.0 MB/s"
