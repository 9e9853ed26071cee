"""Run the real code on devices this machine does not have - Apple silicon (MPS), Intel GPUs (XPU, with and
without float64), AMD cards (ROCm) - enforcing each backend's known limits (../shared/docs/device-review.md
lists them with their upstream sources).

How: tensors on the emulated device are fake (`FakeTensorMode`: shapes, dtypes and devices, no data);
everything on the CPU stays real, so sigmas, noise and solver weights keep their values, and a small
device tensor made from host values keeps a real twin, so reading it back gives its numbers. A dispatch mode
(`DeviceRules`) sits on top: it runs pure-CPU calls for real, hands the rest to the fake mode, and checks
each call against the backend's rules:
- no float64 on MPS or on an XPU without it; no float8 on MPS;
- MPS's adaptive average pooling needs output sizes that divide the input (torch #96056);
- MPS has no fused attention kernel that returns a log-sum-exp; its SDPA answers more than 8 queries with
  the math path, float32 scores and softmax (torch #178545): recorded per call, and a call whose scores
  exceed `attention_limit` bytes raises "MPS backend out of memory", a plain RuntimeError as MPS raises;
- a tensor over 4 GiB on MPS aborts the process there (torch #149325): raised as `EmulatedAbort`;
- non-blocking copies between the device and pageable host memory are recorded (unsafe on MPS, #189690);
- antialiased bicubic has no MPS kernel before torch 2.8 (PR #149378) when `torch_before_2_8`.
Host memory as the OS reports it (and Windows' file rules) come from benchmarks/fake_os.py.
This CUDA build of torch has no device guard for mps/xpu, so the few Python bindings that open one
(indexing, copy_, to, contiguous, value reads, numpy) are rerouted to plain aten calls for fake tensors.

Used by tests/core/test_devices.py (the dry runs in CI). The ROCm answers ride on benchmarks/fake_cuda.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import types
from collections import Counter

import torch
import torch._dynamo  # noqa: F401  (import before patching: dynamo reads the backends at import)
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from fake_cuda import _Event, _Stream, _tensors
from fake_os import host_memory, patched

aten = torch.ops.aten
GIB = 1024**3
TWIN_LIMIT = 4096  # elements: device tensors this small carry their real values along
FLOAT8 = {d for d in (getattr(torch, n, None) for n in dir(torch) if n.startswith("float8")) if isinstance(d, torch.dtype)}
LSE_KERNELS = {aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
               aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_flash_attention_for_cpu}


class EmulatedAbort(Exception):
    """What would end the process on the real device (MPS: a tensor over 4 GiB)."""


class RuleBroken(Exception):
    """A call the real backend refuses (float64 on MPS, a pooling size MPS cannot do, ...)."""


@dataclasses.dataclass
class Record:
    """What one emulated run asked of the device."""

    calls: int = 0
    attention: list = dataclasses.field(default_factory=list)  # (path, queries, keys, score bytes) per SDPA call
    unsafe_copies: int = 0  # non-blocking copies between the device and pageable host memory
    largest_tensor: int = 0
    synchronizes: int = 0
    empty_caches: int = 0
    pinned: set = dataclasses.field(default_factory=set)  # StorageWeakRefs of page-locked host memory
    ops: Counter = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass(frozen=True)
class Backend:
    """The limits of one emulated device."""

    device: str  # "mps" or "xpu"
    float64: bool
    float8: bool
    divisible_pooling: bool  # adaptive pooling only for output sizes that divide the input
    fused_attention: bool  # SDPA holds no score matrix
    max_tensor_bytes: int | None
    unified_memory: bool


MPS = Backend("mps", float64=False, float8=False, divisible_pooling=True, fused_attention=False,
              max_tensor_bytes=4 * GIB, unified_memory=True)
XPU = Backend("xpu", float64=True, float8=True, divisible_pooling=False, fused_attention=True, max_tensor_bytes=None,
              unified_memory=False)
ARC_A = dataclasses.replace(XPU, float64=False)  # Arc A-series: no fp64 aspect
BACKENDS = {"mps": MPS, "xpu": XPU, "xpu-no-fp64": ARC_A}


class DeviceRules(TorchDispatchMode):
    """Checks every aten call against `backend`'s rules; pure-CPU calls run for real."""

    def __init__(self, backend: Backend, record: Record, fake_mode: FakeTensorMode, torch_before_2_8: bool = False):
        super().__init__()
        self.backend, self.record, self.old_torch = backend, record, torch_before_2_8
        self.fake_mode = fake_mode
        # Small device tensors made from host values (sigmas, a step's level) keep a real twin, so that reading
        # them back gives the real numbers, as on the device: solver weights depend on them.
        self.twins = WeakIdKeyDictionary()

    def _on_device(self, tensors) -> bool:
        return any(t.device.type == self.backend.device for t in tensors)

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet.__name__ in ("device", "dtype", "layout"):
            return func(*args, **kwargs)
        ins = _tensors(list(args) + list(kwargs.values()))
        device_kw = kwargs.get("device")
        fake_in = any(isinstance(t, FakeTensor) for t in ins)
        to_device = device_kw is not None and torch.device(device_kw).type == self.backend.device
        if not fake_in and not to_device and not self._on_device(ins):
            with _disable_current_modes():  # the CPU side stays real: values, sigmas, noise
                return func(*args, **kwargs)
        self.record.calls += 1
        self.record.ops[packet.__name__] += 1
        if any(not isinstance(t, FakeTensor) for t in ins):  # real host tensors meeting the device: fake from here
            args, kwargs = tree_map_only(torch.Tensor, self._fake, (args, kwargs))
            ins = _tensors(list(args) + list(kwargs.values()))
        if packet in (aten._local_scalar_dense, aten.is_nonzero, aten.item, aten.equal):
            if args[0] in self.twins and packet is not aten.equal:
                with _disable_current_modes():
                    return self.twins[args[0]].item()
            return True if args[0].dtype == torch.bool else 1  # fake tensors hold no values: as fake_cuda.py
        on_device = self._on_device(ins) or to_device
        if on_device and packet in LSE_KERNELS and not self.backend.fused_attention:
            raise RuleBroken(f"{packet.__name__}: no fused attention kernel with a log-sum-exp on {self.backend.device}")
        if on_device and packet is aten._adaptive_avg_pool2d and self.backend.divisible_pooling:
            size, out = args[0].shape[-2:], args[1]
            if any(s % o for s, o in zip(size, out)):
                raise RuleBroken(f"adaptive pooling {tuple(size)} -> {tuple(out)}: MPS needs sizes that divide")
        if on_device and packet is aten._upsample_bicubic2d_aa and self.old_torch:
            raise RuleBroken("antialiased bicubic has no MPS kernel before torch 2.8")
        if packet in (aten.copy_, aten._to_copy) and kwargs.get("non_blocking", args[2] if packet is aten.copy_ and len(args) > 2 else False):
            devices = {t.device.type for t in ins} | ({torch.device(device_kw).type} if device_kw is not None else set())
            host = [t for t in ins if t.device.type == "cpu"]
            if self.backend.device in devices and "cpu" in devices and not any(self._pinned(t) for t in host):
                self.record.unsafe_copies += 1
        out = func(*args, **kwargs)
        outs = _tensors(out)
        self._follow_twins(func, args, kwargs, ins, outs)
        for t in ins + outs:
            if t.device.type != self.backend.device:
                continue
            if t.dtype == torch.float64 and not self.backend.float64:
                raise RuleBroken(f"{packet.__name__}: float64 on {self.backend.device}")
            if t.dtype in FLOAT8 and not self.backend.float8:
                raise RuleBroken(f"{packet.__name__}: {t.dtype} on {self.backend.device}")
        for t in outs:
            if t.device.type == self.backend.device:
                nbytes = t.numel() * t.element_size()
                self.record.largest_tensor = max(self.record.largest_tensor, nbytes)
                if self.backend.max_tensor_bytes and nbytes > self.backend.max_tensor_bytes:
                    raise EmulatedAbort(f"{packet.__name__}: a {nbytes / GIB:.1f} GiB tensor on {self.backend.device}")
        return out


    def _pinned(self, t) -> bool:
        return StorageWeakRef(t.untyped_storage()) in self.record.pinned

    def _fake(self, t):
        if isinstance(t, FakeTensor):
            return t
        fake = self.fake_mode.from_tensor(t)
        if self._pinned(t):
            self.record.pinned.add(StorageWeakRef(fake.untyped_storage()))
        if t.numel() <= TWIN_LIMIT:
            self.twins[fake] = t
        return fake

    def _follow_twins(self, func, args, kwargs, ins, outs) -> None:
        """Compute the real twin of small outputs whose inputs all have one; drop stale twins otherwise."""
        if not outs:
            return
        known = bool(ins) and all(t in self.twins for t in ins if isinstance(t, FakeTensor))  # factories: unknown
        if known and all(t.numel() <= TWIN_LIMIT for t in outs):
            real_args, real_kwargs = tree_map_only(FakeTensor, lambda t: self.twins[t], (args, kwargs))
            if "device" in real_kwargs:
                real_kwargs["device"] = torch.device("cpu")
            try:
                with _disable_current_modes():
                    result = func(*real_args, **real_kwargs)
            except Exception:
                result = None
            if result is not None:
                for fake, real in zip(outs, _tensors(result)):
                    self.twins[fake] = real
                return
        for t in outs:
            self.twins.pop(t, None)


