"""Refuse to publish a version the CHANGELOG does not describe as released: pyproject.toml's version must have
a "## <version>" heading in CHANGELOG.md that is not marked "not yet released". Run by publish.yml before
publishing; exits 1 with the reason otherwise.

    python scripts/check_release.py [--root DIR]
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def release_problem(root: Path) -> str | None:
    version = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    changelog = (root / "CHANGELOG.md").read_text(encoding="utf-8")
    heading = re.search(rf"^## {re.escape(version)}\b(.*)$", changelog, re.M)
    if heading is None:
        return f"CHANGELOG.md has no '## {version}' section: describe the release before publishing it"
    if re.search(r"not yet released|unreleased", heading.group(1), re.I):
        return f"CHANGELOG.md marks {version} as not yet released: date its heading before publishing"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    problem = release_problem(p.parse_args(argv).root)
    if problem:
        print(f"not publishing: {problem}", file=sys.stderr)
        return 1
    print("the version has a released CHANGELOG entry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
