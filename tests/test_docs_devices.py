"""The devices table in docs/performance.md is what benchmarks/devices.py prints from the code today."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import devices as devices_table  # noqa: E402


def test_the_devices_table_in_the_docs_is_the_code_s():
    doc = devices_table.DOC.read_text(encoding="utf-8")
    assert devices_table.block_in(doc) == devices_table.table(), "run: python benchmarks/devices.py --write"


def test_the_table_follows_the_records(monkeypatch):
    """Change a record, and the table changes with it: the docs test would then fail until regenerated."""
    import dataclasses

    from infdit_core.hardware import devices

    before = devices_table.table()
    monkeypatch.setitem(devices.KINDS, "mps", dataclasses.replace(devices.MPS, block_batch_cap=2))
    after = devices_table.table()
    assert before != after and "| 2 (4 offloaded) |" in after
