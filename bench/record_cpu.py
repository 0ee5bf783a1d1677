"""The 1.0611 record's own train_gpt.py (openai/parameter-golf, records/track_10min_16mb/2026-04-27_SP8192_LQER_
SparseGate_BOSSmearFix_9HpStack_1.0611), loaded by path on a CPU for equivalence checks. Never committed here.

Only what cannot run on a CPU is replaced, each by the formula it computes:
- `flash_attn_interface.flash_attn_func` (FA3, causal)         -> SDPA with is_causal=True (GQA via enable_gqa)
- `flash_attn_interface.flash_attn_varlen_func` (cu_seqlens)    -> SDPA on the flat sequence with a block-diagonal
  causal mask: position i sees j iff j <= i and both lie in the same [cu[k], cu[k+1]) segment
- the Triton softcapped cross-entropy kernel                    -> z = 2c * sigmoid(2x / c); loss = logsumexp(z) - z_y
  (eager; autograd gives the kernel's backward, (softmax(z) - onehot) * dz/dx)
- the Triton fused Linear + LeakyReLU(0.5)^2 kernel             -> leaky_relu(x W_up^T, 0.5)^2 W_down^T (eager)
- `@torch.compile` on the Newton-Schulz iteration               -> the same function, eager
- `torch.cuda.Stream` / `stream` / `current_stream` around the optimisers' step -> no-ops (one CPU stream)
`triton` itself is a stub module: its kernels are defined at import time but never launched.
The record's module global BOS_ID is set to 1, as its loaders do before the first forward pass.
"""
from __future__ import annotations

import contextlib
import sys
import types

import torch
import torch.nn.functional as F

from bench import common
from kitlib.scripts import module_name

STUB_MODULES = ("flash_attn_interface", "triton", "triton.language", "triton.tools", "triton.tools.tensor_descriptor")


def segment_ids(cu_seqlens: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the [cu[k], cu[k+1]) segment of each of n flat positions (padding entries of cu repeat n)."""
    return torch.searchsorted(cu_seqlens.to(torch.int64), torch.arange(n, dtype=torch.int64), right=True)


def sdpa_causal(q, k, v, mask=None):
    """q (B, T, H, D), k/v (B, T, Hkv, D) -> (B, T, H, D); causal, or the boolean `mask` (T, T) when given."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, is_causal=mask is None, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


def flash_attn_func(q, k, v, causal=True, **_):
    if not causal:
        raise NotImplementedError("the record only calls FA3 with causal=True")
    return sdpa_causal(q, k, v)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True,
                           window_size=(-1, -1), **_):
    """q (N, H, D) flat; segments from cu_seqlens; causal inside each segment, nothing across."""
    if not causal or tuple(window_size) != (-1, -1) or not torch.equal(cu_seqlens_q, cu_seqlens_k):
        raise NotImplementedError("the record only calls varlen FA3 causal, full window, q/k segments equal")
    n = q.size(0)
    seg = segment_ids(cu_seqlens_q, n)
    pos = torch.arange(n)
    mask = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    return sdpa_causal(q[None], k[None], v[None], mask)[0]


def softcapped_cross_entropy(logits, targets, softcap, reduction="mean"):
    """The fused kernel's formula: z = 2c sigmoid(2x/c) (= c tanh(x/c) + c), loss = lse(z) - z_target, fp32."""
    z = 2.0 * softcap * torch.sigmoid(logits.float() * (2.0 / softcap))
    losses = torch.logsumexp(z, dim=-1) - z.gather(1, targets.long()[:, None]).squeeze(1)
    return {"none": losses, "sum": losses.sum(), "mean": losses.mean()}[reduction]


def fused_leaky_relu2_mlp(x, w_up, w_down):
    return F.linear(F.leaky_relu(F.linear(x, w_up), negative_slope=0.5).square(), w_down)


