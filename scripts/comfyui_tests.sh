#!/usr/bin/env bash
# The pack inside real ComfyUI servers (what CI runs after the unit tests, through scripts/test.sh): each
# ComfyUI release archive (0.8.0 and 0.3.64, from ../shared/comfyui) is extracted into a temporary folder,
# its requirements are installed beside the pinned torch (never replacing it), and
# tests/nodes/test_comfyui_server.py runs against it. A skipped test fails the run: CI must not pass by
# not looking.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
shopt -s nullglob
archives=()
for folder in "${COMFYUI_ARCHIVES:-}" ../shared/comfyui /work/shared/comfyui; do
  [ -n "$folder" ] && archives=("$folder"/ComfyUI-*.tar.gz) && [ ${#archives[@]} -gt 0 ] && break
done
if [ ${#archives[@]} -eq 0 ]; then
  echo "no ComfyUI-*.tar.gz found (set COMFYUI_ARCHIVES to their folder): the real-ComfyUI tests cannot run" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip freeze | grep -iE '^(torch|torchvision)==' > "$work/constraints.txt"  # ComfyUI's list names torch
for archive in "${archives[@]}"; do
  version=$(basename "$archive" .tar.gz)
  mkdir -p "$work/$version"
  tar -xzf "$archive" -C "$work/$version"
  comfyui="$work/$version/ComfyUI"
  grep -vE '^\s*(torch|torchvision|torchaudio)\b' "$comfyui/requirements.txt" > "$work/$version/requirements.txt"
  echo "requests" >> "$work/$version/requirements.txt"  # 0.8.0's frontend manager imports it without listing it
  python -m pip install --quiet -r "$work/$version/requirements.txt" -c "$work/constraints.txt"
  echo "== the pack in $version"
  COMFYUI_DIR="$comfyui" python -m pytest tests/nodes/test_comfyui_server.py -q -rs | tee "$work/$version/pytest.log"
  if grep -qE '[0-9]+ skipped' "$work/$version/pytest.log"; then
    echo "real-ComfyUI tests were skipped in $version: they must run in CI" >&2
    exit 1
  fi
done
