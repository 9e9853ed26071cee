"""ComfyUI nodes for Inf-DiT: thin adapters over infdit_core (see docs/comfyui.md)."""
from . import block_size, load, upscale

# Factories of the node descriptions, in menu order. Node ids never change (saved workflows use them).
SPECS = (load.spec, upscale.spec, block_size.spec)