def _stub(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    class _Any:  # tl.constexpr in annotations, tl.float32, ... : defined, never used on the CPU
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return self

        def __call__(self, *a, **k):
            return self

    if name == "flash_attn_interface":
        mod.flash_attn_func, mod.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    elif name == "triton":
        mod.jit = lambda fn=None, **_: fn if fn is not None else (lambda f: f)
        mod.cdiv = lambda a, b: -(-a // b)
    elif name == "triton.tools.tensor_descriptor":
        mod.TensorDescriptor = _Any()
    else:
        mod.__getattr__ = _Any().__getattr__
    return mod


def import_on_cpu(path):
    """A record's train_gpt.py executed anew (never a cached module) with its GPU-only imports stubbed
    (flash_attn_interface with the SDPA substitutes above, triton) and torch.compile as the identity while it
    loads; nothing of the module itself is replaced. One error line (`--other ...`) when the import fails."""
    sys.modules.pop(module_name(path), None)
    saved = {n: sys.modules.get(n) for n in STUB_MODULES}
    compile_fn = torch.compile  # eager instead (and torch's own triton probes never meet the stub)
    torch.compile = lambda fn=None, **_: fn if fn is not None else (lambda f: f)
    stubs = {n: _stub(n) for n in STUB_MODULES}
    for n, m in stubs.items():  # `import triton.language as tl` reads the attribute of the parent package
        if "." in n:
            parent, _, child = n.rpartition(".")
            setattr(stubs[parent], child, m)
    sys.modules.update(stubs)
    try:
        mod = common.import_other(path)
    finally:
        torch.compile = compile_fn
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return mod


def load(path):
    """The record's module with the CPU substitutes above, executed anew on every call: it reads the environment
    at import (its Hyperparameters' class attributes, TTT_LORA_ALPHA), so a module loaded under another
    configuration is never reused. Configurations are made per call with `hparams`."""
    mod = import_on_cpu(path)
    for name in ("GPT", "Optimizers", "_build_cu_seqlens", "Hyperparameters", "train_model"):
        if not hasattr(mod, name):
            raise common.BenchError(f"--other {path} has no {name}: not the 1.0611 record's train_gpt.py")
    mod.softcapped_cross_entropy = softcapped_cross_entropy
    mod.FusedLeakyReLUSquareMLP = fused_leaky_relu2_mlp
    mod.BOS_ID = 1
    return mod


def hparams(mod, overrides: dict):
    """A Hyperparameters instance of the record with attribute overrides (lower-case names, typed values)."""
    h = mod.Hyperparameters()
    for k, v in overrides.items():
        if not hasattr(h, k):
            raise common.BenchError(f"the record's Hyperparameters have no {k}")
        setattr(h, k, v)
    return h


@contextlib.contextmanager
def cpu_streams():
    """torch.cuda.Stream / stream / current_stream as no-ops while the record's Optimizers are built and stepped."""

    class _Stream:
        def wait_stream(self, _):
            pass

    saved = torch.cuda.Stream, torch.cuda.stream, torch.cuda.current_stream
    torch.cuda.Stream, torch.cuda.stream = _Stream, lambda _s: contextlib.nullcontext()
    torch.cuda.current_stream = lambda *_a, **_k: _Stream()
    try:
        yield
    finally:
        torch.cuda.Stream, torch.cuda.stream, torch.cuda.current_stream = saved


def closure(mod, outer: str, inner: str, **free):
    """A function nested in one of the record's functions (e.g. lr_mul inside train_model), rebuilt from its code
    object with the given values for its free variables, so the record's own code computes the figure."""
    code = next(c for c in getattr(mod, outer).__code__.co_consts if isinstance(c, types.CodeType) and c.co_name == inner)
    missing = set(code.co_freevars) - set(free)
    if missing:
        raise ValueError(f"{outer}.{inner} needs {sorted(missing)}")
    cells = tuple(types.CellType(free[n]) for n in code.co_freevars)
    return types.FunctionType(code, mod.__dict__, inner, None, cells)


@contextlib.contextmanager
def bfloat16_as_float32():
    """Tensor.bfloat16() returns float32 inside: the record's Muon keeps its momentum and Newton-Schulz iterate in
    bf16 on every device; with this its arithmetic is fp32, so a comparison measures the algorithm."""
    saved = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.float()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = saved
