#!/usr/bin/env bash
# One command from a fresh clone to a first upscale: set up, then x4 the bundled sample photo with the
# bundled demo model (a few seconds on a 2-core CPU) into chelsea_x4.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m infdit_core upscale docs/images/chelsea_lr.png -o chelsea_x4.png