# ----------------------------------------------------------------------------------- bindings and attention

def _index(t, idx):
    """t[idx] through aten calls (basic indexing, plus one tensor or list index)."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis for i in idx):
        at = idx.index(Ellipsis)
        fill = t.dim() - sum(1 for i in idx if i is not None and i is not Ellipsis)
        idx = idx[:at] + (slice(None),) * fill + idx[at + 1:]
    dim, advanced = 0, None
    for i in idx:
        if i is None:
            t = aten.unsqueeze(t, dim)
            dim += 1
        elif isinstance(i, bool):
            raise NotImplementedError("boolean indexing of an emulated device tensor")
        elif isinstance(i, int) or (isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point()):
            t = aten.select.int(t, dim, int(i))
        elif isinstance(i, slice):
            n = t.shape[dim]
            start, stop, step = i.indices(n)
            t = aten.slice.Tensor(t, dim, start, max(stop, start), step)
            dim += 1
        else:
            advanced = (dim, torch.as_tensor(i))
            dim += 1
    if advanced is not None:
        d, index = advanced
        t = aten.index.Tensor(t, [None] * d + [index.to(t.device) if isinstance(index, FakeTensor) else index])
    return t


@contextlib.contextmanager
def _rerouted_bindings(device_type: str):
    """Tensor methods whose Python binding opens a device guard, rerouted to aten for fake device tensors."""
    saved = []

    def mine(t):
        return isinstance(t, FakeTensor) and (t.device.type == device_type or t.fake_device.type == device_type)

    def wrap(name, replacement, cls=torch.Tensor):
        original = getattr(cls, name)
        saved.append((cls, name, original))

        def method(self, *a, **k):
            if mine(self) or (name == "copy_" and a and mine(a[0])) or (name == "to" and _targets(a, k)):
                return replacement(original, self, *a, **k)
            return original(self, *a, **k)

        setattr(cls, name, method)

    def _targets(a, k):
        """A .to(...) call that names the emulated device."""
        named = [k.get("device")] + [x for x in a if isinstance(x, (str, torch.device))]
        return any(d is not None and torch.device(d).type == device_type for d in named)

    def getitem(original, t, idx):
        return _index(t, idx)

    def setitem(original, t, idx, value):
        view = _index(t, idx)
        if isinstance(value, torch.Tensor):
            aten.copy_(view, value)
        else:
            aten.fill_.Scalar(view, value)

    def copy_(original, t, src, non_blocking=False):
        return aten.copy_(t, src, non_blocking)

    def to(original, t, *a, **k):
        device, dtype = k.pop("device", None), k.pop("dtype", None)
        non_blocking, copy = k.pop("non_blocking", False), k.pop("copy", False)
        for x in a:
            if isinstance(x, torch.dtype):
                dtype = x
            elif isinstance(x, (str, torch.device)):
                device = x
            elif isinstance(x, torch.Tensor):
                device, dtype = x.device, x.dtype
            elif isinstance(x, bool):
                non_blocking = x
        device = None if device is None else torch.device(device)
        if (device is None or device == t.device or (device.index is None and device.type == t.device.type)) \
                and (dtype is None or dtype == t.dtype) and not copy:
            return t
        return aten._to_copy(t, dtype=dtype or t.dtype, device=device or t.device, non_blocking=non_blocking)

    def contiguous(original, t, memory_format=torch.contiguous_format):
        return t if t.is_contiguous(memory_format=memory_format) else aten.clone(t, memory_format=memory_format)

    def value(kind):
        return lambda original, t: kind(aten._local_scalar_dense(t))

    def numpy(original, t, *a, **k):
        import numpy as np

        return np.zeros(tuple(t.shape), dtype=np.float32 if t.is_floating_point() else np.uint8)

    wrap("__getitem__", getitem)
    wrap("__setitem__", setitem)
    wrap("copy_", copy_)
    wrap("to", to)
    wrap("contiguous", contiguous)
    wrap("item", value(lambda v: v))
    wrap("__float__", value(float))
    wrap("__int__", value(int))
    wrap("__bool__", value(bool))
    wrap("__index__", value(int))
    wrap("tolist", lambda original, t: [1] * t.numel() if t.dim() else 1)
    saved.append((torch.Tensor, "numpy", torch.Tensor.numpy))
    torch.Tensor.numpy = lambda self, *a, **k: numpy(None, self) if isinstance(self, FakeTensor) else saved[-1][2](self, *a, **k)
    try:
        yield
    finally:
        for cls, name, original in reversed(saved):
            setattr(cls, name, original)


def _attention(backend: Backend, record: Record, attention_limit: int | None, original):
    """F.scaled_dot_product_attention for tensors on the emulated device: MPS's math path (its score bytes
    recorded, out of memory above `attention_limit`), a fused kernel on XPU."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **extra):
        if q.device.type != backend.device:
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **extra)
        queries, keys = q.shape[-2], k.shape[-2]
        math = not backend.fused_attention and queries > 8
        scores = q.shape[:-1].numel() * keys * 4 * 2 if math else 0  # float32 scores and their softmax
        record.attention.append(("math" if math else "fused", queries, keys, scores))
        if math and attention_limit is not None and scores > attention_limit:
            raise RuntimeError(f"MPS backend out of memory (MPS allocated: 1.00 GiB, other allocations: 0 bytes, max "
                               f"allowed: {attention_limit / GIB:.2f} GiB). Tried to allocate {scores / GIB:.2f} GiB on "
                               "private pool.")
        if backend.max_tensor_bytes and scores // 2 > backend.max_tensor_bytes:
            raise EmulatedAbort(f"attention scores of {scores // 2 / GIB:.1f} GiB on {backend.device}")
        return aten._scaled_dot_product_attention_math(q, k, v, attn_mask, dropout_p, is_causal, None, scale=scale)[0]

    return sdpa


