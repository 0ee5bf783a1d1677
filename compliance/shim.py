"""CPU stand-ins for what competition entries assume, installed inside the sandboxed worker before an entry runs.

* CUDA: ``torch.cuda`` answers as one visible device (``is_available``, ``set_device``, ``synchronize``, memory
  statistics, events, streams, device properties of an H100); a torch-function mode sends every tensor that asks for
  a CUDA device to the CPU (``device=`` arguments, ``.to("cuda")``, ``.cuda()``, ``pin_memory``). ``nvidia-smi``
  and ``pyminify`` (entries log their output / minified code size) are stand-ins on the worker's PATH. Autocast to CUDA
  and CUDA gradient scalers are switched off and modules asked for bfloat16/float16 weights keep float32 ones, so
  the entry computes in float32 on the CPU.
* ``torch.compile`` is the identity (as a call and as a decorator, with or without options).
* ``torch.distributed``: a single process (rank 0 of 1): ``init_process_group`` succeeds, collectives leave their
  tensors as they are (``all_gather*`` copies), ``DistributedDataParallel`` forwards to the wrapped module.
* FlashAttention 2/3 (``flash_attn``, ``flash_attn_interface``, ``flash_attn.cute``): ``flash_attn_func`` and
  ``flash_attn_varlen_func`` computed exactly in float32 with the same masks (causal, sliding ``window_size``,
  ``softcap``, grouped K/V heads, and per-sequence blocks from ``cu_seqlens``).
* Triton: with ``triton="missing"`` ``import triton`` raises ImportError, so an entry that has an eager fallback
  takes it; with ``triton="refuse"`` it imports, kernels can be defined, and launching one raises
  :class:`ShimRefusal` naming the kernel.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import time
import types


class ShimRefusal(RuntimeError):
    """Something the entry needs cannot run on the CPU (a Triton kernel, a CUDA graph): the run cannot proceed."""


# ---------------------------------------------------------------------------------------------------------------
# CUDA


def _is_cuda(dev) -> bool:
    import torch
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return False


def _device_mode():
    import torch
    from torch.overrides import TorchFunctionMode

    cpu = torch.device("cpu")

    class CudaToCpu(TorchFunctionMode):
        """Rewrites every CUDA device request to the CPU; ``hooks`` see every call (the score recorder)."""

        hooks: list = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            dev = kwargs.get("device")
            if dev is not None and (_is_cuda(dev) or (isinstance(dev, int) and not isinstance(dev, bool))):
                kwargs["device"] = cpu
            if kwargs.get("pin_memory"):
                kwargs["pin_memory"] = False
            out = func(*args, **kwargs)
            for hook in self.hooks:
                hook(func, args, kwargs, out)
            return out

    return CudaToCpu()


class _Event:
    def __init__(self, *a, **k):
        self.t = None

    def record(self, *a, **k):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def query(self):
        return True

    def wait(self, *a, **k):
        pass

    def elapsed_time(self, other) -> float:
        return 1000.0 * ((other.t or 0.0) - (self.t or 0.0))


class _Stream:
    def __init__(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, *a, **k):
        pass

    def wait_event(self, *a, **k):
        pass

    def record_event(self, *a, **k):
        e = _Event()
        e.record()
        return e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Props:
    name = "NVIDIA H100 80GB HBM3 (CPU shim)"
    major, minor = 9, 0
    total_memory = 80 * 2**30
    multi_processor_count = 132
    L2_cache_size = 50 * 2**20


def _install_tensor_methods() -> None:
    """``.to("cuda")``, ``.cuda()`` and ``pin_memory()`` on tensors stay on the CPU (in every thread)."""
    import torch

    cpu = torch.device("cpu")
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple(cpu if _is_cuda(a) or (i == 0 and isinstance(a, int) and not isinstance(a, bool)) else a
                     for i, a in enumerate(args))
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = cpu
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu
    gen = torch.Generator

    class Generator(gen):
        """``torch.Generator(device="cuda")`` is a CPU generator."""

        def __new__(cls, device=None):
            return gen.__new__(cls, device="cpu")

        def __init__(self, device=None):
            pass

    torch.Generator = Generator
    torch.Tensor.cuda = lambda self, *a, **k: to(self, cpu)
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    torch.Tensor.is_pinned = lambda self, *a, **k: False


def _install_module_dtype() -> None:
    """Modules asked to hold bfloat16/float16 weights keep float32 ones: on the CPU half-precision matmuls are
    4-13x slower, and the probes compare an entry with itself, so the precision does not decide them."""
    import torch
    import torch.nn as nn

    half = (torch.bfloat16, torch.float16)
    to = nn.Module.to

    def module_to(self, *args, **kwargs):
        args = tuple(a for a in args if a not in half)
        if kwargs.get("dtype") in half:
            kwargs.pop("dtype")
        return to(self, *args, **kwargs) if args or kwargs else self

    nn.Module.to = module_to
    nn.Module.bfloat16 = lambda self: self
    nn.Module.half = lambda self: self


def _install_cuda(float32: bool) -> None:
    import torch

    _install_tensor_methods()
    if float32:
        _install_module_dtype()

    def _const(value):  # a distinct function per name: torch._dynamo's registry rejects one object under two names
        return lambda *a, **k: value

    def _graph(*a, **k):
        raise ShimRefusal("the entry captures a CUDA graph, which cannot run on the CPU")

    _nothing = None
    c = torch.cuda
    for name, fn in {
        "is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
        "is_initialized": lambda: True, "init": _nothing, "set_device": _nothing, "synchronize": _nothing,
        "empty_cache": _nothing, "manual_seed": _nothing, "manual_seed_all": _nothing, "seed": _nothing,
        "seed_all": _nothing, "reset_peak_memory_stats": _nothing, "reset_max_memory_allocated": _nothing,
        "reset_accumulated_memory_stats": _nothing, "memory_stats": lambda *a, **k: {},
        "mem_get_info": lambda *a, **k: (80 * 2**30, 80 * 2**30), "get_device_name": lambda *a, **k: _Props.name,
        "get_device_capability": lambda *a, **k: (9, 0), "get_device_properties": lambda *a, **k: _Props(),
        "is_bf16_supported": lambda *a, **k: True, "Event": _Event, "Stream": _Stream,
        "current_stream": lambda *a, **k: _Stream(), "default_stream": lambda *a, **k: _Stream(),
        "stream": lambda *a, **k: _Stream(), "CUDAGraph": _graph, "graph": _graph,
        "set_per_process_memory_fraction": _nothing, "ipc_collect": _nothing,
    }.items():
        setattr(c, name, fn if fn is not None else _const(None))
    for name in ("max_memory_allocated", "max_memory_reserved", "memory_allocated", "memory_reserved"):
        setattr(c, name, _const(0))
    nvtx = types.SimpleNamespace(range_push=_const(None), range_pop=_const(None), mark=_const(None),
                                 range=lambda *a, **k: _Stream())
    c.nvtx = nvtx
    sys.modules["torch.cuda.nvtx"] = nvtx  # type: ignore[assignment]

    base = torch.amp.autocast_mode.autocast

    class autocast(base):  # noqa: N801 - torch's name
        """CUDA autocast becomes CPU autocast: off (float32), or bfloat16 when the entry needs mixed-dtype math."""

        def __init__(self, device_type="cuda", dtype=None, enabled=True, cache_enabled=None):
            if device_type == "cuda":
                super().__init__("cpu", dtype=torch.bfloat16, enabled=bool(enabled) and not float32)
            else:
                super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    torch.autocast = autocast
    torch.amp.autocast = autocast
    torch.amp.autocast_mode.autocast = autocast

    class cuda_autocast(autocast):  # noqa: N801
        def __init__(self, enabled=True, dtype=None, cache_enabled=None):
            super().__init__("cuda")

    torch.cuda.amp.autocast = cuda_autocast
    scaler = torch.amp.GradScaler

    class GradScaler(scaler):
        def __init__(self, device="cuda", *a, **k):
            k["enabled"] = False
            super().__init__("cpu", *a[1:] if a else (), **k)

    torch.amp.GradScaler = GradScaler
    torch.cuda.amp.GradScaler = GradScaler


# ---------------------------------------------------------------------------------------------------------------
# torch.compile and torch.distributed


def _install_compile() -> None:
    import torch
    import torch._dynamo

    def compile(model=None, *a, **k):  # noqa: A001 - torch's name
        if model is None:
            return lambda fn: fn
        return model

    torch.compile = compile
    torch._dynamo.reset = lambda *a, **k: None   # nothing was compiled


def _install_distributed() -> None:
    import torch
    import torch.distributed as dist
    import torch.nn as nn

    state = {"init": False}

    class _Work:
        def wait(self, *a, **k):
            return True

        def is_completed(self):
            return True

    def _done(*a, async_op=False, **k):
        return _Work() if async_op else None

    def init_process_group(*a, **k):
        state["init"] = True

    def destroy_process_group(*a, **k):
        state["init"] = False

    def all_gather(tensor_list, tensor, *a, async_op=False, **k):
        for t in tensor_list:
            t.copy_(tensor)
        return _done(async_op=async_op)

    def all_gather_into_tensor(out, inp, *a, async_op=False, **k):
        out.view(-1)[: inp.numel()].copy_(inp.reshape(-1))
        return _done(async_op=async_op)

    def reduce_scatter_tensor(out, inp, *a, async_op=False, **k):
        out.reshape(-1).copy_(inp.reshape(-1)[: out.numel()])
        return _done(async_op=async_op)

    def all_gather_object(obj_list, obj, *a, **k):
        obj_list[0] = obj

    def broadcast_object_list(obj_list, *a, **k):
        return None

    def all_to_all_single(out, inp, *a, async_op=False, **k):
        out.copy_(inp)
        return _done(async_op=async_op)

    for name, fn in {
        "is_available": lambda: True, "is_initialized": lambda: state["init"], "is_nccl_available": lambda: True,
        "init_process_group": init_process_group, "destroy_process_group": destroy_process_group,
        "get_rank": lambda *a, **k: 0, "get_world_size": lambda *a, **k: 1, "get_local_rank": lambda *a, **k: 0,
        "barrier": _done, "all_reduce": _done, "broadcast": _done, "reduce": _done, "all_gather": all_gather,
        "all_gather_into_tensor": all_gather_into_tensor, "_all_gather_base": all_gather_into_tensor,
        "reduce_scatter_tensor": reduce_scatter_tensor, "_reduce_scatter_base": reduce_scatter_tensor,
        "all_gather_object": all_gather_object, "broadcast_object_list": broadcast_object_list,
        "all_to_all_single": all_to_all_single, "monitored_barrier": _done,
    }.items():
        setattr(dist, name, fn)

    class DistributedDataParallel(nn.Module):
        """One process: forwards to the wrapped module."""

        def __init__(self, module, *a, **k):
            super().__init__()
            self.module = module

        def forward(self, *a, **k):
            return self.module(*a, **k)

        def no_sync(self):
            return _Stream()

    nn.parallel.DistributedDataParallel = DistributedDataParallel
    torch.nn.parallel.distributed.DistributedDataParallel = DistributedDataParallel


# ---------------------------------------------------------------------------------------------------------------
# FlashAttention


def attention(q, k, v, causal=False, scale=None, window=(-1, -1), softcap=0.0):
    """Exact attention over (B, T, H, D) tensors, float32 math, FlashAttention's masks; K/V may have fewer heads."""
    import torch

    dtype = q.dtype
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    hq, hk = qf.shape[1], kf.shape[1]
    if hk != hq:
        kf = kf.repeat_interleave(hq // hk, dim=1)
        vf = vf.repeat_interleave(hq // hk, dim=1)
    tq, tk = qf.shape[2], kf.shape[2]
    s = (qf @ kf.transpose(-1, -2)) * (scale if scale is not None else qf.shape[-1] ** -0.5)
    if softcap and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(tq)[:, None] + (tk - tq)  # bottom-right aligned, as FlashAttention
    j = torch.arange(tk)[None, :]
    keep = torch.ones(tq, tk, dtype=torch.bool)
    left, right = (window if window is not None else (-1, -1))
    if causal:
        right = 0
    if right is not None and right >= 0:
        keep &= j <= i + right
    if left is not None and left >= 0:
        keep &= j >= i - left
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ vf).transpose(1, 2).to(dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    *a, return_attn_probs=False, **kw):
    out = attention(q, k, v, causal=causal, scale=softmax_scale, window=window_size, softcap=softcap)
    return (out, None, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                           *a, return_attn_probs=False, **kw):
    """Packed sequences (total, H, D): attention inside each [cu_seqlens[i], cu_seqlens[i+1]) block only."""
    import torch

    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
    cq, ck = [int(x) for x in cu_seqlens_q.tolist()], [int(x) for x in cu_seqlens_k.tolist()]
    for i in range(len(cq) - 1):
        a0, a1, b0, b1 = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if a1 > a0 and b1 > b0:
            out[a0:a1] = attention(q[None, a0:a1], k[None, b0:b1], v[None, b0:b1], causal=causal,
                                   scale=softmax_scale, window=window_size, softcap=softcap)[0]
    return (out, None, None) if return_attn_probs else out


def _install_flash_attn() -> None:
    for name in ("flash_attn", "flash_attn_interface", "flash_attn.flash_attn_interface", "flash_attn.cute",
                 "flash_attn_3", "flash_attn.cute.interface"):
        m = types.ModuleType(name)
        m.flash_attn_func = flash_attn_func
        m.flash_attn_varlen_func = flash_attn_varlen_func
        m.__shim__ = "compliance CPU shim"
        if "." in name:
            m.__package__ = name.rsplit(".", 1)[0]
        else:
            m.__path__ = []
        sys.modules[name] = m
    sys.modules["flash_attn"].cute = sys.modules["flash_attn.cute"]
    sys.modules["flash_attn"].flash_attn_interface = sys.modules["flash_attn.flash_attn_interface"]


# ---------------------------------------------------------------------------------------------------------------
# Triton


class _Anything:
    """A permissive stand-in for triton.language objects used at definition time (annotations, constants)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Anything(f"{self._name}.{item}")

    def __call__(self, *a, **k):
        if a and callable(a[0]) and len(a) == 1 and not k:
            return _kernel(a[0])
        return self

    def __getitem__(self, item):
        return self

    def __repr__(self):
        return f"<triton stand-in {self._name}>"


class _Kernel:
    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")
        self.__wrapped__ = fn

    def __getitem__(self, grid):
        return self.run

    def run(self, *a, **k):
        raise ShimRefusal(f"the entry launches the Triton kernel `{self.__name__}`, which cannot run on the CPU "
                          "(no eager fallback was taken)")

    __call__ = run


def _kernel(fn=None, **k):
    if fn is None:
        return _kernel
    return fn if isinstance(fn, _Kernel) else _Kernel(fn)


def _permissive(prefix: str):
    def getattr_(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(f"{prefix}.{name}")
    return getattr_


def _triton_modules() -> dict:
    def decorator_factory(*a, **k):
        if a and callable(a[0]) and len(a) == 1 and not k:
            return _kernel(a[0])
        return _kernel

    tri = types.ModuleType("triton")
    tri.__path__ = []
    tri.__shim__ = "compliance CPU shim: kernels cannot be launched"
    tri.__version__ = "3.0.0"
    tri.jit = decorator_factory
    tri.autotune = decorator_factory
    tri.heuristics = decorator_factory
    tri.Config = lambda *a, **k: (a, k)
    tri.cdiv = lambda a, b: -(-a // b)
    tri.next_power_of_2 = lambda n: 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
    lang = types.ModuleType("triton.language")
    lang.__path__ = []
    lang.__getattr__ = _permissive("tl")  # type: ignore[attr-defined]
    lang.constexpr = _Anything("tl.constexpr")
    tri.language = lang
    tools = types.ModuleType("triton.tools")
    tools.__path__ = []
    desc = types.ModuleType("triton.tools.tensor_descriptor")
    desc.TensorDescriptor = _Anything("TensorDescriptor")
    tools.tensor_descriptor = desc
    tri.tools = tools
    mods = {"triton": tri, "triton.language": lang, "triton.tools": tools, "triton.tools.tensor_descriptor": desc}
    for sub in ("runtime", "testing", "compiler", "language.extra", "language.math", "language.extra.cuda",
                "language.extra.libdevice"):
        m = types.ModuleType(f"triton.{sub}")
        m.__path__ = []
        m.__getattr__ = _permissive(f"triton.{sub}")  # type: ignore[attr-defined]
        mods[f"triton.{sub}"] = m
    tri.runtime, tri.testing, tri.compiler = mods["triton.runtime"], mods["triton.testing"], mods["triton.compiler"]
    return mods


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any other ``triton.*`` submodule imports as a permissive stand-in."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("triton.") and fullname not in sys.modules:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = types.ModuleType(spec.name)
        m.__path__ = []
        m.__getattr__ = _permissive(spec.name)  # type: ignore[attr-defined]
        return m

    def exec_module(self, module):
        pass


class _Missing(importlib.abc.MetaPathFinder):
    """Makes the named top-level modules unimportable, as on a machine that lacks them."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return None


def _install_triton(mode: str) -> None:
    for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
        del sys.modules[name]
    if mode == "refuse":
        sys.modules.update(_triton_modules())
        sys.meta_path.insert(0, _StandIns())
    else:
        sys.meta_path.insert(0, _Missing(["triton"]))


# ---------------------------------------------------------------------------------------------------------------


def install(triton: str = "missing", float32: bool = True):
    """Install every shim; returns the torch-function mode to enter around the entry's run. ``float32``: modules
    asked for half precision keep float32 weights."""
    import torch
    import torch._dynamo  # noqa: F401 - imported before any Triton stand-in: torch decides here it has no Triton
    import torch._inductor.config  # noqa: F401

    torch.set_num_threads(1)
    _install_cuda(float32)
    _install_compile()
    _install_distributed()
    _install_flash_attn()
    _install_triton(triton)
    return _device_mode()
