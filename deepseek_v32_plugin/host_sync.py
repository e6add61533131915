"""Find host syncs and count kernel launches on the device dispatch path, on any device (CPU included).

A decode step on a GPU must not wait for the device: no `.item()`, no op whose output shape depends on
tensor contents (`nonzero`, `masked_select`, `unique`, boolean-mask indexing, `repeat_interleave` without
`output_size`), no device-to-host copy (`.cpu()`, `.tolist()`, `.numpy()`, `.to("cpu")`). On CPU these
cost nothing, so CPU tests cannot time them; they can see them:

    with SyncGuard():            # raises HostSyncError at the first syncing op issued by plugin code
        model(...)
    with SyncGuard(raise_on_sync=False) as g:    # or record: g.syncs, g.ops, g.launches
        model(...)

An op counts as issued by the code of the innermost stack frame outside torch (and outside Triton's
interpreter): plugin code outside the `naive.py` references is "plugin" (a sync there fails), a `naive.py`
frame is "reference" (the plain-PyTorch references loop and sync by design), anything else (the engine's
own CPU paths, tests, module-level code run at import) is "other". Tensors the engine hands over as host copies (e.g. SGLang's
`seq_lens_cpu`) can be declared with `host=[...]`: ops on them, and on what is computed from them alone, are
host work, not syncs. Kernel launches: every aten op that computes (not views, allocations or metadata) plus
every Triton launch (`g.launches`, by kernel name). `DSV32_SYNC_CHECK=1` (raise) or `DSV32_SYNC_REPORT=PATH`
(record, one JSON line per step) makes the engine adapters run each decode step's forward inside a SyncGuard
(a debugging aid; tests/test_host_sync.py, integration_tests/*/test_*_no_sync.py and benchmarks/launches.py
use it).
"""
from __future__ import annotations

import contextlib
import os
import sys
import weakref
from collections import Counter
from typing import Iterable, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

aten = torch.ops.aten
_PKG = os.path.dirname(os.path.abspath(__file__))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))
_SKIP = (_TORCH, os.path.abspath(__file__), os.path.dirname(contextlib.__file__) + os.sep + "contextlib.py")

# ops whose output shape or value reaches the host
_SYNC_OPS = {getattr(aten, n).default for n in ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2",
                                                 "unique_dim", "unique_consecutive", "argwhere", "bincount")}
# tensor methods that copy to the host (invisible to the dispatcher when the tensor already is on the CPU)
_D2H_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}
# ops that launch no kernel: views, allocations, metadata
_NO_KERNEL = {"view", "_unsafe_view", "reshape", "as_strided", "t", "transpose", "permute", "unsqueeze", "squeeze",
              "expand", "slice", "select", "detach", "alias", "split", "split_with_sizes", "unbind", "chunk",
              "narrow", "empty", "empty_like", "empty_strided", "lift_fresh", "_reshape_alias", "view_as_real",
              "view_as_complex", "unfold", "diagonal", "_to_copy_noop", "set_", "resize_", "is_same_size",
              "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim", "size", "stride",
              "movedim", "flatten", "unflatten", "real", "imag", "conj", "_conj", "_neg_view"}


class HostSyncError(RuntimeError):
    pass


_FILE_KIND: dict = {}   # co_filename -> None (skip: torch, this module, Triton's interpreter) / kind / "other"


def _file_kind(filename: str):
    k = _FILE_KIND.get(filename)
    if k is None and filename not in _FILE_KIND:
        fn = os.path.abspath(filename)
        if fn.startswith(_SKIP) or "triton" + os.sep + "runtime" + os.sep + "interpreter" in fn:
            k = None
        elif fn.startswith(_PKG):
            k = ("reference" if os.path.basename(fn) == "naive.py" else "plugin",
                 os.path.relpath(fn, os.path.dirname(_PKG)))
        else:
            k = ("other", fn)
        _FILE_KIND[filename] = k
    return k


