"""Run the real sampling code on fake CUDA tensors, on a machine without a GPU, and record what a GPU would
be asked to do: every aten call, kernel and view, copies between host and device (direction, bytes,
non_blocking, pinned or not), bytes read and written, FLOPs, value reads (host-device syncs) and event
waits, per block group.

How (torch's own tools): `FakeTensorMode` makes tensors on `cuda:0` without a driver and runs only the
meta kernels, keeping each tensor's device (a CPU tensor meeting a CUDA one raises
`FakeTensorDeviceMismatchError`, as on a GPU). The driver calls the code makes (streams, events, pinned
memory, capability, free memory) are stood in for here and counted. A value read (`.item()`, `bool()`,
`float()`, `.tolist()`) reaches `aten._local_scalar_dense`: on a GPU that is a sync, here it is counted and
answered with a stand-in (1, or True), since fake tensors hold no values.

Used by tests/core/test_fake_cuda.py (the dry run in CI) and benchmarks/gpu_model.py (the op model).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# Ops that only relabel memory: no kernel is launched for them.
VIEW_OPS = {
    aten.view, aten._unsafe_view, aten.reshape, aten.transpose, aten.permute, aten.expand, aten.slice, aten.select,
    aten.unsqueeze, aten.squeeze, aten.t, aten.alias, aten.as_strided, aten.unflatten, aten.split, aten.chunk,
    aten.split_with_sizes, aten.unbind, aten.detach, aten.lift_fresh, aten.flatten, aten._reshape_alias,
    aten.view_as_real, aten.view_as_complex, aten.diagonal, aten.narrow,
}
VALUE_READS = {aten._local_scalar_dense, aten.is_nonzero, aten.item, aten.equal}  # the host needs a device value
MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.matmul, aten.linear, aten._addmm_activation}
ATTENTION_OPS = {aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
                 aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_flash_attention_for_cpu}
CONV_OPS = {aten.convolution, aten.conv2d}
META_ONLY = {aten.empty, aten.empty_strided, aten.empty_like, aten.new_empty, aten.new_empty_strided,
             aten._local_scalar_dense, aten.sym_size, aten.sym_stride, aten.sym_numel, aten.sym_storage_offset,
             aten.is_pinned, aten._has_compatible_shallow_copy_type, aten.set_}


@dataclasses.dataclass
class Counts:
    """What one stretch of the run asked of the device."""

    calls: int = 0  # every aten call (what the host issues)
    kernels: int = 0  # calls that launch device work
    views: int = 0
    value_reads: int = 0  # reads of CUDA tensor values: host-device syncs
    cpu_value_reads: int = 0
    blocking_copies: int = 0  # host<->device copies the host waits for (blocking, or from/to pageable memory)
    event_waits: int = 0  # host waits on an event (only the host-held images' staging buffers)
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    elementwise_bytes: int = 0  # bytes read + written by device kernels other than matmuls and attention
    matmul_flops: float = 0.0
    attention_flops: float = 0.0
    attention_calls: int = 0
    ops: Counter = dataclasses.field(default_factory=Counter)
    op_bytes: Counter = dataclasses.field(default_factory=Counter)  # element-wise bytes by op

    def add(self, other: "Counts") -> None:
        for f in dataclasses.fields(self):
            if f.name in ("ops", "op_bytes"):
                getattr(self, f.name).update(getattr(other, f.name))
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _tensors(tree):
    out = []
    for x in tree if isinstance(tree, (list, tuple)) else [tree]:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out.extend(_tensors(x))
    return out


class OpRecorder(TorchDispatchMode):
    """Counts every aten call into `self.current`; `section()` starts a new stretch (e.g. a block group)."""

    def __init__(self, pinned):
        super().__init__()
        self.pinned = pinned  # StorageWeakRefs of pinned host memory
        self.current = Counts()
        self.sections: list[Counts] = []

    def section(self) -> Counts:
        self.sections.append(self.current)
        self.current = Counts()
        return self.sections[-1]

    def _is_pinned(self, t: torch.Tensor) -> bool:
        return StorageWeakRef(t.untyped_storage()) in self.pinned

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.current
        packet = func.overloadpacket
        if packet.__name__ in ("device", "dtype", "layout"):  # attribute queries of the fake tensors, not calls
            return func(*args, **kwargs)
        c.calls += 1
        c.ops[packet.__name__] += 1
        ins = _tensors(list(args) + list(kwargs.values()))
        if packet in VALUE_READS:
            t = args[0]
            if t.device.type == "cuda":
                c.value_reads += 1
            else:
                c.cpu_value_reads += 1
            return True if t.dtype == torch.bool else 1
        out = func(*args, **kwargs)
        if packet in VIEW_OPS:
            c.views += 1
            return out
        if packet in META_ONLY:
            return out
        outs = _tensors(out)
        devices = {t.device.type for t in ins + outs}
        if packet in (aten.copy_, aten._to_copy, aten._copy_from, aten.to) and devices == {"cpu", "cuda"}:
            src = args[1] if packet is aten.copy_ else args[0]
            dst = args[0] if packet is aten.copy_ else outs[0]
            host = src if src.device.type == "cpu" else dst
            nb = kwargs.get("non_blocking", args[2] if packet is aten.copy_ and len(args) > 2 else False)
            if src.device.type == "cpu":
                c.h2d_bytes += _nbytes(src)
            else:
                c.d2h_bytes += _nbytes(src)
            if not (nb and self._is_pinned(host)):
                c.blocking_copies += 1
            c.kernels += 1
            return out
        if "cuda" not in devices:
            return out
        if packet is aten.to and outs and outs[0] is args[0]:  # already in that dtype: no kernel
            return out
        c.kernels += 1
        if packet is aten.linear:
            c.matmul_flops += 2 * args[0].numel() * args[1].shape[0]
        elif packet in MATMUL_OPS:
            a, b = [t for t in ins if t.dim() >= 2][-2:]
            c.matmul_flops += 2 * a.numel() * b.shape[-1]
        elif packet in CONV_OPS:
            w = args[1]
            c.matmul_flops += 2 * outs[0].numel() * w[0].numel()
        elif packet in ATTENTION_OPS:
            q, k = args[0], args[1]
            c.attention_calls += 1
            c.attention_flops += 4 * q.numel() * k.shape[-2]
        else:
            # bytes read (the inputs) + bytes written (the outputs); a tensor only written (copy_'s and an
            # out= argument's destination) is not also read
            written = {id(t) for t in outs}
            read = [t for t in _tensors(list(args[1:] if packet is aten.copy_ else args)
                                        + [v for k, v in kwargs.items() if k != "out"])]
            if packet is not aten.copy_ and not func._schema.name.endswith("_"):
                read = [t for t in read if id(t) not in written] if "out" in kwargs else read
            moved = sum(_nbytes(t) for t in read) + sum(_nbytes(t) for t in outs)
            c.elementwise_bytes += moved
            c.op_bytes[packet.__name__] += moved
        return out


class _Stream:
    def __init__(self, *a, **k):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def record_event(self, event=None):
        return event or _Event()


class _Event:
    waits = 0

    def __init__(self, *a, **k):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        _Event.waits += 1

    def query(self):
        return True


@contextlib.contextmanager
def fake_cuda(capability=(9, 0), total_memory: int = 80 * 10**9, free_memory: int | None = None):
    """Inside: `torch.cuda` answers as a GPU of this `capability` and memory would, every new tensor is fake,
    and `recorder` (yielded) counts what the code asks of the device."""
    try:
        import infdit_core.hardware.host as host
    except ImportError:  # a version of the core before host.py (gpu_model.py --core measures one)
        host = None
    pinned: set = set()
    free = total_memory if free_memory is None else free_memory
    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def pinned_empty(shape, dtype):
        t = torch.empty(shape, dtype=dtype)
        pinned.add(StorageWeakRef(t.untyped_storage()))
        return t

    def pin_memory(self, *a, **k):
        t = self.clone()
        pinned.add(StorageWeakRef(t.untyped_storage()))
        return t

    patch(torch.cuda, "device_count", lambda: 1)
    patch(torch.cuda, "is_initialized", lambda: False)
    patch(torch.cuda, "_lazy_init", lambda: None)  # C++ asks Python to initialise CUDA before indexing
    patch(torch.cuda, "get_device_capability", lambda device=None: capability)
    patch(torch.cuda, "get_device_name", lambda device=None: f"fake sm{capability[0]}{capability[1]}")
    patch(torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0) or including_emulation)
    patch(torch.cuda, "mem_get_info", lambda device=None: (free, total_memory))
    patch(torch.cuda, "memory_reserved", lambda device=None: 0)
    patch(torch.cuda, "memory_allocated", lambda device=None: 0)
    patch(torch.cuda, "empty_cache", lambda: None)
    patch(torch.cuda, "synchronize", lambda device=None: None)
    patch(torch.cuda, "Stream", _Stream)
    patch(torch.cuda, "Event", _Event)
    patch(torch.cuda, "current_stream", lambda device=None: _Stream())
    patch(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    patch(torch.Tensor, "record_stream", lambda self, s: None)
    patch(torch.Tensor, "pin_memory", pin_memory)
    if host is not None:
        patch(host, "pinned_empty", pinned_empty)
    _Event.waits = 0
    recorder = OpRecorder(pinned)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), recorder:
            yield recorder
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        recorder.current.event_waits = _Event.waits


def fake_model(config, dtype=torch.bfloat16, device="cuda"):
    """The model built on `meta` and materialised (empty) on the fake device: call inside `fake_cuda`."""
    from infdit_core import InfDiT

    with torch.device("meta"):
        model = InfDiT(config)
    for module in model.modules():  # replaced in place: Module.to_empty would swap tensors the fake mode watches
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device),
                                                              requires_grad=False)
    return model.eval()


def record_steady_groups(config, block_batch, groups: int, variant: str = "auto", offload: bool = False,
                         capability=(9, 0), side: int = 1024):
    """[(blocks, Counts)] of `groups` block groups of one evaluation at side -> 4 x side px, recorded once the
    frontier is full (a line of blocks of the short side and a group more), on fake CUDA in bf16."""
    import warnings

    from infdit_core import BlockGroupDone, sample
    from infdit_core.network.attention import attention_variant

    kept: list[tuple[int, Counts]] = []
    rows = side * 4 // config.block_size

    class Enough(Exception):
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fake_cuda(capability) as rec, attention_variant(variant):
            model = fake_model(config, torch.bfloat16)

            def callback(event):
                if not isinstance(event, BlockGroupDone):
                    return
                counts = rec.section()
                if event.group >= -(-(rows + 2) // len(event.blocks)) + 1:
                    kept.append((len(event.blocks), counts))
                if len(kept) >= groups:
                    raise Enough

            try:
                sample(model, torch.rand(1, 3, side, side), steps=1, block_batch=block_batch, offload_frontier=offload,
                       callback=callback, memory_budget=int(70e9))
            except Enough:
                pass
    return kept
