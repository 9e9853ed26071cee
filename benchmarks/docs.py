"""Every figure of the docs from its source, in one place: the tables and counts in README.md and docs/*.md
that come from a result file in benchmarks/results/, from the memory estimator or from another table sit
between markers, and this script writes them:

    <!-- generated: NAME (python benchmarks/docs.py --write) -->
    ...
    <!-- end: NAME -->

    python benchmarks/docs.py            # list the blocks and whether each matches its source
    python benchmarks/docs.py --write    # rewrite every block from its source

tests/test_docs_figures.py fails when a block differs from what its source gives today. A measured table
changes only when its result file does (rerun the benchmark named in the block's name); an estimator table
follows the code.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

GIB = 1024**3
BEGIN = "<!-- generated: {name} (python benchmarks/docs.py --write) -->"
END = "<!-- end: {name} -->"


def result(name: str) -> str:
    return (RESULTS / name).read_text(encoding="utf-8")


def markdown_tables(text: str) -> list[list[str]]:
    """The markdown tables of a text, each as its lines."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def table_of(name: str, index: int = 0, edit: Callable[[str], str] = lambda line: line) -> str:
    """The `index`-th markdown table a benchmark wrote into its result file, line by line through `edit`."""
    return "\n".join(edit(line) for line in markdown_tables(result(name))[index])


# ------------------------------------------------------------------------------------ measured (result files)

def memory_table(series: str, name: str = "memory_fp32.txt") -> str:
    """benchmarks/memory.py's series: measured and estimated MiB for the whole image and each block batch."""
    rows: dict[str, dict[str, tuple[str, str]]] = {}
    for m in re.finditer(r"^(\w+)\s+(\d+x\d+)\s+(whole|n=\d+)\s+([\d.]+)\s+([\d.]+)", result(name), re.M):
        if m.group(1) == series:
            rows.setdefault(m.group(2), {})[m.group(3)] = (m.group(4), m.group(5))
    modes = list(next(iter(rows.values())))
    first = "H x W" if series == "width" else "size"
    header = " | ".join(("whole image" if mode == "whole" else f"scheduler {mode}") + " | est." for mode in modes)
    lines = [f"| {first} | {header} |", "| --- |" + " ---: |" * (2 * len(modes))]
    for size, found in rows.items():
        cells = [v for mode in modes for v in found[mode]]
        lines.append(f"| {size.replace('x', ' x ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quoted(name: str, start: str, stop: str | None = None) -> str:
    """Lines of a result file as the benchmark printed them, from the one starting with `start` up to a blank line
    (or the one starting with `stop`), as an indented block."""
    lines = result(name).splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(start))
    picked = []
    for line in lines[first:]:
        if (not line.strip() and picked) or (stop and line.strip().startswith(stop) and picked):
            break
        picked.append(line)
    return "\n".join("    " + line.rstrip() for line in picked)


def largest_estimator_error(name: str) -> str:
    """The estimator's largest relative error over a memory result file's points, in percent."""
    text = result(name)
    if m := re.search(r"all points max ([\d.]+)%", text):
        return m.group(1)
    pairs = re.findall(r"^\s*\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", text, re.M)
    worst = max(abs(float(e) / float(m) - 1) for row in pairs for m, e in (row[:2], row[2:]))
    return f"{100 * worst:.1f}"