def _issuer() -> tuple[str, str]:
    """(kind, 'file:line in func') of the innermost frame outside torch / this module / Triton's interpreter."""
    f = sys._getframe(2)
    while f is not None:
        k = _file_kind(f.f_code.co_filename)
        if k is not None:
            # module-level code runs once, at import (e.g. a constant computed with torch): not a step's work
            kind = "other" if f.f_code.co_name == "<module>" else k[0]
            return kind, f"{k[1]}:{f.f_lineno} in {f.f_code.co_name}"
        f = f.f_back
    return "other", "?"


def _layer_kind() -> str:
    """'moe' / 'dense' inside an adapter's DecoderLayer.forward (by its mlp's class), else 'model'."""
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_name == "forward" and (_file_kind(f.f_code.co_filename) or ("",))[0] == "plugin":
            me = f.f_locals.get("self")
            if type(me).__name__ == "DecoderLayer":
                return "moe" if type(getattr(me, "mlp", None)).__name__ == "MoE" else "dense"
        f = f.f_back
    return "model"


def _tensors(x) -> list:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for y in x for t in _tensors(y)]
    if isinstance(x, dict):
        return [t for y in x.values() for t in _tensors(y)]
    return []


def _sync_reason(func, args, kwargs) -> Optional[str]:
    if func in _SYNC_OPS:
        return func.name()
    name = func._schema.name.split("::")[-1]
    if name in ("index", "_index_put_impl_", "index_put", "index_put_"):
        idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx or ()):
            return f"{func.name()} with a boolean mask"
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    if name in ("_to_copy", "copy_", "to"):
        src = args[1] if name == "copy_" else args[0]
        dst_dev = args[0].device if name == "copy_" else kwargs.get("device")
        if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_dev is not None and \
                torch.device(dst_dev).type == "cpu":
            return f"{func.name()}: device-to-host copy"
    return None


class _GuardMode:
    """A torch mode reporting to one SyncGuard (both modes below)."""

    def __init__(self, guard: "SyncGuard"):
        super().__init__()
        self.g = guard


