"""Plots for docs/performance.md, drawn from the benchmarks' own result files (nothing is re-measured):
peak memory against output size (the whole image at once, as the reference's `full` mode, against block by
block) from results/memory_fp32.txt, and time per evaluation against block batch from
results/speed_512_defaults.txt. Needs matplotlib (a development tool, not a dependency of the pack).

Run: python benchmarks/plots.py   ->  docs/images/memory_vs_size.png, docs/images/time_vs_block_batch.png
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "images"
LABELS = {"whole": "whole image at once (the reference's full mode)", "n=1": "block by block, 1 a group",
          "n=4": "block by block, 4 a group"}


def memory_plot() -> Path:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (RESULTS / "memory_fp32.txt").read_text(encoding="utf-8").splitlines():
        m = re.match(r"width\s+(\d+)x(\d+)\s+(\S+)\s+([\d.]+)", line)
        if m:
            series.setdefault(m.group(3), []).append((int(m.group(2)), float(m.group(4))))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for mode, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=LABELS.get(mode, mode))
    ax.set(xscale="log", yscale="log", xlabel="output width in px (height 256 px)",
           ylabel="peak memory of one evaluation, MiB", title="Memory grows with the short side, not the area")
    ticks = [256, 512, 1024, 2048, 4096]
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    out = IMAGES / "memory_vs_size.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def speed_plot() -> Path:
    rows: dict[str, list[tuple[int, float]]] = {}
    for line in (RESULTS / "speed_512_defaults.txt").read_text(encoding="utf-8").splitlines():
        m = re.match(r"(float32|bfloat16)\s+(whole|n=\d+)\s+\d+\s+([\d.]+)", line)
        if m:
            n = 16 if m.group(2) == "whole" else int(m.group(2)[2:])  # 4 x 4 blocks: whole = 16 a group
            rows.setdefault(m.group(1), []).append((n, float(m.group(3))))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for dtype, points in rows.items():
        best = {}
        for n, s in points:
            best[n] = min(s, best.get(n, s))
        xs = sorted(best)
        ax.plot(xs, [best[x] for x in xs], marker="o", label=dtype)
    ax.set(xscale="log", xlabel="block batch (blocks a group; 16 = the whole 512 px image)",
           ylabel="seconds per evaluation (best of 3)", title="Time per evaluation against block batch (CPU)")
    ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
    ax.grid(True, alpha=0.3)
    ax.legend()
    out = IMAGES / "time_vs_block_batch.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


if __name__ == "__main__":
    for path in (memory_plot(), speed_plot()):
        print(f"wrote {path.relative_to(ROOT)}")
