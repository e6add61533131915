"""Shared Triton helpers for FP8 e4m3 without hardware FP8 (sm_80) and for exact ue8m0 scales.

Triton rejects `fp8e4nv` below sm_89, so the sm_80 paths move FP8 as raw bytes (uint8) and
encode/decode them with integer arithmetic. Both helpers are exact (round-to-nearest-even,
saturation at +-448, subnormals kept), so they also sidestep the interpreter's fp32->fp8 cast bugs.
"""
from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl

from deepseek_v32_plugin.ops._dispatch import Unsupported

FP8_MAX = 448.0


def config_override(env: str, cfg: dict) -> dict:
    """Launch-config override for tuning on a GPU without editing code: env holds a JSON object whose keys
    replace the shipped config's (e.g. DSV32_MOE_GEMM_CONFIG='{"BLOCK_M": 64, "num_stages": 5}')."""
    raw = os.environ.get(env)
    if not raw:
        return cfg
    extra = json.loads(raw)
    unknown = set(extra) - set(cfg)
    if unknown:
        raise ValueError(f"{env}: unknown keys {sorted(unknown)} (known: {sorted(cfg)})")
    return dict(cfg, **extra)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def require(cond: bool, msg: str) -> None:
    """Launcher check of a kernel limit; `Unsupported` lets the ops dispatch fall back to another backend."""
    if not cond:
        raise Unsupported(msg)


def require_device(op: str, t: torch.Tensor) -> None:
    """The Triton backend runs on CUDA tensors (or anywhere under TRITON_INTERPRET=1)."""
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(f"{op}: tensors are on {t.device}; the Triton backend needs CUDA tensors "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")


def native_fp8(device: torch.device) -> bool:
    """True where Triton's fp8e4nv (casts, tl.dot) is available: sm_89+ (and the interpreter).
    DSV32_TRITON_FP8_BYTES=1 forces the byte-decoding sm_80 path; tests also monkeypatch this."""
    if os.environ.get("DSV32_TRITON_FP8_BYTES", "0") == "1":
        return False
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 9)


def capability(device: torch.device) -> tuple[int, int]:
    """Compute capability picking the launch config; the interpreter uses the sm_90 configs."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)


def fp8_arg(t: torch.Tensor, native: bool) -> torch.Tensor:
    """An e4m3 tensor as the kernel takes it: itself (fp8e4nv) or its bytes (uint8) below sm_89."""
    return t if native else t.view(torch.uint8)


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def ue8m0_scale_bits(amax):
    """fp32 amax -> (scale, 1/scale) with scale = 2^ceil(log2(max(amax, 1e-4) / 448)), exactly.

    amax = 1.f * 2^e: amax/448 <= 2^(e-8) iff 1.f <= 1.75, else it needs 2^(e-7). No division or log2,
    so no approximate-math rounding at exact powers of two.
    """
    a = tl.maximum(amax, 1e-4)
    bits = a.to(tl.int32, bitcast=True)
    e = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    k = e - 8 + (mant > 0x600000).to(tl.int32)
    scale = (k << 23).to(tl.float32, bitcast=True)
    inv = ((254 - k) << 23).to(tl.float32, bitcast=True)
    return scale, inv


@triton.jit
def f32_to_e4m3_bits(x):
    """fp32 -> e4m3fn byte (as int32 0..255): round to nearest even, saturate at +-448, keep subnormals."""
    x = tl.minimum(tl.maximum(x, -448.0), 448.0)
    bits = x.to(tl.int32, bitcast=True)
    a = tl.abs(x)
    abits = a.to(tl.int32, bitcast=True)
    # normal range [2^-6, 448]: keep 3 mantissa bits with RNE on the bit pattern; rebias exponent 127 -> 7
    norm = ((abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal range: code = rne(a * 2^9); adding 2^23 makes the fp32 adder do the rounding
    sub = (a * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    code = tl.where(a < 0.015625, sub, norm)
    return code | ((bits >> 24) & 0x80)


@triton.jit
def e4m3_bits_to_f16(b):
    """e4m3fn byte (any int type) -> fp16 equal to value / 256 (exact, subnormals included).

    The 4-bit exponent and 3-bit mantissa sit at fp16's exponent/mantissa boundary; fp16's bias is 15
    vs 7, hence the 2^-8 factor that callers fold into their scales.
    """
    v = b.to(tl.int32) & 0xFF
    h = ((v & 0x80) << 8) | ((v & 0x7F) << 7)
    return h.to(tl.int16).to(tl.float16, bitcast=True)
