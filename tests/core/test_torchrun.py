"""`torchrun --standalone --nproc-per-node 2` on CPU (gloo): each image written by exactly one rank,
byte-identical to a one-process run, and a run whose rank is killed resumes under --max-restarts."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from infdit_core.checkpoints.loader import DEMO_MODEL_PATH

# torchrun is torch's own launcher; `python -m torch.distributed.run` is the same program and needs no
# venv bin/ on PATH.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
IMAGES = {"a.png": (12, 8), "b.png": (16, 16), "c.png": (20, 10), "sub/d.png": (8, 24), "sub/e.png": (10, 10),
          "sub/deeper/f.png": (14, 6)}
OUTPUTS = sorted(re.sub(r"\.png$", "_x4.png", name) for name in IMAGES)


def env():
    # One thread per process (what torchrun itself sets), also for the one-process reference.
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if sys.platform.startswith("linux"):  # one machine: loopback, whatever the container's hostname resolves to
        e.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return e


def upscale_args(src, out, *extra):
    return ["upscale", str(src), "-r", "-o", str(out), "--model", str(DEMO_MODEL_PATH), "--seed", "5",
            "--no-progress", *extra]


def run(cmd, **kw):
    result = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600, **kw)
    return result


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Six images and their outputs from one plain process."""
    root = tmp_path_factory.mktemp("torchrun")
    rng = np.random.default_rng(1)
    for name, (w, h) in IMAGES.items():
        (root / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "in" / name)
    result = run([sys.executable, "-m", "infdit_core", *upscale_args(root / "in", root / "ref")])
    assert result.returncode == 0, result.stderr
    assert files(root / "ref") == OUTPUTS
    return root


def assert_same_as_reference(root, out):
    assert files(out) == OUTPUTS  # no temporaries left either
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (root / "ref" / name).read_bytes(), name


def test_two_ranks_write_each_image_once_and_match_one_process(reference):
    out, report = reference / "out2", reference / "report2.json"
    result = run([*TORCHRUN, "-m", "infdit_core", *upscale_args(reference / "in", out, "--report", str(report))])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_as_reference(reference, out)
    ranks = json.loads(report.read_text(encoding="utf-8"))["ranks"]
    per_rank = [set(r["images"]) for r in ranks]
    assert [r["rank"] for r in ranks] == [0, 1] and all(per_rank)  # both ranks worked
    assert per_rank[0].isdisjoint(per_rank[1]) and per_rank[0] | per_rank[1] == set(IMAGES)
    # each rank's own log line per image agrees: every output written by exactly one rank
    wrote = re.findall(r"\[rank (\d)/2\] wrote (\S+)", result.stderr)
    assert sorted(os.path.relpath(path, out) for _, path in wrote) == OUTPUTS
    for rank, path in wrote:
        rel = os.path.relpath(path, out).replace("_x4.png", ".png")
        assert rel in per_rank[int(rank)]
    assert "6 images upscaled" in result.stderr and "on 2 ranks" in result.stderr


def test_a_killed_rank_resumes_under_max_restarts(reference):
    out, report = reference / "out_restart", reference / "report_restart.json"
    script = ROOT / "tests" / "core" / "torchrun_crash_once.py"
    result = run([*TORCHRUN, "--max-restarts", "1", str(script),
                  *upscale_args(reference / "in", out, "--report", str(report))])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_as_reference(reference, out)  # the half-written temporary of the killed rank is gone too
    summary = json.loads(report.read_text(encoding="utf-8"))  # of the second attempt
    assert len(summary["skipped"]) >= 1 and len(summary["skipped"]) + summary["images"] == len(IMAGES)