def speed_table() -> str:
    """benchmarks/speed.py at 512 and 1024 px: best seconds per block batch; the best fixed one in bold."""
    lines = ["| output | dtype | whole image s | n=1 (default) s | n=2 s | n=4 s | n=8 s | n=16 s | n=64 s | default vs best fixed |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("speed_512_defaults.txt", "speed_1024_defaults.txt"):
        text = result(name)
        side, blocks = re.search(r"output (\d+)x\d+ = \S+ blocks \((\d+)\)", text).groups()
        for dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
            runs = {m.group(1): (m.group(2), m.group(3)) for m in
                    re.finditer(rf"^{dtype}\s+(whole|n=\d+)\s+\d+\s+([\d.]+).*?([\d.]+)( \(default\))?$", text, re.M)}
            best = min((v for k, v in runs.items() if k != "whole"), key=lambda v: float(v[0]))[0]
            cell = lambda key: "" if key not in runs else (f"**{runs[key][0]}**" if runs[key][0] == best else runs[key][0])  # noqa: E731
            default_ratio = re.search(rf"^{dtype}\s+n=1\s.*?([\d.]+) \(default\)$", text, re.M).group(1)
            label = f"{side} x {side} ({blocks} blocks)" if short == "fp32" else f"{side} x {side}"
            lines.append(f"| {label} | {short} | " + " | ".join(cell(k) for k in ("whole", "n=1", "n=2", "n=4", "n=8", "n=16", "n=64"))
                         + f" | {default_ratio} |")
    return "\n".join(lines)


def speed_summary() -> str:
    """The whole image against the default block batch, as each speed run printed it."""
    parts = []
    for name in ("speed_512_defaults.txt", "speed_1024_defaults.txt"):
        text = result(name)
        side = re.search(r"output (\d+)x", text).group(1)
        ratios = dict(re.findall(r"^(float32|bfloat16): default .*whole image / default = ([\d.]+)", text, re.M))
        parts.append(f"{ratios['float32']} (fp32) and {ratios['bfloat16']} (bf16) at {side} px")
    return "The whole-image forward takes " + "; ".join(parts) + " times the default's time."


def any_size_measured() -> str:
    lines = ["| output | device measured | device estimate | host measured | host estimate |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for m in re.finditer(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", result("any_size.txt"), re.M):
        side = m.group(1)
        lines.append(f"| {side} x {side} | {m.group(2)} | {m.group(3)} | {m.group(4)} | {m.group(5)} |")
    return "\n".join(lines)


def demo_evaluation() -> str:
    return table_of("evaluate_demo_bf16.txt", 0, lambda line: line.replace("| model |", "| demo model |"))


def demo_gain_per_photo() -> str:
    """What the demo model's table says against bicubic, computed from the same result file."""
    rows: dict[str, dict[str, list[float]]] = {}
    for line in markdown_tables(result("evaluate_demo_bf16.txt"))[0][2:]:
        image, method, *values = [c.strip() for c in line.strip("|").split("|")]
        rows.setdefault(image.strip("*"), {})[method] = [float(v) for v in values]
    gain = {image: m["model"][0] - m["bicubic"][0] for image, m in rows.items()}
    photos = ", ".join(f"{image} {g:+.2f} dB" for image, g in gain.items() if image != "mean")
    above = "above" if all(g > 0 for g in gain.values()) else "not always above"
    mean = rows["mean"]
    return (f"the demo model is {above} bicubic PSNR on every held-out photo ({photos}; mean {gain['mean']:+.2f} dB), "
            f"with {mean['model'][2] / mean['bicubic'][2]:.1f}x bicubic's fine-detail energy; SSIM is "
            f"{mean['bicubic'][1] - mean['model'][1]:.3f} lower on average")


def solver_table() -> str:
    return table_of("solvers_quick.txt", 0, lambda line: line.replace("| at least the bar |", "| at least the release's |"))


def roofline_table() -> str:
    """benchmarks/gpu_model.py's modelled seconds per GPU (a model, not a measurement), from its result file."""
    tables = markdown_tables(result("gpu_model.txt"))
    return "\n".join(tables[1])


def first_run_table() -> str:
    """benchmarks/gpu_model.py's modelled minutes of a 1024 -> 4096 run with nothing set, and with the release's
    sampler (a model, not a measurement), from its result file."""
    return "\n".join(markdown_tables(result("gpu_model.txt"))[-1])


def resume_block_sentence() -> str:
    """benchmarks/resume.py's measured block and evaluation of the released model and the state's share of it."""
    lines = result("resume.txt").splitlines()
    block = next(line for line in lines if line.startswith("released model"))
    seconds = block.split("one steady-state block ")[1].split(" s")[0]
    minutes = block.split("= 1024 blocks = ")[1].split(" min")[0]
    row = next(line for line in markdown_tables(result("resume.txt"))[0] if line.startswith("| ipndm (default) | 4096"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    return (f"Here one block of the released model took {seconds} s, one evaluation at 4096 px {minutes} min, and "
            f"the default solver's state ({cells[2]} GB) {cells[3]} s to write: {cells[-1]} of the run's time")


def h100_model_seconds() -> str:
    line = next(line for line in markdown_tables(result("gpu_model.txt"))[1] if line.startswith("| H100"))
    return line.strip("|").split("|")[-2].strip()


# ------------------------------------------------------------------------------------ the estimator (code)

def released_table() -> str:
    """The released config in bf16 on a 24 GB GPU (the estimator): n=1 on the device and offloaded, auto, and
    the whole image as one group."""
    import torch

    from infdit_core import InfDiTConfig
    from infdit_core.planning.memory import choose_block_batch, estimate_peak_bytes
    from infdit_core.planning.options import BlockOptions

    cfg, bf16, budget = InfDiTConfig.released(), torch.bfloat16, int(24e9 * 0.9)
    lines = ["| size | n=1, frontier on GPU | n=1, frontier offloaded | auto n (24 GB GPU), on GPU | "
             "auto n (24 GB GPU), offloaded | whole image (one group) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in (1024, 2048, 4096, 8192):
        def est(n, offload=False):
            return estimate_peak_bytes(cfg, s, s, n, bf16, BlockOptions(offload_frontier=offload), device="cuda")

        cells = [f"{est(1).total / GIB:.1f} (frontier {est(1).frontier / GIB:.1f})", f"{est(1, True).total / GIB:.1f}"]
        for offload in (False, True):
            n = choose_block_batch(cfg, s, s, budget, bf16, BlockOptions(offload_frontier=offload), device="cuda")
            cells.append(f"n={n}: {est(n, offload).total / GIB:.1f}")
        cells.append(f"{est((s // cfg.block_size) ** 2).total / GIB:.1f}")
        lines.append(f"| {s} x {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def any_size_table() -> str:
    """Device / host GiB of the released config in bf16 by the planner with a 12 GiB device budget."""
    import torch

    from infdit_core import InfDiTConfig
    from infdit_core.planning.options import BlockOptions
    from infdit_core.planning.plan import plan_output

    cfg, budget = InfDiTConfig.released(), 12 * GIB
    frontiers = ({}, {"offload_frontier": True}, {"float8_frontier": True},
                 {"float8_frontier": True, "offload_frontier": True})
    lines = ["| output | block batch | frontier on device | offloaded | float8, on device | float8, offloaded |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for h, w in ((4096, 4096), (8192, 8192), (16384, 16384), (4096, 16384)):
        for block_batch in (1, "auto"):
            cells = []
            for kw in frontiers:
                p = plan_output(cfg, h, w, BlockOptions(block_batch, budget, **kw), torch.bfloat16, device="cuda")
                e = p.estimate
                figure = f"{e.total / GIB:.2f} / {e.host / GIB:.2f}".replace(" / 0.00", " / 0")
                if block_batch == "auto" and e.total > budget:
                    figure = f"none fits (n=1: {e.total / GIB:.2f})"
                elif block_batch == "auto":
                    figure = f"n={p.block_batch}: {figure}"
                cells.append(figure)
            lines.append(f"| {w} x {h} | {block_batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def poster_estimate() -> str:
    """The released model's peak for the 8192 px poster workflow's settings (1024 px x8, its Block Size Control)."""
    import json

    import torch

    from infdit_core import InfDiTConfig
    from infdit_core.planning.options import BlockOptions
    from infdit_core.planning.plan import plan_run

    workflow = json.loads((ROOT / "workflows" / "sdxl_poster_x8_24gb.json").read_text(encoding="utf-8"))
    block_batch, budget_gb = next(n["widgets_values"][:2] for n in workflow["nodes"] if n["type"] == "InfDiTBlockSize")
    blocks = BlockOptions("auto" if block_batch == 0 else block_batch, int(budget_gb * GIB))
    plan = plan_run(InfDiTConfig.released(), 1024, 1024, {"scale": 8}, blocks, torch.bfloat16, device="cuda")
    peak = max(plan.passes, key=lambda p: p.estimate.total)
    return f"{peak.estimate.total / GIB:.2f} GiB at block batch {peak.block_batch} in the x{peak.scale} pass"


def devices_table() -> str:
    import devices

    return devices.table()


# ------------------------------------------------------------------------------------ counts of other tables

def comfyui_sampler_count() -> str:
    """How many of ComfyUI's samplers run on Inf-DiT, counted in docs/comfyui.md's sampler table."""
    doc = (ROOT / "docs" / "comfyui.md").read_text(encoding="utf-8")
    table = next(t for t in markdown_tables(doc) if t[0].startswith("| sampler | on Inf-DiT |"))
    rows = table[2:]
    refused = [line for line in rows if "| no:" in line]
    return f"{len(rows) - len(refused)} of ComfyUI 0.8.0's {len(rows)} samplers run on Inf-DiT, the {len(refused)} CFG++ ones cannot"


@dataclass(frozen=True)
class Block:
    doc: str  # relative to the repository root
    name: str
    make: Callable[[], str]
    inline: bool = False  # a phrase inside a sentence, not a table


BLOCKS = (
    Block("docs/performance.md", "memory_fp32 width", lambda: memory_table("width")),
    Block("docs/performance.md", "memory_fp32 square", lambda: memory_table("square")),
    Block("docs/performance.md", "memory_fp32 growth", lambda: quoted("memory_fp32.txt", "Growth exponents")),
    Block("docs/performance.md", "memory_fp32 error", lambda: largest_estimator_error("memory_fp32.txt"), inline=True),
    Block("docs/performance.md", "memory_bf16 square", lambda: memory_table("square", "memory_bf16_square.txt")),
    Block("docs/performance.md", "speed", speed_table),
    Block("docs/performance.md", "speed memory", lambda: quoted("speed_1024_defaults.txt", "peak memory of one evaluation")),
    Block("docs/performance.md", "speed summary", speed_summary),
    Block("docs/performance.md", "released estimator", released_table),
    Block("docs/performance.md", "any-size estimator", any_size_table),
    Block("docs/performance.md", "released measured", lambda: quoted("released_bf16.txt", "Measured, released")),
    Block("docs/performance.md", "any_size measured", any_size_measured),
    Block("docs/performance.md", "any_size error", lambda: largest_estimator_error("any_size.txt"), inline=True),
    Block("docs/performance.md", "batch", lambda: table_of("batch_8x64_2cores.txt")),
    Block("docs/performance.md", "utilization", lambda: table_of("utilization_512_defaults.txt")),
    Block("docs/performance.md", "utilization run1", lambda: table_of("utilization_512_defaults_run1.txt")),
    Block("docs/performance.md", "utilization compile", lambda: table_of("utilization_512_compile.txt")),
    Block("docs/performance.md", "memory_fp32_quick error", lambda: largest_estimator_error("memory_fp32_quick.txt"), inline=True),
    Block("docs/performance.md", "gpu_model ops", lambda: table_of("gpu_model.txt", 0)),
    Block("docs/performance.md", "gpu_model roofline", roofline_table),
    Block("docs/performance.md", "devices", devices_table),
    Block("docs/samplers.md", "solvers", solver_table),
    Block("docs/samplers.md", "solvers released widths",
          lambda: table_of("solvers_released_widths.txt", 0, lambda line: line.replace("| at least the bar |", "| at least the release's |"))),
    Block("docs/fidelity.md", "evaluate_demo", demo_evaluation),
    Block("docs/fidelity.md", "evaluate_demo gain", demo_gain_per_photo, inline=True),
    Block("README.md", "gpu_model H100 seconds", h100_model_seconds, inline=True),
    Block("docs/resume.md", "resume cost", lambda: table_of("resume.txt", 0)),
    Block("docs/resume.md", "resume block", resume_block_sentence, inline=True),
    Block("README.md", "gpu_model first run", first_run_table),
    Block("web/docs/InfDiTLoader.md", "gpu_model first run", first_run_table),
    Block("README.md", "comfyui sampler count", comfyui_sampler_count, inline=True),
    Block("docs/comfyui.md", "comfyui sampler count", comfyui_sampler_count, inline=True),
    Block("docs/comfyui.md", "poster estimate", poster_estimate, inline=True),
)


def marked(block: Block, text: str) -> str:
    sep = "" if block.inline else "\n"
    return f"{BEGIN.format(name=block.name)}{sep}{text}{sep}{END.format(name=block.name)}"


def current(block: Block) -> str | None:
    """What the doc holds for the block now, None when its markers are missing."""
    doc = (ROOT / block.doc).read_text(encoding="utf-8")
    begin, end = BEGIN.format(name=block.name), END.format(name=block.name)
    if begin not in doc or end not in doc:
        return None
    inside = doc.split(begin, 1)[1].split(end, 1)[0]
    return inside if block.inline else inside.strip("\n")


def write(block: Block) -> None:
    path = ROOT / block.doc
    doc = path.read_text(encoding="utf-8")
    begin, end = BEGIN.format(name=block.name), END.format(name=block.name)
    if begin not in doc or end not in doc:
        raise SystemExit(f"{block.doc} has no markers for {block.name!r}: add {begin} ... {end}")
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + marked(block, block.make()) + tail, encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite every block from its source")
    args = p.parse_args(argv)
    stale = 0
    for block in BLOCKS:
        if args.write:
            write(block)
        same = current(block) == block.make()
        stale += not same
        print(f"{'ok   ' if same else 'STALE'} {block.doc}: {block.name}")
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
