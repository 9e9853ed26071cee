"""The core API the nodes use, imported once here.

Inside ComfyUI the repository root is the package (custom_nodes/<pack>/), so the core is a sibling
subpackage; in tests and scripts the root is on sys.path and the core is top-level `infdit_core`.
"""
try:
    from ..infdit_core import (  # noqa: F401
        DEMO_MODEL_PATH, BlockGroupDone, CheckpointError, EvaluationDone, InfDiTConfig, block_grid,
        choose_block_batch, estimate_peak_bytes, evaluations_for, inspect_checkpoint, load_inf_dit, upscale_image,
    )
    from ..infdit_core.sampling.color import COLOR_FIXES  # noqa: F401
    from ..infdit_core.sampling.sampler import get_sigmas_karras  # noqa: F401
    from ..infdit_core.sampling.solvers import SOLVERS, check_sigmas, evaluations_for as solver_evaluations  # noqa: F401
    from ..infdit_core.planning.memory import default_budget, free_device_memory as default_free_memory, image_buffers  # noqa: F401
    from ..infdit_core.hardware.precision import DTYPES, auto_dtype  # noqa: F401
    from ..infdit_core.hardware import devices  # noqa: F401
    from ..infdit_core.planning.plan import fallback, model_budget, parse_target, plan_output, plan_run, smallest_fitting  # noqa: F401
    from ..infdit_core.planning.scheduler import SCANS, plan_blocks  # noqa: F401
    from ..infdit_core.sampling.recovery import InfDiTOutOfMemory, run_with_recovery  # noqa: F401
    from ..infdit_core.sampling.options import SamplingOptions  # noqa: F401
    from ..infdit_core.sampling.pipeline import plan_for, upscale_planned  # noqa: F401
    from ..infdit_core.planning.options import BlockOptions  # noqa: F401
except ImportError:  # "attempted relative import beyond top-level package": nodes/ is top-level
    from infdit_core import (  # noqa: F401
        DEMO_MODEL_PATH, BlockGroupDone, CheckpointError, EvaluationDone, InfDiTConfig, block_grid,
        choose_block_batch, estimate_peak_bytes, evaluations_for, inspect_checkpoint, load_inf_dit, upscale_image,
    )
    from infdit_core.sampling.color import COLOR_FIXES  # noqa: F401
    from infdit_core.sampling.sampler import get_sigmas_karras  # noqa: F401
    from infdit_core.sampling.solvers import SOLVERS, check_sigmas, evaluations_for as solver_evaluations  # noqa: F401
    from infdit_core.planning.memory import default_budget, free_device_memory as default_free_memory, image_buffers  # noqa: F401
    from infdit_core.hardware.precision import DTYPES, auto_dtype  # noqa: F401
    from infdit_core.hardware import devices  # noqa: F401
    from infdit_core.planning.plan import fallback, model_budget, parse_target, plan_output, plan_run, smallest_fitting  # noqa: F401
    from infdit_core.planning.scheduler import SCANS, plan_blocks  # noqa: F401
    from infdit_core.sampling.recovery import InfDiTOutOfMemory, run_with_recovery  # noqa: F401
    from infdit_core.sampling.options import SamplingOptions  # noqa: F401
    from infdit_core.sampling.pipeline import plan_for, upscale_planned  # noqa: F401
    from infdit_core.planning.options import BlockOptions  # noqa: F401
