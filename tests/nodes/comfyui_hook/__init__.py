"""Test-only custom node that tests/nodes/test_comfyui_server.py links into the ComfyUI it starts: the pack's
download then takes the test's tiny model for "the released weights" (the real ones are 2 GB), from the
config JSON in INFDIT_TEST_EXPECTED_CONFIG. Everything else of the download runs as shipped.

ComfyUI loads custom nodes in no fixed order, so the pack's download module is patched where it is already
loaded, or else as it is imported."""
import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "infdit_core.checkpoints.download"
NODE_CLASS_MAPPINGS = {}


def _patch(module):
    text = os.environ.get("INFDIT_TEST_EXPECTED_CONFIG")
    if text:
        module.RELEASED = type(module.RELEASED).from_json(text)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if not name.endswith(TARGET):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _patch(module)

            spec.loader.exec_module = exec_module
        return spec


loaded = [m for name, m in list(sys.modules.items()) if name.endswith(TARGET)]
for module in loaded:
    _patch(module)
if not loaded:
    sys.meta_path.insert(0, _PatchOnImport())
