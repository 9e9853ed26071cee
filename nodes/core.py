"""The core API the nodes use, imported once here.

Inside ComfyUI the repository root is the package (custom_nodes/<pack>/), so the core is a sibling
subpackage; in tests and scripts the root is on sys.path and the core is top-level `infdit_core`. Either
way it is imported under one name only (two copies would make two sets of classes and caches).
"""
from importlib import import_module

try:
    from .. import infdit_core as core_package
except ImportError:  # "attempted relative import beyond top-level package": nodes/ is top-level
    import infdit_core as core_package


def _module(name: str):
    return import_module(f"{core_package.__name__}.{name}")


DEMO_MODEL_PATH, BlockGroupDone, CheckpointError, EvaluationDone, InfDiTConfig = (
    core_package.DEMO_MODEL_PATH, core_package.BlockGroupDone, core_package.CheckpointError,
    core_package.EvaluationDone, core_package.InfDiTConfig)
block_grid, choose_block_batch, estimate_peak_bytes, evaluations_for = (
    core_package.block_grid, core_package.choose_block_batch, core_package.estimate_peak_bytes,
    core_package.evaluations_for)
inspect_checkpoint, load_inf_dit, upscale_image = (
    core_package.inspect_checkpoint, core_package.load_inf_dit, core_package.upscale_image)
COLOR_FIXES, get_sigmas_karras = core_package.COLOR_FIXES, core_package.get_sigmas_karras

_solvers = _module("sampling.solvers")
SOLVERS, check_sigmas, solver_evaluations = _solvers.SOLVERS, _solvers.check_sigmas, _solvers.evaluations_for
DEFAULT_SOLVER, RELEASE_SOLVER, own_steps = _solvers.DEFAULT_SOLVER, _solvers.RELEASE_SOLVER, _solvers.own_steps
_memory = _module("planning.memory")
default_budget, default_free_memory, image_buffers = (
    _memory.default_budget, _memory.free_device_memory, _memory.image_buffers)
_precision = _module("hardware.precision")
DTYPES, auto_dtype = _precision.DTYPES, _precision.auto_dtype
devices = _module("hardware.devices")
_plan = _module("planning.plan")
fallback, model_budget, parse_target, plan_output, plan_run, smallest_fitting = (
    _plan.fallback, _plan.model_budget, _plan.parse_target, _plan.plan_output, _plan.plan_run, _plan.smallest_fitting)
_scheduler = _module("planning.scheduler")
SCANS, plan_blocks = _scheduler.SCANS, _scheduler.plan_blocks
_recovery = _module("sampling.recovery")
InfDiTOutOfMemory, run_with_recovery = _recovery.InfDiTOutOfMemory, _recovery.run_with_recovery
SamplingOptions = _module("sampling.options").SamplingOptions
_pipeline = _module("sampling.pipeline")
plan_for, upscale_planned = _pipeline.plan_for, _pipeline.upscale_planned
BlockOptions = _module("planning.options").BlockOptions
download = _module("checkpoints.download")
