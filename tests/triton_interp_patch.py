"""Test-only fixes for numeric bugs of Triton's CPU interpreter (TRITON_INTERPRET=1), triton 3.6-3.9.

The interpreter keeps bf16 as raw uint16 and fp8 as raw uint8 numpy arrays and converts them with its
own bit-twiddling (`_convert_float`), which (CPU_TESTING.md, triton-lang/triton#11584):
  - multiplies the raw bf16 bit patterns in `tl.dot`;
  - truncates fp32 -> bf16 instead of rounding to nearest even;
  - mis-rounds fp32 -> fp8, flushes fp8 subnormals and does not saturate (the GPU's cvt is `.satfinite`);
  - int <-> bf16/fp8 casts reinterpret storage (`astype` on the uint16/uint8 payload);
  - (3.6 only) `range()` bounds computed in the kernel fail to convert to int.
`apply()` replaces the interpreter builder's float casts and `create_dot` with torch conversions that
match the GPU: round to nearest even, saturate to the finite range for fp8 (NaN stays NaN), keep
subnormals; dots convert operands to fp32 exactly and accumulate in fp32.

Kernels should still do arithmetic in fp32 (`x.to(tl.float32)` first): elementwise bf16 arithmetic in
the interpreter also works on raw bits and is not patched here.
"""
from __future__ import annotations

import numpy as np
import torch

_APPLIED = False

# fp8 finite maxima for .satfinite casts
_SAT = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def _torch_dtype(tl_dtype):
    import triton.language as tl
    table = {
        tl.float32: torch.float32, tl.float16: torch.float16, tl.bfloat16: torch.bfloat16,
        tl.float64: torch.float64, tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2,
        tl.float8e4b8: torch.float8_e4m3fnuz, tl.float8e5b16: torch.float8_e5m2fnuz,
        tl.int8: torch.int8, tl.int16: torch.int16, tl.int32: torch.int32, tl.int64: torch.int64,
        tl.uint8: torch.uint8, tl.int1: torch.bool,
    }
    return table.get(tl_dtype)


def _storage_int(dt: torch.dtype):
    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.empty(0, dtype=dt).element_size()]


def _to_torch(data: np.ndarray, tdt: torch.dtype) -> torch.Tensor:
    arr = np.ascontiguousarray(data)
    if tdt in (torch.bfloat16,) or tdt.is_floating_point and torch.empty(0, dtype=tdt).element_size() == 1:
        sint = _storage_int(tdt)
        np_int = {torch.uint8: np.uint8, torch.int16: np.int16}[sint]
        return torch.from_numpy(arr.view(np_int).copy()).view(tdt)
    return torch.from_numpy(arr.copy())


def _to_numpy(t: torch.Tensor, np_dtype) -> np.ndarray:
    if t.dtype == torch.bfloat16 or (t.dtype.is_floating_point and t.element_size() == 1):
        return t.view(_storage_int(t.dtype)).numpy().view(np_dtype)
    return t.numpy().astype(np_dtype, copy=False)


def _convert(src_data, src_tl, dst_tl, rounding_mode=None):
    """Value conversion src -> dst through torch; returns the numpy storage for dst, or None to defer."""
    from triton.runtime.interpreter import _get_np_dtype
    from triton._C.libtriton import ir as _ir
    s, d = _torch_dtype(src_tl), _torch_dtype(dst_tl)
    if s is None or d is None:
        return None
    if rounding_mode is not None and rounding_mode != _ir.ROUNDING_MODE.RTNE:
        return None  # RTZ etc.: leave to the interpreter's own bit conversion
    x = _to_torch(src_data, s)
    if d.is_floating_point and s.is_floating_point:
        if d in _SAT:
            x = x.float()
            m = _SAT[d]
            x = torch.where(torch.isnan(x), x, x.clamp(-m, m))
        y = x.to(d)
    elif d.is_floating_point:  # int -> float
        y = x.to(torch.float64).to(d) if d != torch.float64 else x.to(d)
    elif s.is_floating_point:  # float -> int: truncate toward zero like the GPU
        y = x.float().trunc().to(torch.int64).to(d) if d != torch.bool else (x != 0)
    else:
        return None
    return _to_numpy(y.reshape(np.shape(src_data)), _get_np_dtype(dst_tl))


def _is_special(tl_dtype) -> bool:
    return tl_dtype.is_bf16() or tl_dtype.is_fp8()


def apply() -> None:
    """Install the fixes into triton.runtime.interpreter.InterpreterBuilder (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from triton.runtime import interpreter as I

    B = I.InterpreterBuilder
    orig_cast_impl = B.cast_impl
    orig_fp_to_fp = B.create_fp_to_fp
    orig_dot = B.create_dot

    def cast_impl(self, src, dst_type):
        s, d = src.dtype.scalar, dst_type.scalar
        if (s.is_floating() or d.is_floating()) and (_is_special(s) or _is_special(d) or
                                                    (s.is_floating() and d.is_floating())):
            out = _convert(src.data, s, d)
            if out is not None:
                return I.TensorHandle(out, d)
        return orig_cast_impl(self, src, dst_type)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        s, d = src.dtype.scalar, dst_type.scalar
        out = _convert(src.data, s, d, rounding_mode)
        if out is not None:
            return I.TensorHandle(out, d)
        return orig_fp_to_fp(self, src, dst_type, rounding_mode)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        at, bt = a.dtype.scalar, b.dtype.scalar
        if at.is_floating() and bt.is_floating() and d.dtype.scalar.is_floating():
            a32 = _to_torch(a.data, _torch_dtype(at)).to(torch.float32).numpy()
            b32 = _to_torch(b.data, _torch_dtype(bt)).to(torch.float32).numpy()
            acc = np.matmul(a32, b32, dtype=np.float32)
            return I.TensorHandle((acc + d.data.astype(np.float32)).astype(d.data.dtype), d.dtype.scalar)
        return orig_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    # triton 3.6: `int(tensor)` (range bounds computed in the kernel) fails on 1-element arrays (3.7 squeezes)
    orig_patch_tensor = I._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        orig_patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    I._patch_lang_tensor = _patch_lang_tensor

    # speed, not numerics: the interpreter runs tl.sort's bitonic network with a Python-level xor_sum
    # reduce per element (~25 s for 2048 int64 keys); numpy sorts the same values identically.
    import triton.language as tl
    import triton.language.standard as tls

    def _np_sort(x, dim=None, descending=0, **_):
        desc = bool(getattr(descending, "value", descending))
        data = np.asarray(x.handle.data)
        axis = -1 if dim is None else int(getattr(dim, "value", dim))
        out = np.sort(data, axis=axis, kind="stable")
        if desc:
            out = np.flip(out, axis=axis)
        return tl.core.tensor(I.TensorHandle(np.ascontiguousarray(out), x.handle.dtype), x.type)

    tl.sort = _np_sort
    tls.sort = _np_sort

    B.cast_impl = cast_impl
    for name in ("create_si_to_fp", "create_ui_to_fp", "create_fp_to_si", "create_fp_to_ui",
                 "create_fp_ext", "create_fp_trunc"):
        setattr(B, name, lambda self, src, dst_type: self.cast_impl(src, dst_type))
    B.create_fp_to_fp = create_fp_to_fp
    B.create_dot = create_dot
    _APPLIED = True
