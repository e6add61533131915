"""CUDA backend of the FP8 MoE ops: wrappers over `torch.ops.dsv32.*` (csrc/fp8_moe/, csrc/api/fp8_moe.h;
silu_and_mul_fp8_quant's kernel is in csrc/fp8_quant/fp8_quant.cu).

Same positional signatures as the naive_* references (ops/_dispatch.py finds them here). The build and the
availability check are shared: ops/_cuda.py.
"""
from __future__ import annotations

import torch

from .._cuda import _i32

OP_NAMES = ("fp8_grouped_gemm_nt_contiguous", "fp8_grouped_gemm_nt_masked", "silu_and_mul_fp8_quant")


def register_fakes(fake) -> None:
    @fake("fp8_grouped_gemm_nt_contiguous")
    def _(a, a_scale, b, b_scale, m_indices, out_dtype):
        return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)

    @fake("fp8_grouped_gemm_nt_masked")
    def _(a, a_scale, b, b_scale, masked_m, out_dtype):
        return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=out_dtype)

    @fake("silu_and_mul_fp8_quant")
    def _(x, m_indices=None):
        n = x.shape[1] // 2
        return x.new_empty((x.shape[0], n), dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], n // 128),
                                                                                      dtype=torch.float32)


def _gemm_dtype(out_dtype):
    return torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32


def fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, out_dtype=torch.bfloat16):
    out = torch.ops.dsv32.fp8_grouped_gemm_nt_contiguous(a.contiguous(), a_scale.float().contiguous(),
                                                         b.contiguous(), b_scale.float().contiguous(),
                                                         _i32(m_indices), _gemm_dtype(out_dtype))
    return out if out.dtype == out_dtype else out.to(out_dtype)


def fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, out_dtype=torch.bfloat16):
    out = torch.ops.dsv32.fp8_grouped_gemm_nt_masked(a.contiguous(), a_scale.float().contiguous(),
                                                     b.contiguous(), b_scale.float().contiguous(),
                                                     _i32(masked_m), _gemm_dtype(out_dtype))
    return out if out.dtype == out_dtype else out.to(out_dtype)


def silu_and_mul_fp8_quant(x, m_indices=None):
    return torch.ops.dsv32.silu_and_mul_fp8_quant(x.contiguous(), None if m_indices is None else _i32(m_indices))
