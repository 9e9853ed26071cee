"""The GPU benchmark's CPU smoke run: the same code as on a GPU, on a tiny model, writes its report."""
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_tiny_runs_every_kind_of_setting_and_writes_json_and_markdown(tmp_path):
    gpu = load_script("gpu")
    settings = "auto,1,4:offload"  # compile=True itself is tested in core/test_compile.py (compiling costs ~30 s)
    assert gpu.main(["--tiny", "--out", str(tmp_path), "--settings", settings, "--peak-repeats", "2"]) == 0
    report = json.loads((tmp_path / "gpu_cpu-tiny.json").read_text(encoding="utf-8"))
    rows = {r["setting"]: r for r in report["results"]}
    assert list(rows) == ["auto", "1", "4 offload"] and not report["skipped"]
    assert report["blocks"] == 4 and report["flops_per_evaluation"] > 0 and report["matmul_peak_flops"] > 0
    assert rows["1"]["block_batch"] == 1 and rows["1"]["groups"] == 4 and rows["4 offload"]["groups"] == 1
    assert rows["4 offload"]["offload"] and not rows["1"]["offload"]
    for r in rows.values():
        assert r["seconds_per_evaluation"] > 0 and r["tflops"] > 0 and 0 < r["share_of_peak"]
        assert r["estimate_bytes"] > 0 and r["peak_bytes"] is None  # no device memory counter on CPU
    table = (tmp_path / "gpu_cpu-tiny.md").read_text(encoding="utf-8")
    variants = report["attention_variants"]
    assert [v["variant"] for v in variants] == ["lse_merge", "concat", "cudnn"]
    assert all(v["max_difference"] < 5e-2 for v in variants)  # equal within bf16 tolerance
    # two tables: header, rule, one line per setting; header, rule, one line per attention variant
    assert table.count("\n| ") == 2 + len(rows) + 2 + len(variants)
    assert report["fused_gelu_max_difference"] == 0  # on the CPU the two ops run (the fused form is CUDA's)


def test_gpu_benchmark_stops_early_and_extrapolates(tmp_path):
    gpu = load_script("gpu")
    # 4 x 4 blocks at block batch 1: the frontier is full after 6 groups; timed: groups 2..8 of 16
    gpu.main(["--tiny", "--size", "128", "--out", str(tmp_path), "--settings", "1", "--peak-repeats", "1"])
    (row,) = json.loads((tmp_path / "gpu_cpu-tiny.json").read_text(encoding="utf-8"))["results"]
    assert row["extrapolated"] and row["timed_groups"] == 7 and row["groups"] == 16


def test_the_resume_benchmark_measures_a_state_without_the_model(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "benchmarks/resume.py", "--skip-model", "--repeats", "1"], cwd=root,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ipndm (default) | 4096")]
    assert rows and "| 0.81 |" in rows[0]  # x and 3 derivatives, float32, 4096 x 4096: 4 x 201 MB
    assert not list(root.glob("tmp*"))  # its temporary folder is gone