def _clear_attention_caches() -> None:
    """Which kernel ran is remembered per device name: an emulated device must not leave its choice behind."""
    from infdit_core.network import attention

    attention._CHOSEN.clear()
    attention._ONE_CALL.clear()


@contextlib.contextmanager
def fake_device(kind: str = "mps", memory: int = 32 * GIB, attention_limit: int | None = None,
                torch_before_2_8: bool = False, bf16: bool = True):
    """Inside: `kind` ("mps", "xpu", "xpu-no-fp64") is present, the default device, and every tensor made on it
    is fake and checked; yields a Record. `memory`: the machine's RAM (MPS: unified) or the XPU's memory;
    `attention_limit`: bytes of one MPS attention call's scores past which it runs out of memory."""
    backend = BACKENDS[kind]
    record = Record()
    device = backend.device
    with patched() as patch:
        if device == "mps":
            patch(torch.backends.mps, "is_available", lambda: True)
            patch(torch.mps, "recommended_max_memory", lambda: int(memory * 2 / 3))  # Metal's working-set limit
            patch(torch.mps, "current_allocated_memory", lambda: 0)
            patch(torch.mps, "driver_allocated_memory", lambda: 0)
            patch(torch.mps, "empty_cache", lambda: setattr(record, "empty_caches", record.empty_caches + 1))
            patch(torch.mps, "synchronize", lambda: setattr(record, "synchronizes", record.synchronizes + 1))
        else:
            xpu = torch.xpu
            props = types.SimpleNamespace(has_fp64=backend.float64, name="emulated Intel Arc", total_memory=memory)
            patch(xpu, "is_available", lambda: True)
            patch(xpu, "device_count", lambda: 1)
            patch(xpu, "get_device_properties", lambda d=None: props)
            patch(xpu, "is_bf16_supported", lambda *a, **k: bf16)
            patch(xpu, "mem_get_info", lambda d=None: (memory, memory))
            patch(xpu, "memory_reserved", lambda d=None: 0)
            patch(xpu, "memory_allocated", lambda d=None: 0)
            patch(xpu, "empty_cache", lambda: setattr(record, "empty_caches", record.empty_caches + 1))
            patch(xpu, "synchronize", lambda d=None: setattr(record, "synchronizes", record.synchronizes + 1))
            patch(xpu, "Stream", _Stream)
            patch(xpu, "Event", _Event)
            patch(xpu, "current_stream", lambda d=None: _Stream())
            patch(xpu, "stream", lambda s: contextlib.nullcontext())
            patch(torch.Tensor, "record_stream", lambda self, s: None)
            import infdit_core.hardware.host as host

            def pinned_empty(shape, dtype):
                t = torch.empty(shape, dtype=dtype)
                record.pinned.add(StorageWeakRef(t.untyped_storage()))
                return t

            patch(host, "pinned_empty", pinned_empty)
        patch(torch.cuda, "is_available", lambda: False)
        patch(F, "scaled_dot_product_attention", _attention(backend, record, attention_limit, F.scaled_dot_product_attention))
        _clear_attention_caches()
        try:
            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            with host_memory(memory), _rerouted_bindings(device), fake_mode, \
                    DeviceRules(backend, record, fake_mode, torch_before_2_8):
                yield record
        finally:
            _clear_attention_caches()


