"""CUDA backend of the FP8 quantization ops: wrappers over `torch.ops.dsv32.*` (csrc/fp8_quant/,
csrc/api/fp8_quant.h; fp8_gemm_nt runs the fp8_moe grouped GEMM with one group).

Same positional signatures as the naive_* references (ops/_dispatch.py finds them here). The build and the
availability check are shared: ops/_cuda.py.
"""
from __future__ import annotations

import torch

from .._dispatch import Unsupported
from ..fp8_moe.cuda import fp8_grouped_gemm_nt_contiguous

OP_NAMES = ("fp8_quant_act", "fp8_gemm_nt")


def register_fakes(fake) -> None:
    @fake("fp8_quant_act")
    def _(x, group, ue8m0):
        return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
                x.new_empty((*x.shape[:-1], x.shape[-1] // group), dtype=torch.float32))


def fp8_quant_act(x, group=128, ue8m0=True):
    if group != 128:  # the kernel is written for 128-wide groups (the only size the model uses)
        raise Unsupported(f"the CUDA activation quantizer serves group=128, got {group}")
    return torch.ops.dsv32.fp8_quant_act(x.contiguous(), 128, bool(ue8m0))


def fp8_gemm_nt(a, a_scale, b, b_scale, out_dtype=torch.bfloat16):
    """Dense block-scaled FP8 GEMM = the grouped kernel with one group (every row in group 0)."""
    m_indices = torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)
    return fp8_grouped_gemm_nt_contiguous(a, a_scale, b.unsqueeze(0), b_scale.unsqueeze(0), m_indices, out_dtype)
