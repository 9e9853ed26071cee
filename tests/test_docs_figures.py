"""Every figure of the docs from its source (benchmarks/docs.py): each generated block in README.md and
docs/*.md is what its result file, the estimator or the table it counts gives today, and the claims the
docs make of the estimator hold."""
import dataclasses
import re
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import docs  # noqa: E402


@pytest.mark.parametrize("block", docs.BLOCKS, ids=lambda b: f"{b.doc}: {b.name}")
def test_each_generated_block_is_what_its_source_gives(block):
    assert docs.current(block) == block.make(), f"stale: run python benchmarks/docs.py --write ({block.name})"


def test_a_changed_figure_fails(tmp_path, monkeypatch):
    """The issue's example: one GiB figure of a memory table changed by 1.0 is caught."""
    doc = tmp_path / "docs" / "performance.md"
    doc.parent.mkdir()
    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    block = next(b for b in docs.BLOCKS if b.name == "any-size estimator")
    figure = re.search(r"\| (\d+\.\d\d) / 0 \|", docs.current(block)).group(1)
    doc.write_text(text.replace(f"| {figure} / 0 |", f"| {float(figure) + 1:.2f} / 0 |", 1), encoding="utf-8")
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    assert docs.current(block) != block.make()


def test_every_doc_block_is_registered():
    """No block in a doc that the script does not know (it would never be checked)."""
    known = {(b.doc, b.name) for b in docs.BLOCKS}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r"<!-- generated: (.+?) \(python benchmarks/docs.py --write\) -->", text):
            assert (str(path.relative_to(ROOT)), name) in known, (path.name, name)


def test_the_devices_table_follows_the_records(monkeypatch):
    """Change a device record, and the generated table changes with it."""
    from infdit_core.hardware import devices

    before = docs.devices_table()
    monkeypatch.setitem(devices.KINDS, "mps", dataclasses.replace(devices.MPS, block_batch_cap=2))
    assert "| 2 (4 offloaded) |" in docs.devices_table() != before


def test_the_any_size_targets_the_docs_state_hold():
    """docs/performance.md, "Any size": 8192 x 8192 fits 12 GiB with the frontier on the device (block batch 1
    and auto), 16384 x 16384 fits 4 GiB with it offloaded at block batch 1."""
    from infdit_core import InfDiTConfig
    from infdit_core.planning.options import BlockOptions
    from infdit_core.planning.plan import plan_output

    gib, cfg = 1024**3, InfDiTConfig.released()
    for n in (1, "auto"):
        p = plan_output(cfg, 8192, 8192, BlockOptions(n, 12 * gib), torch.bfloat16, device="cuda")
        assert p.estimate.total <= 12 * gib
    p = plan_output(cfg, 16384, 16384, BlockOptions(1, 12 * gib, offload_frontier=True), torch.bfloat16, device="cuda")
    assert p.estimate.total <= 4 * gib
