"""`python -m infdit_core download` against loopback HTTP servers this test starts: a connection cut mid-file
(resumed with a Range request), a web page, a file that is not a checkpoint and another model."""
import pytest
import torch

from conftest import TINY, random_model, write_official_pt
from loopback import LoopbackServer
from infdit_core import InfDiTConfig, load_inf_dit
from infdit_core.checkpoints import download as dl
from infdit_core.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small model in the official .pt layout (the real one is 2 GB; `expected_config` names it)."""
    return write_official_pt(random_model(TINY, seed=4), tmp_path_factory.mktemp("pt") / "model.pt").read_bytes()


def serve(body: bytes, content_type="application/octet-stream", cut_first_at=None):
    """A loopback server for `body`; the first answer stops after `cut_first_at` bytes. Returns (url, log, server)."""
    server = LoopbackServer(body, content_type, cut_first_at)
    return server.url, server.log, server


def test_a_cut_connection_resumes_and_the_result_loads(tmp_path, checkpoint):
    url, log, server = serve(checkpoint, cut_first_at=len(checkpoint) // 3)
    try:
        path = dl.download(tmp_path, url, progress=False, expected_config=TINY)
    finally:
        server.shutdown()
    assert log == [0, len(checkpoint) // 3]  # the second request asked for the rest only
    assert path == tmp_path / "inf-dit.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf-dit.safetensors"]  # the .pt is removed
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys() if f.get_tensor(k).is_floating_point())
    assert load_inf_dit(path).config == TINY
    assert dl.download(tmp_path, "http://127.0.0.1:9/never", progress=False, expected_config=TINY) == path  # found


def test_keep_pt_keeps_the_download(tmp_path, checkpoint):
    url, _, server = serve(checkpoint)
    try:
        dl.download(tmp_path, url, keep_pt=True, progress=False, expected_config=TINY)
    finally:
        server.shutdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf-dit.pt", "inf-dit.safetensors"]


@pytest.mark.parametrize("body, kind, message", [
    (b"<!DOCTYPE html><html><body>Link expired</body></html>", "text/html", "web page"),
    (b"<html>sign in</html>", "application/octet-stream", "web page"),
    (b"\x00" * 5000, "application/octet-stream", "not the Inf-DiT checkpoint"),
])
def test_what_is_not_the_checkpoint_is_refused_and_nothing_is_left(tmp_path, body, kind, message):
    url, _, server = serve(body, kind)
    try:
        with pytest.raises(dl.DownloadError, match=message):
            dl.download(tmp_path, url, progress=False, expected_config=TINY)
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_another_model_is_refused(tmp_path, checkpoint):
    url, _, server = serve(checkpoint)
    try:
        with pytest.raises(dl.DownloadError, match="another model"):
            dl.download(tmp_path, url, progress=False)  # expects the released config
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_the_command_line(tmp_path, capsys, checkpoint, monkeypatch):
    url, _, server = serve(b"<html>gone</html>", "text/html")
    try:
        assert main(["download", "--to", str(tmp_path), "--url", url]) == 2
    finally:
        server.shutdown()
    assert "error: the server sent a web page" in capsys.readouterr().err
    monkeypatch.setattr(dl, "default_folder", lambda: None)
    assert main(["download"]) == 2
    assert "pass --to DIR" in capsys.readouterr().err
    assert InfDiTConfig.released() != TINY


def test_a_checkpoint_already_fetched_is_converted_without_fetching(tmp_path, checkpoint, monkeypatch):
    """ComfyUI-Manager's model entry (pyproject.toml) puts the official .pt where `download` fetches it to."""
    (tmp_path / dl.FETCHED_NAME).write_bytes(checkpoint)
    monkeypatch.setattr(dl, "_fetch", lambda *a: pytest.fail("fetched although the file was there"))
    path = dl.download(tmp_path, "http://127.0.0.1:9/unused", progress=False, expected_config=TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf-dit.safetensors"]
    assert load_inf_dit(path).config == TINY


def test_a_cancel_from_the_progress_callback_keeps_the_partial_file_and_the_next_run_resumes(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(dl, "CHUNK", 4096)  # several chunks of the small file
    server = LoopbackServer(checkpoint)
    seen = []

    def cancel_after_three_chunks(done, total):
        seen.append((done, total))
        if len(seen) == 3:
            raise KeyError("cancelled")  # whatever the caller raises comes back unchanged

    try:
        with pytest.raises(KeyError, match="cancelled"):
            dl.download(tmp_path, server.url, progress=False, expected_config=TINY, on_progress=cancel_after_three_chunks)
        partial = tmp_path / (dl.FETCHED_NAME + ".partial")
        assert partial.stat().st_size == seen[-1][0] > 0 and seen[-1][1] == len(checkpoint)
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)
        path = dl.download(tmp_path, server.url, progress=False, expected_config=TINY, on_progress=lambda d, t: None)
    finally:
        server.shutdown()
    assert server.log == [0, seen[-1][0]]  # the second run asked for the rest only
    assert load_inf_dit(path).config == TINY and not partial.exists()


def test_the_url_can_be_overridden_by_the_environment(tmp_path, checkpoint, monkeypatch):
    server = LoopbackServer(checkpoint)
    monkeypatch.setenv(dl.URL_VARIABLE, server.url)
    monkeypatch.setattr(dl, "RELEASED", TINY)  # the file the mirror serves is the expected one
    try:
        assert dl.weights_url() == server.url
        assert main(["download", "--to", str(tmp_path)]) == 0
    finally:
        server.shutdown()
    assert server.log == [0] and (tmp_path / dl.OUTPUT_NAME).is_file()
    monkeypatch.delenv(dl.URL_VARIABLE)
    assert dl.weights_url() == dl.OFFICIAL_URL


def test_no_disk_space_is_refused_before_anything_is_written(tmp_path, checkpoint, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    server = LoopbackServer(checkpoint)
    try:
        with pytest.raises(dl.DownloadError, match="GiB free"):
            dl.download(tmp_path, server.url, progress=False, expected_config=TINY)
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []
