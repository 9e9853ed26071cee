"""Many images in one run: folders, lists, globs; resumable, atomic, failures reported, seeds by path."""
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, random_model, write_official_pt, write_safetensors
from infdit_core.checkpoints import atomic
from infdit_core.batch.jobs import Job, derive_seed, discover, plan_jobs, shard
from infdit_core.checkpoints.checkpoint import convert
from infdit_core.cli import main
from infdit_core.checkpoints.loader import DEMO_MODEL_PATH

DEMO = ["--model", str(DEMO_MODEL_PATH), "--no-progress"]


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
    """A tiny random model, 10x faster than the demo model, for the tests about files rather than pixels."""
    path = write_safetensors(random_model(TINY, seed=3), tmp_path_factory.mktemp("m") / "tiny.safetensors")
    return ["--model", str(path), "--steps", "1", "--no-progress"]


def png(path, size, mode="RGB", seed=0):
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode).save(path)
    return path


def all_files(folder):
    """Every file below `folder`, hidden ones (temporaries) included, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def mixed_folder(tmp_path):
    src = tmp_path / "in"
    png(src / "wide.png", (20, 7))
    png(src / "gray.png", (9, 9), "L", seed=1)
    png(src / "sub" / "alpha.png", (11, 6), "RGBA", seed=2)
    png(src / "sub" / "deeper" / "small.jpg", (5, 8), seed=3)
    full = png(tmp_path / "full.png", (16, 16), seed=4).read_bytes()
    (src / "truncated.png").write_bytes(full[: len(full) // 2])  # a valid header, then the data stops
    (src / "fake.png").write_bytes(b"this is not an image")
    (src / "notes.txt").write_text("not an image, and not named like one: ignored\n", encoding="utf-8")
    return src


EXPECTED = {  # output -> (size, mode)
    "wide_x4.png": ((80, 28), "RGB"),
    "gray_x4.png": ((36, 36), "L"),
    "sub/alpha_x4.png": ((44, 24), "RGBA"),
    "sub/deeper/small_x4.png": ((20, 32), "RGB"),
}


def test_folder_of_mixed_images_then_a_resumed_run_skips_everything(tmp_path, mixed_folder, capsys):
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main(["upscale", str(mixed_folder), "-r", "-o", str(out), "--report", str(report), *DEMO]) == 1
    assert all_files(out) == sorted(EXPECTED)  # every good image once, nothing else (no temporaries)
    for name, (size, mode) in EXPECTED.items():
        with Image.open(out / name) as im:
            assert (im.size, im.mode) == (size, mode), name
    err = capsys.readouterr().err
    assert "4 images upscaled" in err and "2 failed" in err
    assert "failed truncated.png: cannot read" in err and "failed fake.png: cannot read" in err
    first = json.loads(report.read_text(encoding="utf-8"))
    assert first["images"] == 4 and sorted(f["rel"] for f in first["failed"]) == ["fake.png", "truncated.png"]
    assert first["seconds_per_image"] > 0 and first["megapixels_per_second"] > 0

    mtimes = {name: (out / name).stat().st_mtime_ns for name in EXPECTED}
    assert main(["upscale", str(mixed_folder), "-r", "-o", str(out), "--report", str(report), *DEMO]) == 1
    second = json.loads(report.read_text(encoding="utf-8"))
    assert second["images"] == 0 and sorted(second["skipped"]) == sorted(
        ["wide.png", "gray.png", "sub/alpha.png", "sub/deeper/small.jpg"])
    assert {name: (out / name).stat().st_mtime_ns for name in EXPECTED} == mtimes
    assert "0 images upscaled" in capsys.readouterr().err


def test_overwrite_redoes_and_without_recursive_only_the_top_folder(tmp_path, mixed_folder, tiny_args):
    out, report = tmp_path / "out", tmp_path / "report.json"
    png(out / "wide_x4.png", (3, 3))
    assert main(["upscale", str(mixed_folder), "-o", str(out), "--report", str(report), *tiny_args]) == 1
    assert json.loads(report.read_text(encoding="utf-8"))["skipped"] == ["wide.png"]
    assert main(["upscale", str(mixed_folder), "-o", str(out), "--overwrite", "--report", str(report), *tiny_args]) == 1
    assert sorted(w["rel"] for w in json.loads(report.read_text(encoding="utf-8"))["written"]) == ["gray.png", "wide.png"]
    with Image.open(out / "wide_x4.png") as im:
        assert im.size == (80, 28)


def test_each_image_uses_the_seed_of_its_relative_path(tmp_path, tiny_args):
    """The folder run's output for an image equals a one-image run with the derived seed."""
    src = tmp_path / "in"
    png(src / "sub" / "a.png", (12, 8))
    assert main(["upscale", str(src), "-r", "-o", str(tmp_path / "out"), "--seed", "7", *tiny_args]) == 0
    seed = derive_seed(7, "sub/a.png")
    assert main(["upscale", str(src / "sub" / "a.png"), "-o", str(tmp_path / "one.png"), "--seed", str(seed), *tiny_args]) == 0
    assert (tmp_path / "out" / "sub" / "a_x4.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    assert main(["upscale", str(src / "sub" / "a.png"), "-o", str(tmp_path / "seed0.png"), *tiny_args]) == 0
    assert (tmp_path / "seed0.png").read_bytes() != (tmp_path / "one.png").read_bytes()


def test_list_file_and_glob_inputs(tmp_path, capsys, tiny_args):
    src = tmp_path / "shots"
    for name in ("a.png", "b.png", "c.png"):
        png(src / name, (8, 8), seed=len(name) + ord(name[0]))
    png(src / "day2" / "d.png", (8, 8), seed=9)
    listing = tmp_path / "todo.txt"
    listing.write_text("# one path per line, relative to this file\nshots/a.png\n\nshots/day2/d.png\nshots/missing.png\n", encoding="utf-8")
    out = tmp_path / "from_list"
    assert main(["upscale", str(listing), "-o", str(out), "--scale", "2", "--name", "{stem}-{scale}x.{ext}", *tiny_args]) == 1
    assert all_files(out) == ["shots/a-2x.png", "shots/day2/d-2x.png"]
    assert "failed shots/missing.png: input image not found" in capsys.readouterr().err

    out = tmp_path / "from_glob"
    assert main(["upscale", str(src / "[ab].png"), str(src / "**" / "d.png"), "-o", str(out), *tiny_args]) == 0
    assert all_files(out) == ["a_x4.png", "b_x4.png", "day2/d_x4.png"]


def test_outputs_inside_the_input_folder_are_not_taken_as_inputs(tmp_path, tiny_args):
    src = tmp_path / "in"
    png(src / "a.png", (8, 8))
    assert main(["upscale", str(src), "-r", "-o", str(src / "x4"), *tiny_args]) == 0
    assert main(["upscale", str(src), "-r", "-o", str(src / "x4"), *tiny_args]) == 0
    assert all_files(src / "x4") == ["a_x4.png"]


def test_clear_errors_before_any_work(tmp_path, tiny_args):
    a, b = png(tmp_path / "one" / "x.png", (8, 8)), png(tmp_path / "two" / "x.png", (8, 8))
    with pytest.raises(SystemExit, match="would both be written to"):
        main(["upscale", str(a), str(b), "-o", str(tmp_path / "out"), *tiny_args])
    with pytest.raises(SystemExit, match="need an output folder"):
        main(["upscale", str(a), str(b), *tiny_args])
    with pytest.raises(SystemExit, match="names a file"):
        main(["upscale", str(a), str(b), "-o", str(tmp_path / "out.png"), *tiny_args])
    with pytest.raises(SystemExit, match="no image files match"):
        main(["upscale", str(tmp_path / "*.webp"), "-o", str(tmp_path / "out"), *tiny_args])
    with pytest.raises(SystemExit, match="lossless"):
        main(["upscale", str(a), str(b), "-o", str(tmp_path / "out"), "--name", "{stem}.jpg", *tiny_args])
    assert not (tmp_path / "out").exists()  # every refusal came before anything was made


class DiskFull(OSError):
    pass


def test_a_crash_mid_write_leaves_no_partial_file(tmp_path, monkeypatch, capsys, tiny_args):
    """The writer dies half-way (full disk, then Ctrl-C): nothing under the final name, no temporary."""
    src = tmp_path / "in"
    png(src / "a.png", (8, 8))
    png(src / "b.png", (8, 8), seed=1)
    out = tmp_path / "out"
    real_save = Image.Image.save

    def half_then(error):
        def save(self, fp, *args, **kwargs):
            real_save(self, fp, *args, **kwargs)
            data = open(fp, "rb").read()
            open(fp, "wb").write(data[: len(data) // 2])
            raise error
        return save

    monkeypatch.setattr(Image.Image, "save", half_then(DiskFull(28, "No space left on device")))
    assert main(["upscale", str(src), "-o", str(out), *tiny_args]) == 1
    assert all_files(out) == []
    assert "failed a.png: [Errno 28] No space left on device" in capsys.readouterr().err

    monkeypatch.setattr(Image.Image, "save", half_then(KeyboardInterrupt()))
    assert main(["upscale", str(src), "-o", str(out), *tiny_args]) == 130
    assert all_files(out) == []
    assert "interrupted: 0 images upscaled" in capsys.readouterr().err

    monkeypatch.setattr(Image.Image, "save", real_save)
    assert main(["upscale", str(src), "-o", str(out), *tiny_args]) == 0
    assert all_files(out) == ["a_x4.png", "b_x4.png"]


def test_atomic_write_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old complete file")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise DiskFull(28, "No space left on device")

    with pytest.raises(DiskFull):
        atomic.atomic_write(target, fail)
    assert target.read_bytes() == b"old complete file" and all_files(tmp_path) == ["model.safetensors"]
    # a temporary left by a killed run is found by its target's name and removed, others are not
    for name in (".a_x4.png.k3j_x9.partial", ".a_x4.png.b_x4.png.zz.partial", "keep.png"):
        (tmp_path / name).write_bytes(b"x")
    assert atomic.remove_stale_temps(tmp_path, ["a_x4.png"]) == 1
    assert ".a_x4.png.k3j_x9.partial" not in all_files(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_ordinary_permissions(tmp_path, umask, tiny_args):
    """convert used to leave its .safetensors at 0600 (safetensors' writer), unreadable to a ComfyUI
    running as another user; like the images it now gets 0666 minus the umask."""
    src = write_official_pt(random_model(TINY), tmp_path / "mp_rank_00_model_states.pt")
    old = os.umask(umask)
    try:
        convert(src, tmp_path / "out.safetensors")
        assert main(["upscale", str(png(tmp_path / "a.png", (8, 8))), "-o", str(tmp_path / "a4.png"), *tiny_args]) == 0
    finally:
        os.umask(old)
    for name in ("out.safetensors", "a4.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_shards_cover_every_image_once_and_balance_pixels():
    jobs = [Job(None, f"{i:02d}.png", None, 0, pixels=p) for i, p in enumerate([900, 100, 400, 400, 50, 50, 300, 1])]
    shares = shard(jobs, 3)
    assert sorted(j.rel for s in shares for j in s) == sorted(j.rel for j in jobs)
    loads = [sum(j.pixels for j in s) for s in shares]
    assert sorted(loads) == [601, 700, 900]  # 900 | 400+300 | 400+100+50+50+1: largest first, least loaded
    assert all([j.rel for j in s] == sorted(j.rel for j in s) for s in shares)
    assert shard(jobs, 3) == shares and sum(map(len, shard(jobs, 10))) == len(jobs)


def test_seeds_depend_on_base_and_relative_path_only(tmp_path):
    png(tmp_path / "in" / "sub" / "a.png", (4, 4))
    def describe(path):
        return {}, 16

    plan_a, _ = plan_jobs(discover([str(tmp_path / "in")], recursive=True), tmp_path / "o1", "{stem}.png", 3, describe)
    plan_b, _ = plan_jobs(discover([str(tmp_path / "in" / "*" / "*.png")]), tmp_path / "o2", "{stem}_x4.png", 3, describe)
    assert plan_a[0].rel == plan_b[0].rel == "sub/a.png" and plan_a[0].seed == plan_b[0].seed == derive_seed(3, "sub/a.png")
    assert len({derive_seed(3, "a.png"), derive_seed(4, "a.png"), derive_seed(3, "b.png")}) == 3
    assert 0 <= derive_seed(0, "x") < 2**63


def test_progress_bars_only_when_asked_or_on_a_terminal(tmp_path, capsys, tiny_args):
    src = tmp_path / "in"
    png(src / "a.png", (8, 8))
    png(src / "b.png", (40, 8), seed=1)  # 160 px wide: 2 block groups at block batch 1
    quiet = [a for a in tiny_args if a != "--no-progress"]
    assert main(["upscale", str(src), "-o", str(tmp_path / "quiet"), *quiet]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "2 images upscaled" in err  # stderr is not a terminal here: no bars
    assert main(["upscale", str(src), "-o", str(tmp_path / "shown"), "--progress", "--block-batch", "1", *quiet]) == 0
    err = capsys.readouterr().err
    assert "images: 100%|" in err and "2/2" in err  # the run's bar: images done / total
    assert "b.png: 100%|" in err and "evaluation 1/1" in err and "2/2 [" in err  # per image: groups, evaluations
