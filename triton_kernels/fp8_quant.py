"""Triton kernels for FP8 e4m3 block quantization and the block-scaled FP8 GEMM (dense linears).

Semantics: deepseek_v32_plugin.ops.fp8_quant (naive.py defines them). Signatures equal the references:
  fp8_quant_act(x, group, ue8m0)                       -> (x_fp8 [..., K] e4m3, scale [..., K/group] fp32)
  fp8_gemm_nt(a, a_scale, b, b_scale, out_dtype)      -> dequant(a) @ dequant(b).T  [M, N]

FP8 on every GPU Triton supports: on sm_89+ the kernels use Triton's fp8e4nv type (cvt.satfinite, FP8
wgmma/mma). Below sm_89 Triton has no e4m3 type, so the kernels take the same bytes as uint8 and
  - encode fp32 -> e4m3 with integer arithmetic (`_fp8_util.f32_to_e4m3_bits`: RTNE, subnormals, saturation at 448),
  - decode e4m3 -> fp16 with two shifts (`_fp8_util.e4m3_bits_to_f16`: the value times 2^-8, exact) and run
    the dot in fp16 with fp32 accumulation; the 2^8 per operand is folded into the scales.
The path is picked at launch from torch.cuda.get_device_capability(); DSV32_TRITON_FP8_BYTES=1 forces
the byte path (tests run it under the interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._fp8_util import (capability, e4m3_bits_to_f16, f32_to_e4m3_bits, fp8_arg, native_fp8,  # noqa: F401
                        require, require_device, ue8m0_scale_bits)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
GROUP = 128

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# ----------------------------------------------------------------------------- activation quant

@triton.jit
def _fp8_quant_act_kernel(x_ptr, q_ptr, s_ptr, R, K, NG,
                          BLOCK_R: tl.constexpr, GROUP_SIZE: tl.constexpr, UE8M0: tl.constexpr,
                          NATIVE_FP8: tl.constexpr):
    i_r, i_g = tl.program_id(0), tl.program_id(1)
    o_r = i_r * BLOCK_R + tl.arange(0, BLOCK_R)
    o_c = i_g * GROUP_SIZE + tl.arange(0, GROUP_SIZE)
    m_r = o_r < R
    # [BLOCK_R, GROUP]
    b_x = tl.load(x_ptr + o_r[:, None].to(tl.int64) * K + o_c[None, :], mask=m_r[:, None], other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(b_x), axis=1)
    if UE8M0:
        scale, inv = ue8m0_scale_bits(amax)
        b_y = b_x * inv[:, None]
    else:
        scale = tl.div_rn(tl.maximum(amax, 1e-4), 448.0)
        b_y = tl.div_rn(b_x, tl.broadcast_to(scale[:, None], (BLOCK_R, GROUP_SIZE)))
    b_y = tl.minimum(tl.maximum(b_y, -448.0), 448.0)
    p_q = q_ptr + o_r[:, None].to(tl.int64) * K + o_c[None, :]
    if NATIVE_FP8:
        tl.store(p_q, b_y.to(tl.float8e4nv), mask=m_r[:, None])
    else:
        tl.store(p_q, f32_to_e4m3_bits(b_y).to(tl.uint8), mask=m_r[:, None])
    tl.store(s_ptr + o_r.to(tl.int64) * NG + i_g, scale, mask=m_r)


def fp8_quant_act(x: torch.Tensor, group: int = GROUP, ue8m0: bool = True):
    """x [..., K] float, contiguous -> (x_fp8 [..., K] e4m3, scale [..., K/group] fp32). See ops.fp8_quant."""
    require_device("fp8_quant_act", x)
    require(x.is_contiguous(), f"fp8_quant_act: x must be contiguous (strides {x.stride()})")
    require(group >= 16 and group & (group - 1) == 0, f"fp8_quant_act: group={group} must be a power of two >= 16")
    k = x.shape[-1]
    require(k % group == 0, f"fp8_quant_act: K={k} must be a multiple of group={group}")
    native = native_fp8(x.device)
    q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((*x.shape[:-1], k // group), dtype=torch.float32, device=x.device)
    r = x.numel() // k if k else 0
    if r == 0:
        return q, s
    block_r = max(1, min(32, 4096 // group))
    grid = (triton.cdiv(r, block_r), k // group)
    _fp8_quant_act_kernel[grid](x, fp8_arg(q, native), s, r, k, k // group, BLOCK_R=block_r, GROUP_SIZE=group,
                                UE8M0=bool(ue8m0), NATIVE_FP8=native, num_warps=4)
    return q, s


# ----------------------------------------------------------------------------- block-scaled GEMM

@triton.jit
def _fp8_gemm_nt_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K,
                        stride_am, stride_asm, stride_bn, stride_bsn, stride_cm,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """C[M, N] = sum_kb (A[:, kb] @ B[:, kb].T) * a_scale[:, kb] * b_scale[n // 128, kb]; BLOCK_K = 128."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped launch order: GROUP_M row-tiles share B tiles in L2
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    gm = tl.minimum(num_m - first_m, GROUP_M)
    i_m = first_m + (pid % width) % gm
    i_n = (pid % width) // gm

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_k = tl.arange(0, BLOCK_K)
    m_m = o_m < M
    m_n = o_n < N
    p_a = a_ptr + o_m[:, None].to(tl.int64) * stride_am + o_k[None, :]
    p_b = b_ptr + o_n[None, :].to(tl.int64) * stride_bn + o_k[:, None]
    p_as = as_ptr + o_m.to(tl.int64) * stride_asm
    p_bs = bs_ptr + ((i_n * BLOCK_N) // 128) * stride_bsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kb = k0 // BLOCK_K
        # [BLOCK_M, BLOCK_K], [BLOCK_K, BLOCK_N]
        b_a = tl.load(p_a, mask=m_m[:, None])  # masked rows only reach masked outputs
        b_b = tl.load(p_b, mask=m_n[None, :])
        b_sa = tl.load(p_as + kb, mask=m_m, other=0.0)
        b_sb = tl.load(p_bs + kb)
        if NATIVE_FP8:
            part = tl.dot(b_a, b_b)
        else:
            part = tl.dot(e4m3_bits_to_f16(b_a), e4m3_bits_to_f16(b_b)) * 65536.0
        acc += part * (b_sa[:, None] * b_sb)
        p_a += BLOCK_K
        p_b += BLOCK_K
    p_c = c_ptr + o_m[:, None].to(tl.int64) * stride_cm + o_n[None, :]
    tl.store(p_c, acc.to(c_ptr.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])


def gemm_config(m: int, n: int, k: int, cap: tuple[int, int]) -> dict:
    """The shipped launch config for fp8_gemm_nt (also what the compile tests build)."""
    bm = 64 if m <= 64 else 128
    if cap >= (9, 0):
        return dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8 if bm == 128 else 4, num_stages=4)
    if cap >= (8, 9):  # FP8 mma.sync: operands and the partial product live in registers -> narrower N
        return dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=8 if bm == 128 else 4, num_stages=3)
    return dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=8 if bm == 128 else 4, num_stages=3)


def fp8_gemm_nt(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """a [M, K] e4m3, a_scale [M, K/128] fp32, b [N, K] e4m3, b_scale [ceil(N/128), K/128] fp32 -> [M, N]."""
    require_device("fp8_gemm_nt", a)
    require(a.dtype == FP8_DTYPE and b.dtype == FP8_DTYPE, f"fp8_gemm_nt: a, b must be {FP8_DTYPE}")
    require(out_dtype in _OUT_DTYPES, f"fp8_gemm_nt: out_dtype={out_dtype} must be one of {_OUT_DTYPES}")
    m, k = a.shape
    n = b.shape[0]
    require(k % 128 == 0, f"fp8_gemm_nt: K={k} must be a multiple of 128")
    require(a.stride(1) == 1 and a.stride(0) % 16 == 0, f"fp8_gemm_nt: a must be row-major with 16-byte aligned rows (strides {a.stride()})")
    require(b.stride(1) == 1 and b.stride(0) % 16 == 0, f"fp8_gemm_nt: b must be row-major with 16-byte aligned rows (strides {b.stride()})")
    require(a_scale.stride(1) == 1, f"fp8_gemm_nt: a_scale must have unit stride along K/128 (strides {a_scale.stride()})")
    require(b_scale.stride(1) == 1, f"fp8_gemm_nt: b_scale must have unit stride along K/128 (strides {b_scale.stride()})")
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    if k == 0:
        return c.zero_()
    native = native_fp8(a.device)
    cfg = gemm_config(m, n, k, capability(a.device))
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _fp8_gemm_nt_kernel[grid](fp8_arg(a, native), a_scale, fp8_arg(b, native), b_scale, c, m, n, k,
                              a.stride(0), a_scale.stride(0), b.stride(0), b_scale.stride(0), c.stride(0),
                              NATIVE_FP8=native, **cfg)
    return c
