"""compile=True: the same results as eager (fp32), one compile per stage and group size, and one
warning then eager where torch.compile cannot work."""
import time
import warnings

import pytest
import torch
from conftest import TINY, lr_image, random_model
from torch._dynamo.utils import counters

import infdit_core.network.compiled as compiled_mod
from infdit_core import sample


@pytest.fixture
def fresh_compile_state(monkeypatch):
    """Each test starts as a new process would: nothing compiled, no failure recorded."""
    monkeypatch.setattr(compiled_mod, "_compiled", None)
    monkeypatch.setattr(compiled_mod, "_unavailable", None)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_sampling_matches_eager_and_compiles_once_per_group_size(fresh_compile_state):
    model = random_model(TINY)
    lr = lr_image(32, 96)  # 1 x 3 blocks; block batch 2 -> groups of 2 and 1: two shapes per stage
    eager = sample(model, lr, steps=2, seed=1, block_batch=2)
    t0 = time.perf_counter()
    first = sample(model, lr, steps=2, seed=1, block_batch=2, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    second = sample(model, lr, steps=2, seed=1, block_batch=2, compile=True)
    print(f"compiling and running the tiny model took {time.perf_counter() - t0:.1f} s")
    assert graphs <= 2 * 3  # 3 stages x 2 group sizes, shared by both layers and all 3 evaluations
    assert counters["stats"]["unique_graphs"] == graphs  # the second run recompiles nothing
    scale = eager.abs().max()
    assert ((first - eager).abs().max() / scale).item() <= 1e-4
    assert torch.equal(first, second)
    assert model.stages is not compiled_mod.compiled_stages()  # eager again after the call


def _no_compiler(gm, example_inputs):
    raise RuntimeError("simulated: no C++ compiler found")


def test_without_a_working_compiler_it_warns_once_and_runs_eagerly(fresh_compile_state, monkeypatch):
    monkeypatch.setattr(compiled_mod, "_BACKEND", _no_compiler)
    model = random_model(TINY)
    lr = lr_image(32, 32)
    eager = sample(model, lr, steps=1)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable.*no C\\+\\+ compiler") as caught:
        first = sample(model, lr, steps=1, compile=True)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second run: no second warning
        second = sample(model, lr, steps=1, compile=True)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert "no C++ compiler" in compiled_mod.compile_unavailable_reason()


def test_out_of_memory_inside_compiled_code_is_not_swallowed(fresh_compile_state, monkeypatch):
    def oom(*args):
        raise torch.OutOfMemoryError("simulated")

    stages = compiled_mod.LayerStages(*(compiled_mod._guarded(oom, fn) for fn in compiled_mod.EAGER_STAGES))
    monkeypatch.setattr(compiled_mod, "_compiled", stages)
    with pytest.raises(torch.OutOfMemoryError):
        sample(random_model(TINY), lr_image(32, 32), steps=1, compile=True)
    assert compiled_mod.compile_unavailable_reason() is None


def test_an_error_that_recurs_eagerly_is_raised_and_compile_stays_on(fresh_compile_state):
    """A run-time error of the input or the model (it fails eagerly too) is not a compiler problem: before, any
    such error turned compile off for the life of the server."""
    def failing(*args):
        raise ValueError("shapes do not match")

    run = compiled_mod._guarded(failing, failing)
    with pytest.raises(ValueError, match="shapes do not match"):
        run()
    assert compiled_mod.compile_unavailable_reason() is None
    # a failure of the compiled code alone is the compiler's: eager from then on, with one warning
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert compiled_mod._guarded(failing, lambda: "eager")() == "eager"
    assert "shapes do not match" in compiled_mod.compile_unavailable_reason()


def test_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="compile must be True or False"):
        sample(random_model(TINY), lr_image(32, 32), steps=1, compile="yes")