@contextlib.contextmanager
def fake_rocm(arch: str = "gfx1100", memory: int = 24 * 10**9):
    """Inside benchmarks/fake_cuda.py's fake CUDA, torch answers as a HIP build on an AMD card of `arch`
    (gfx942 MI300, gfx90a MI200, gfx1100 RX 7900, gfx1030 RX 6800, gfx906 Vega 20): `torch.version.hip`
    set, the made-up capability a HIP build reports and `gcnArchName`; cuDNN's attention kernel raises, as
    it has no HIP build. Yields fake_cuda's recorder, with `.cudnn_calls` counted."""
    from fake_cuda import fake_cuda

    capability = {"gfx942": (9, 4), "gfx90a": (9, 0), "gfx1100": (11, 0), "gfx1030": (10, 3), "gfx906": (9, 0)}[arch]
    props = types.SimpleNamespace(gcnArchName=f"{arch}:sramecc+:xnack-", name=f"emulated AMD {arch}", total_memory=memory,
                       major=capability[0], minor=capability[1])
    calls = {"cudnn": 0}
    original_cudnn = aten._scaled_dot_product_cudnn_attention

    def no_cudnn(*a, **k):
        calls["cudnn"] += 1
        raise RuntimeError("cuDNN attention is not available on ROCm")

    with patched() as patch:
        patch(torch.version, "hip", "6.4.0")
        patch(torch.cuda, "get_device_properties", lambda d=None: props)
        patch(torch.ops.aten, "_scaled_dot_product_cudnn_attention", no_cudnn)
        _clear_attention_caches()
        try:
            with fake_cuda(capability, total_memory=memory) as rec:
                rec.cudnn_calls = calls
                yield rec
        finally:
            _clear_attention_caches()
    assert torch.ops.aten._scaled_dot_product_cudnn_attention is original_cudnn
