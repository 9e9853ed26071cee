"""Inf-DiT node pack for ComfyUI (custom_nodes/<this folder>). Registers the nodes through ComfyUI's V3
API (`comfy_entrypoint`) and serves web/ to the frontend. No NODE_CLASS_MAPPINGS on purpose: ComfyUI
ignores comfy_entrypoint when a pack exports both."""
from .nodes import SPECS, comfy_adapter
from .nodes.block_size import estimate_query
from .nodes.sampling import evaluations_query

WEB_DIRECTORY = "./web"

comfy_adapter.register_model_folder()
comfy_adapter.add_json_route("/inf_dit/estimate", estimate_query)
comfy_adapter.add_json_route("/inf_dit/evaluations", evaluations_query)


async def comfy_entrypoint():
    return comfy_adapter.extension(SPECS)


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
