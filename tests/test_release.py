"""A release that cannot ship broken: publish.yml tests before it publishes and publishes only a dated
CHANGELOG version; the registry package leaves out what users never run; one dependency list; the model
entry names the file `download` fetches; open_clip within the versions it is tested with."""
import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from check_release import release_problem  # noqa: E402

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_publishing_waits_for_the_tests_and_a_dated_changelog():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "publish.yml").read_text(encoding="utf-8"))
    jobs = workflow["jobs"]
    assert jobs["publish"]["needs"] == "test"
    commands = " ".join(step.get("run", "") for step in jobs["test"]["steps"])
    assert "scripts/check_release.py" in commands and "scripts/test.sh" in commands


def test_a_version_is_published_only_with_a_dated_changelog_entry(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    version = PYPROJECT["project"]["version"]
    for text, problem in ((f"# Changelog\n\n## {version} (not yet released)\n- x\n", "not yet released"),
                          ("# Changelog\n\n## 0.0.1 (2026-01-01)\n", "no '## "),
                          (f"# Changelog\n\n## {version} (2026-12-06)\n- x\n", None)):
        (tmp_path / "CHANGELOG.md").write_text(text, encoding="utf-8")
        found = release_problem(tmp_path)
        assert (found is None) if problem is None else (problem in found), (text, found)


def comfyignore_patterns():
    lines = (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def package_files():
    """What `comfy node pack` archives: the tracked files not matched by .comfyignore, plus [tool.comfy] includes."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    patterns = comfyignore_patterns()

    def ignored(path):
        return any(path.startswith(p) if p.endswith("/") else fnmatch.fnmatch(path, p) for p in patterns)

    includes = tuple(PYPROJECT["tool"]["comfy"]["includes"])
    return [p for p in tracked if not ignored(p) or p.startswith(includes)]


def test_the_registry_package_carries_the_nodes_and_not_the_test_fixtures():
    files = package_files()
    assert not [p for p in files if p.startswith(("tests/", "benchmarks/", "docs/images/"))]
    for needed in ("__init__.py", "requirements.txt", "pyproject.toml", "LICENSE", "web/inf_dit.js", "web/grid.js",
                   "infdit_core/weights/infdit-demo.safetensors", "locales/zh/nodeDefs.json"):
        assert needed in files, needed
    assert {p.split("/")[0] for p in files} >= {"nodes", "infdit_core", "workflows", "subgraphs", "web"}
    size = sum((ROOT / p).stat().st_size for p in files)
    assert size < 11 * 2**20, size  # 18.9 MB before .comfyignore, 10.3 MB after: the demo model is most of it


def requirement_names(lines):
    return sorted(re.split(r"[#]", line)[0].strip().replace(" ", "") for line in lines
                  if line.strip() and not line.strip().startswith("#"))


def test_one_dependency_list():
    listed = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert requirement_names(listed) == requirement_names(PYPROJECT["project"]["dependencies"])
    assert not any(re.match(r"torch\b", line) for line in listed)  # ComfyUI owns torch


def test_open_clip_is_within_the_tested_versions():
    import open_clip
    from open_clip.model import _build_vision_tower  # noqa: F401  (the private builder clip.py uses)

    spec = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("open_clip_torch"))
    upper = re.search(r"<(\d+)", spec)
    assert upper, "open_clip_torch needs an upper bound: clip.py uses a private builder"
    assert int(open_clip.__version__.split(".")[0]) < int(upper.group(1))


def test_the_model_entry_names_the_file_download_fetches():
    """ComfyUI-Manager puts the official checkpoint where `download` fetches it to, so `download` (and the
    loader, which takes the .pt too) finds it there: models/inf_dit/inf-dit.pt, then converted."""
    from infdit_core.checkpoints import download

    (entry,) = PYPROJECT["tool"]["comfy"]["Models"]
    assert entry["model_url"] == download.OFFICIAL_URL
    assert entry["location"] == f"/inf_dit/{download.FETCHED_NAME}"