class _Dispatch(_GuardMode, TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        g = self.g
        ins = _tensors(args) + _tensors(kwargs)
        host = bool(ins) and all(g._is_host(t) for t in ins)
        kind, where = _issuer()
        reason = _sync_reason(func, args, kwargs)
        if reason is not None and not host:
            g._sync(kind, where, reason)
        name = func._schema.name.split("::")[-1]
        # a composite op that returned its input (`.to` / `.contiguous` with nothing to do) launched nothing
        noop = not name.endswith("_") and bool(args) and out is args[0]
        if not host and not noop and name not in _NO_KERNEL and not name.startswith("_has_"):
            g.ops[kind] += 1
            g.op_names[(kind, name)] += 1
            if g.by_layer:
                g.layer_ops[(_layer_kind(), kind)] += 1
        if host and func._schema.name.split("::")[-1] not in ("copy_",) and not name.endswith("_"):
            for t in _tensors(out):
                g._mark_host(t)
        return out


class _Function(_GuardMode, TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _D2H_METHODS and args and isinstance(args[0], torch.Tensor) and not self.g._is_host(args[0]):
            kind, where = _issuer()
            self.g._sync(kind, where, f"Tensor.{func.__name__}: device-to-host copy")
        elif func is torch.Tensor.to and args and isinstance(args[0], torch.Tensor) and not self.g._is_host(args[0]):
            # an explicit "cpu" string: on a CPU run `.to(t.device)` names the CPU too, and is no host copy
            dev = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
            if isinstance(dev, str) and torch.device(dev).type == "cpu":
                kind, where = _issuer()
                self.g._sync(kind, where, "Tensor.to('cpu'): device-to-host copy")
        return func(*args, **kwargs)


class SyncGuard:
    """Context manager; see the module docstring. raise_on_sync: raise HostSyncError at the first sync
    issued by plugin code (else record it in .syncs as (kind, where, reason)). by_layer: also count ops and
    launches per adapter decoder layer kind (moe / dense; 'model' outside the layers)."""

    def __init__(self, raise_on_sync: bool = True, host: Iterable[torch.Tensor] = (), by_layer: bool = False):
        self.raise_on_sync = raise_on_sync
        self.syncs: list[tuple[str, str, str]] = []
        self.ops: Counter = Counter()          # computing aten ops by issuer kind
        self.op_names: Counter = Counter()     # (kind, aten op name) -> count
        self.launches: Counter = Counter()     # Triton kernel name -> launches
        self.by_layer = by_layer
        self.layer_ops: Counter = Counter()    # (layer kind: moe / dense / model, issuer kind) -> computing aten ops
        self.layer_launches: Counter = Counter()   # layer kind -> Triton launches
        self._host: dict = {}
        for t in host:
            self._mark_host(t)
        self._stack: Optional[contextlib.ExitStack] = None

    def _mark_host(self, t: torch.Tensor) -> None:
        self._host[id(t)] = weakref.ref(t)

    def _is_host(self, t: torch.Tensor) -> bool:
        r = self._host.get(id(t))
        return r is not None and r() is t

    def _sync(self, kind: str, where: str, reason: str) -> None:
        self.syncs.append((kind, where, reason))
        if self.raise_on_sync and kind == "plugin":
            raise HostSyncError(f"host sync on the device path: {reason} at {where}")

    def plugin_syncs(self) -> list:
        return [s for s in self.syncs if s[0] == "plugin"]

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(_count_triton_launches(self))
        self._stack.enter_context(_Function(self))
        self._stack.enter_context(_Dispatch(self))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False


_ACTIVE: list = []


@contextlib.contextmanager
def _count_triton_launches(guard: SyncGuard):
    """Count Triton launches (compiled or interpreted) and run the interpreter outside the modes: its own
    host copies and numpy work are not the kernel's device ops."""
    try:
        from triton.runtime import interpreter, jit
    except ImportError:
        yield
        return
    _ACTIVE.append(guard)
    patched = []
    for cls in (interpreter.InterpretedFunction, jit.JITFunction):
        real = cls.run
        if getattr(real, "_dsv32_counting", False):
            continue

        def run(self, *a, _real=real, **kw):
            for g in _ACTIVE:
                g.launches[getattr(self, "__name__", None) or getattr(self.fn, "__name__", "?")] += 1
                if g.by_layer:
                    g.layer_launches[_layer_kind()] += 1
            with _disable_current_modes(), torch._C.DisableTorchFunction():
                return _real(self, *a, **kw)
        run._dsv32_counting = True
        cls.run = run
        patched.append((cls, real))
    try:
        yield
    finally:
        for cls, real in patched:
            cls.run = real
        _ACTIVE.remove(guard)


# read once at import (in every engine process): the adapters' forward stays free of the check otherwise.
# DSV32_SYNC_CHECK=1 raises at the first sync; DSV32_SYNC_REPORT=PATH records instead and appends one JSON
# line per decode step to PATH (syncs, computing aten ops by issuer, Triton launches by kernel).
SYNC_REPORT = os.environ.get("DSV32_SYNC_REPORT") or None
SYNC_CHECK = os.environ.get("DSV32_SYNC_CHECK", "0") == "1" or SYNC_REPORT is not None


class _StepGuard(SyncGuard):
    def __init__(self, tag: str, host):
        super().__init__(raise_on_sync=SYNC_REPORT is None, host=host, by_layer=SYNC_REPORT is not None)
        self.tag = tag

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if SYNC_REPORT is not None and exc[0] is None:
            import json
            rec = dict(tag=self.tag, pid=os.getpid(), syncs=self.syncs, ops=dict(self.ops),
                       op_names={f"{k}:{n}": c for (k, n), c in sorted(self.op_names.items())},
                       launches=dict(self.launches), layer_launches=dict(self.layer_launches),
                       layer_ops={f"{la}:{k}": c for (la, k), c in sorted(self.layer_ops.items())})
            with open(SYNC_REPORT, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return False


def decode_step_guard(is_decode: bool, tag: str = "", host: Iterable[torch.Tensor] = ()):
    """The engine adapters' hook around a decode step's forward (see SYNC_CHECK above); tag names the step
    in the report (e.g. engine and batch size)."""
    return _StepGuard(tag, host) if SYNC_CHECK and is_decode else contextlib.nullcontext()
