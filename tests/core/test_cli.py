"""The command line: upscale writes exactly scale x size, bad input is a clear error with no output."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY, random_model, write_official_pt, write_safetensors
from infdit_core.cli import main


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_safetensors(random_model(TINY, seed=9), tmp_path_factory.mktemp("m") / "tiny.safetensors")


def png(path, size=(13, 9), mode="RGB"):
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = np.random.default_rng(0).integers(0, 255, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode).save(path)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_upscale_writes_four_times_the_size(tmp_path, model_file, mode):
    src = png(tmp_path / "in.png", mode=mode)
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(model_file), "--steps", "1"]) == 0
    with Image.open(out) as im:
        assert im.size == (52, 36) and im.mode == mode


def test_x2(tmp_path, model_file):
    src = png(tmp_path / "in.png", size=(20, 7))
    assert main(["upscale", str(src), "--model", str(model_file), "--steps", "1", "--scale", "2"]) == 0
    with Image.open(tmp_path / "in_x2.png") as im:
        assert im.size == (40, 14)


@pytest.mark.parametrize("args,name,size", [
    (["--scale", "1.5"], "in_x1.5.png", (20, 14)), (["--scale", "8"], "in_x8.png", (104, 72)),
    (["--size", "40x30"], "in_40x30.png", (40, 30)), (["--long-side", "100"], "in_100x69.png", (100, 69)),
])
def test_any_factor_or_target_size(tmp_path, model_file, args, name, size):
    src = png(tmp_path / "in.png")  # 13x9
    assert main(["upscale", str(src), "--model", str(model_file), "--steps", "1", *args]) == 0
    with Image.open(tmp_path / name) as im:
        assert im.size == size


@pytest.mark.parametrize("args,message", [(["--scale", "0"], "from 1 to 16"), (["--scale", "20"], "from 1 to 16"),
                                          (["--size", "10x10"], "smaller than the input")])
def test_bad_factor_or_size_is_a_one_line_error_before_loading(tmp_path, capsys, args, message):
    src = png(tmp_path / "in.png")
    assert main(["upscale", str(src), "--model", str(tmp_path / "absent.safetensors"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_wrong_model_file_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    src = png(tmp_path / "in.png")
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model at all")
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.safetensors") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "model.safetensors"]


def test_missing_input_and_lossy_output_are_refused(tmp_path, model_file):
    with pytest.raises(SystemExit, match="input image not found"):
        main(["upscale", str(tmp_path / "nope.png"), "--model", str(model_file)])
    with pytest.raises(SystemExit, match="lossless"):
        main(["upscale", str(png(tmp_path / "in.png")), "-o", str(tmp_path / "out.jpg"), "--model", str(model_file)])


def test_convert_command(tmp_path):
    src = write_official_pt(random_model(TINY), tmp_path / "mp_rank_00_model_states.pt")
    assert main(["convert", str(src), str(tmp_path / "out.safetensors"), "--dtype", "fp16"]) == 0
    assert (tmp_path / "out.safetensors").stat().st_size > 0


def test_the_core_never_imports_comfyui():
    code = (
        "import sys, infdit_core, infdit_core.cli, infdit_core.training.train, infdit_core.training.evaluate;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'server', 'nodes', 'comfy_api')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in (ROOT / "infdit_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import comfy" not in text and "folder_paths" not in text, path


def test_estimate_shows_device_and_host_and_each_pass(capsys):
    assert main(["estimate", "8192", "--budget", "12"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("8192x8192 block_batch 1: ") and "+ host 4.50 GiB" in line  # 6 full-size images: the default solver ipndm's
    device = float(line.split(": ")[1].split(" GiB")[0])
    assert device <= 12
    assert main(["estimate", "8192x2048", "--scale", "8", "--block-batch", "auto", "--budget", "20"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("1024x256 -> 8192x2048: x4 then x2: device peak ")
    assert lines[1].startswith("  pass 1/2 x4 -> 4096x1024 ") and lines[2].startswith("  pass 2/2 x2 -> 8192x2048 ")


def test_float8_frontier_option(tmp_path, model_file, capsys):
    src = png(tmp_path / "in.png", size=(40, 24))  # 160x96 output: 2 blocks, the second reads the first
    assert main(["upscale", str(src), "--model", str(model_file), "--steps", "1", "--block-batch", "1",
                 "--float8-frontier"]) == 0
    with Image.open(tmp_path / "in_x4.png") as im:
        assert im.size == (160, 96)
    capsys.readouterr()
    assert main(["estimate", "8192", "--budget", "12", "--float8-frontier"]) == 0
    assert "frontier 4.44" in capsys.readouterr().out  # half of bf16's 8.88 GiB


def test_upscale_with_sampler_denoise_and_colour_fix(tmp_path, model_file):
    src = png(tmp_path / "in.png")
    args = ["upscale", str(src), "--model", str(model_file), "--steps", "2", "--block-batch", "1"]
    assert main(args + ["-o", str(tmp_path / "a.png"), "--sampler", "dpmpp_2m", "--denoise", "0.5", "--color-fix", "wavelet"]) == 0
    assert main(args + ["-o", str(tmp_path / "b.png")]) == 0
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert a.size == b.size == (52, 36) and np.asarray(a).tolist() != np.asarray(b).tolist()


def test_bad_denoise_is_a_one_line_error_and_writes_nothing(tmp_path, model_file, capsys):
    src = png(tmp_path / "in.png")
    assert main(["upscale", str(src), "--model", str(model_file), "--denoise", "0"]) == 2
    err = capsys.readouterr().err
    assert "denoise must be a number in (0, 1]" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize("args,name,size", [(["--scale", "8"], "photo_x8.png", (512, 384)),
                                            (["--long-side", "1000"], "photo_1000x750.png", (1000, 750))])
def test_the_same_runs_from_the_cli(tmp_path, args, name, size):
    """The CLI on the demo model: the 64x48 photo x8 and to a 1000 px long side, as the real-ComfyUI tests run
    the same workflows (tests/nodes/test_comfyui_server.py)."""
    from PIL import Image

    from infdit_core.cli import main

    with Image.open(ROOT / "docs" / "images" / "chelsea_lr.png") as photo:
        photo.convert("RGB").resize((64, 48), Image.LANCZOS).save(tmp_path / "photo.png")
    assert main(["upscale", str(tmp_path / "photo.png"), *args]) == 0
    with Image.open(tmp_path / name) as out:
        assert out.size == size


def test_without_sampler_or_steps_the_command_line_runs_the_default_13_evaluations():
    from infdit_core.cli import build_parser, sampling_options

    how = sampling_options(build_parser().parse_args(["upscale", "in.png"]))
    assert (how.sampler, how.steps) == ("ipndm", None)  # None: the model's own, 13 for the released model
    from infdit_core.sampling import solvers

    assert solvers.evaluations_for(how.sampler, solvers.own_steps(how.sampler, 20)) == 13
    release = sampling_options(build_parser().parse_args(["upscale", "in.png", "--sampler", "heun"]))
    assert solvers.evaluations_for(release.sampler, solvers.own_steps(release.sampler, 20)) == 39
