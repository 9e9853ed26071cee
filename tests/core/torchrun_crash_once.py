"""Run `python -m infdit_core` under torchrun, but on the first attempt rank 1 dies (SIGKILL, no
cleanup possible) half-way through writing its second image: the resumed attempt must finish the job.

Usage (as torchrun's script): torchrun ... torchrun_crash_once.py upscale IN -o OUT ...
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image  # noqa: E402

from infdit_core.cli import main  # noqa: E402

if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ.get("RANK") == "1":
    real_save, saves = Image.Image.save, []

    def save_then_die(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        saves.append(fp)
        if len(saves) == 2:  # leave half a temporary file behind, as a kill -9 or a power cut would
            data = Path(fp).read_bytes()
            Path(fp).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    Image.Image.save = save_then_die

raise SystemExit(main(sys.argv[1:]))
