#!/usr/bin/env bash
# Shared by try.sh and test.sh: a virtual environment in .venv with torch and the pack's requirements.
# torch is pinned to the build on this project's machines (an unpinned torch pulls a multi-GB download);
# inside ComfyUI nothing here is needed: ComfyUI brings torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
python -m pip install --quiet -r requirements.txt
