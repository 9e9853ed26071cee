"""The core's layout: the public API as it was, sub-packages in layers that only import downwards, and no
public function with more than 10 parameters (the options objects carry the rest)."""
import ast
from pathlib import Path

import infdit_core
from infdit_core.cli import build_parser

CORE = Path(infdit_core.__file__).parent
# Each sub-package may import only from the ones on lower layers (and from itself).
LAYERS = {"hardware": 0, "network": 1, "checkpoints": 2, "planning": 2, "sampling": 3, "batch": 4, "training": 4}
FRONT_DOORS = {"sample", "upscale_image"}  # their keywords are the documented friendly API


def test_the_public_api_is_what_it_was():
    assert sorted(infdit_core.__all__) == sorted([
        "DEMO_MODEL_PATH", "BlockGroupDone", "COLOR_FIXES", "CheckpointError", "EvaluationDone", "InfDiT",
        "InfDiTConfig", "MemoryEstimate", "SOLVERS", "SamplingCancelled", "block_grid", "choose_block_batch",
        "convert", "estimate_peak_bytes", "evaluations_for", "get_sigmas_karras", "inspect_checkpoint",
        "load_inf_dit", "sample", "solvers", "upscale_image",
    ])
    assert all(hasattr(infdit_core, name) for name in infdit_core.__all__)
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"convert", "estimate", "evaluate", "train", "upscale"} <= set(commands)  # the ones there were stay


def test_the_top_level_is_small_and_the_rest_in_sub_packages():
    modules = sorted(p.name for p in CORE.glob("*.py"))
    assert modules == ["__init__.py", "__main__.py", "cli.py"]
    packages = sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(LAYERS)


def _imports(path: Path):
    """(package imported, line) of every relative import of the core's own sub-packages in this file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level == 2 and node.module:
                yield node.module.split(".")[0], node.lineno
            elif node.level == 2:  # from .. import x
                for alias in node.names:
                    yield alias.name, node.lineno


def test_every_import_runs_down_the_layers():
    wrong = []
    for package, layer in LAYERS.items():
        for path in (CORE / package).glob("*.py"):
            for target, line in _imports(path):
                if target in LAYERS and LAYERS[target] >= layer:
                    wrong.append(f"{path.relative_to(CORE)}:{line} imports {target}")
    assert not wrong, wrong


def test_no_public_function_takes_more_than_ten_parameters():
    long = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.name not in FRONT_DOORS:
                a = node.args
                count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                count -= bool(a.args) and a.args[0].arg in ("self", "cls")
                if count > 10:
                    long.append(f"{path.relative_to(CORE)}:{node.lineno} {node.name} ({count})")
    assert not long, long
