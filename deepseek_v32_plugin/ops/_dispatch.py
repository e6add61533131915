"""One dispatch for every op: CUDA extension -> Triton -> plain-PyTorch reference.

Each op family's `__init__.py` validates its inputs, then calls `resolve(op, device)` to get the
implementation. Implementations share the exact signature of the `naive_*` reference:
  - torch:  deepseek_v32_plugin.ops.<family>.blocked.<op> where the family has one (the reference's math in
            bounded blocks: what the engines run on CPU), else deepseek_v32_plugin.ops.<family>.naive.naive_<op>
  - triton: deepseek_v32_plugin.triton_kernels.<family>.<op>
  - cuda:   deepseek_v32_plugin.ops.<family>.cuda.<op>   (JIT-built torch extension from csrc/; the build is
            shared: ops/_cuda.py)

Choice: `backend=` argument > env DSV32_BACKEND_<OP> (upper-case op name) > env DSV32_BACKEND >
auto. Auto on a CUDA tensor tries cuda, then triton, then torch; on CPU it uses torch, or triton then
torch with DSV32_CPU_TRITON=1 (Triton's CPU interpreter: set TRITON_INTERPRET=1 too; for running our Triton
kernels inside an engine on CPU). A forced backend that cannot run raises;
an auto choice that falls back warns once, naming the op and why. Falling back happens at two points:
when a backend cannot load (not built, wrong GPU), and per call when a kernel launcher raises
`Unsupported` for inputs past its limits (e.g. a top-k larger than the kernel's capacity).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Callable, Optional

import torch

BACKENDS = ("cuda", "triton", "torch")

_FAMILY_OF: dict[str, str] = {}
_cache: dict[tuple, Callable] = {}
_warned: set = set()


class BackendUnavailable(RuntimeError):
    """Raised by a backend module that cannot load here (not built, wrong GPU, ...)."""


class Unsupported(ValueError):
    """Raised by a kernel launcher, before launching, for inputs past the kernel's limits."""


def _warn_once(key, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"deepseek_v32_plugin: {msg}", stacklevel=3)


def register_ops(family: str, ops: list[str]) -> None:
    for op in ops:
        _FAMILY_OF[op] = family


def _load(op: str, backend: str) -> Callable:
    family = _FAMILY_OF[op]
    if backend == "torch":
        name = f"deepseek_v32_plugin.ops.{family}.blocked"
        fn = getattr(importlib.import_module(name), op, None) if importlib.util.find_spec(name) else None
        if fn is not None:
            return fn
        mod = importlib.import_module(f"deepseek_v32_plugin.ops.{family}.naive")
        return getattr(mod, f"naive_{op}")
    modname = (f"deepseek_v32_plugin.triton_kernels.{family}" if backend == "triton"
               else f"deepseek_v32_plugin.ops.{family}.cuda")
    try:
        mod = importlib.import_module(modname)
    except ImportError as e:
        raise BackendUnavailable(f"{backend} backend cannot be imported ({e})") from e
    if backend == "cuda":  # one extension serves every family: its build / availability is shared
        from . import _cuda
        if not _cuda.is_available():
            raise BackendUnavailable(_cuda.unavailable_reason())
    fn = getattr(mod, op, None)
    if fn is None:
        raise BackendUnavailable(f"{backend} backend has no {op}")
    return fn


def requested_backend(op: str, backend: Optional[str] = None) -> Optional[str]:
    b = backend or os.environ.get(f"DSV32_BACKEND_{op.upper()}") or os.environ.get("DSV32_BACKEND")
    if b in (None, "", "auto"):
        return None
    if b not in BACKENDS:
        raise ValueError(f"backend={b!r} for op {op}: choose one of {BACKENDS} or 'auto'")
    return b


# (op, backend) pairs the auto order skips: kernels compile-checked in CI but not yet run on a GPU. They
# serve calls only when asked for (backend=..., DSV32_BACKEND_<OP>=..., DSV32_BACKEND=...).
CUDA_OPT_IN = {("sparse_mla_prefill", "cuda")}


def resolve(op: str, device: torch.device, backend: Optional[str] = None) -> Callable:
    forced = requested_backend(op, backend)
    if forced is not None:
        key = (op, forced)
        if key not in _cache:
            _cache[key] = _load(op, forced)  # errors propagate: the user asked for this backend
        return _cache[key]
    if device.type == "cuda":
        order = ("cuda", "triton", "torch")
    elif os.environ.get("DSV32_CPU_TRITON", "0") == "1":
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise BackendUnavailable("DSV32_CPU_TRITON=1 runs our Triton kernels on CPU through Triton's "
                                     "interpreter: set TRITON_INTERPRET=1 too")
        order = ("triton", "torch")
    else:
        order = ("torch",)
    key = (op, device.type, order)
    if key in _cache:
        return _cache[key]
    chain, reasons = [], []
    for b in order:
        if (op, b) in CUDA_OPT_IN:
            continue
        try:
            chain.append((b, _load(op, b)))
        except BackendUnavailable as e:
            reasons.append(f"{b}: {e}")
    if not chain:
        raise BackendUnavailable(f"no backend for op {op}: {'; '.join(reasons)}")
    if reasons:
        _warn_once((op, "load"), f"op {op} falls back to the {chain[0][0]} backend ({'; '.join(reasons)})")
    _cache[key] = chain[0][1] if len(chain) == 1 else _with_fallback(op, chain)
    return _cache[key]


def _with_fallback(op: str, chain: list) -> Callable:
    """Call the first backend; on `Unsupported` (raised before any launch) try the next, warning once."""
    def call(*args):
        for i, (b, fn) in enumerate(chain):
            try:
                return fn(*args)
            except Unsupported as e:
                if i + 1 == len(chain):
                    raise
                _warn_once((op, b, "unsupported"), f"op {op}: the {b} backend cannot serve this call ({e}); "
                           f"using {chain[i + 1][0]}")
    call.__name__ = f"{op}_with_fallback"
    return call


# ---------- shared input checks: one clear error naming the tensor ----------

def check_tensor(name: str, t, *, dtype=None, dims: Optional[int] = None, shape: Optional[tuple] = None,
                 contiguous: bool = False, device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, (tuple, list)) else (dtype,)
        if t.dtype not in allowed:
            raise TypeError(f"{name}.dtype={t.dtype}: expected {' or '.join(str(d) for d in allowed)}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if shape is not None:
        if len(shape) != t.dim() or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name} has shape {list(t.shape)}, expected {want}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()})")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
