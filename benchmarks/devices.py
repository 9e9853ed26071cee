"""What each kind of device gets, from the code: the per-device records (infdit_core/hardware/devices.py), the
precision rule, the attention path the estimate counts, and the planner's choice for 1024 -> 4096 px at
the released config on a typical card of each kind. Devices this machine lacks are answered by the
emulation of benchmarks/fake_devices.py (the same as the CI dry runs), so the table needs no GPU.

    python benchmarks/devices.py            # print the table

benchmarks/docs.py puts it into docs/performance.md ("Devices"); tests/test_docs_figures.py fails when the
table there differs from what this prints.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fake_cuda import fake_cuda  # noqa: E402
from fake_devices import fake_device, fake_rocm  # noqa: E402
from infdit_core import InfDiTConfig  # noqa: E402
from infdit_core.hardware import devices  # noqa: E402
from infdit_core.hardware.precision import auto_dtype  # noqa: E402
from infdit_core.planning.memory import attention_path, default_budget  # noqa: E402
from infdit_core.planning.options import BlockOptions  # noqa: E402
from infdit_core.planning.plan import plan_run  # noqa: E402

GIB = 1024**3
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

# (row name, device string, how to stand it up here, the card the plan is made for, its memory in bytes)
DEVICES = (
    ("NVIDIA (CUDA), sm80+", "cuda", lambda: fake_cuda((8, 9), total_memory=24 * GIB), "RTX 4090, 24 GiB", 24 * GIB),
    ("NVIDIA (CUDA), before sm80", "cuda", lambda: fake_cuda((7, 5), total_memory=16 * GIB), "T4, 16 GiB", 16 * GIB),
    ("AMD (ROCm), CDNA2/3, RDNA3+", "cuda", lambda: fake_rocm("gfx1100", 24 * GIB), "RX 7900 XTX, 24 GiB", 24 * GIB),
    ("AMD (ROCm), RDNA2 and older", "cuda", lambda: fake_rocm("gfx1030", 16 * GIB), "RX 6800, 16 GiB", 16 * GIB),
    ("Intel Arc (XPU)", "xpu", lambda: fake_device("xpu-no-fp64", memory=16 * GIB), "Arc A770, 16 GiB", 16 * GIB),
    ("Apple silicon (MPS)", "mps", lambda: fake_device("mps", memory=32 * GIB), "32 GB Mac", 32 * GIB),
    ("CPU", "cpu", contextlib.nullcontext, "-", None),
)


def row(name, device, context, card, memory) -> list[str]:
    with context():
        kind = devices.traits(device)
        dtype = auto_dtype(device)
        path = attention_path(device, dtype)
        cap = f"{kind.block_batch_cap} ({kind.offloaded_block_batch_cap} offloaded)"
        copies = "pinned, non-blocking, side stream" if kind.pinned_memory else "blocking (no pinned memory)"
        if kind.unified_memory and device != "cpu":
            copies += "; device and host are one budget"
        if memory is None:
            plan_text = "-"
        else:
            budget = default_budget(device, devices.free_memory(device))
            plan = plan_run(InfDiTConfig.released(), 1024, 1024, {"scale": 4}, BlockOptions(memory_budget=budget),
                            dtype, device=device)
            plan_text = f"{card}: block batch {plan.block_batch}, {plan.peak.total / GIB:.1f} GiB"
        precision = "bf16 with AMX or AVX512-BF16, else fp32" if device == "cpu" else DTYPE_NAMES[dtype]  # per machine
        return [name, precision, path + (" (fp32 scores)" if path == "math" else ""), cap, copies,
                "yes" if kind.float8 else "refused", plan_text]


def table() -> str:
    header = ["device", "auto precision", "attention", "auto block batch cap", "offloaded frontier copies",
              "float8 frontier", "1024 -> 4096 px, auto (released model)"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in DEVICES:
            lines.append("| " + " | ".join(row(*spec)) + " |")
    return "\n".join(lines)


def main() -> int:
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
