#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite (what CI runs): set up, add the test tools, test,
# then run the pack inside real ComfyUI servers (scripts/comfyui_tests.sh; SKIP_COMFYUI=1 leaves that out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pip install --quiet pytest scikit-image pyyaml  # test tools; scikit-image also holds the training photos
python -m pytest tests -q
if [ "${SKIP_COMFYUI:-0}" != "1" ]; then
  bash scripts/comfyui_tests.sh
fi
