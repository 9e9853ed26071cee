"""Runs the JavaScript tests of web/ (node's test runner) from pytest, so one command covers both."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js is not installed")
def test_web_logic_passes_node_test():
    result = subprocess.run(["node", "--test", "tests/web"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_extension_imports_only_its_logic_and_comfyui_scripts():
    text = (REPO / "web" / "inf_dit.js").read_text(encoding="utf-8")
    specifiers = set(re.findall(r'from\s+"([^"]+)"', text)) | set(re.findall(r'import\("([^"]+)"\)', text))
    assert specifiers == {"./grid.js", "../../scripts/app.js", "../../scripts/api.js"}
    # what the extension does is tested by running it: tests/web/extension.test.mjs
