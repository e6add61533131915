"""Grouped FP8 expert GEMMs (DeepGEMM-style) and the routed-expert compute built on them.

Scales as in ops.fp8_quant: activations 1x128 fp32 (ue8m0 powers of two), weights 128x128 fp32.
  fp8_grouped_gemm_nt_contiguous(a [M, K] e4m3, a_scale [M, K/128], b [G, N, K] e4m3,
      b_scale [G, ceil(N/128), K/128], m_indices [M] int32) -> [M, N] bf16
      out[m] = dequant(a[m]) @ dequant(b[m_indices[m]]).T ; rows with m_indices outside [0, G) (-1 padding)
      are not written by the kernels (unspecified; the reference writes 0): no zero-fill of padding.
      Rows of one group need not be aligned or contiguous for correctness; kernels are fastest when each
      group's rows are contiguous and padded to the kernel's block M (a tile spanning two groups costs an
      extra pass in the Triton kernel).
  fp8_grouped_gemm_nt_masked(a [G, M, K] e4m3, a_scale [G, M, K/128], b [G, N, K], b_scale, masked_m [G] int32)
      -> [G, M, N] bf16; rows m >= masked_m[g] are not written by the kernels (unspecified; the reference
      writes 0). With per-expert padded rows and device-side counts (masked_m, or -1 padding in m_indices)
      the kernels' MMA work is sum_g ceil(rows_g / BLOCK_M) * N / BLOCK_N tiles (benchmarks/work_model.py).
  silu_and_mul_fp8_quant(x [M, 2N]) -> (fp8 [M, N], scale [M, N/128]) of silu(x[:, :N]) * x[:, N:].
  fp8_moe_experts(x [T, D], w13 [E, 2I, D] e4m3 (gate rows then up rows), w13_scale [E, 2I/128, D/128],
      w2 [E, D, I] e4m3, w2_scale [E, D/128, I/128], topk_weights [T, k] fp32, topk_ids [T, k] int32)
      -> [T, D] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]); ids outside [0, E) (e.g. -1, or
      experts on another EP rank) are skipped. Activations are FP8-quantized per 1x128 before each GEMM,
      as on the GPU. Built from the three primitives above, so every backend shares the orchestration.
References: naive.py (naive_<op>; naive_fp8_moe_experts is an independent per-expert loop).
"""
from __future__ import annotations

import torch

from .._dispatch import check_tensor, register_ops, resolve
from ..fp8_quant import FP8_DTYPE, GROUP, fp8_quant_act

register_ops("fp8_moe", ["fp8_grouped_gemm_nt_contiguous", "fp8_grouped_gemm_nt_masked",
                         "silu_and_mul_fp8_quant"])
_FLOAT = (torch.float32, torch.bfloat16, torch.float16)


def _check_b(b, b_scale, k):
    check_tensor("b", b, dtype=FP8_DTYPE, dims=3)
    g, n, kb = b.shape
    if kb != k:
        raise ValueError(f"b is {list(b.shape)} but the activations have K={k}")
    check_tensor("b_scale", b_scale, dtype=torch.float32, shape=(g, -(-n // GROUP), k // GROUP))


def fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, out_dtype=torch.bfloat16, *, backend=None):
    check_tensor("a", a, dtype=FP8_DTYPE, dims=2)
    m, k = a.shape
    if k % GROUP:
        raise ValueError(f"K={k} must be a multiple of {GROUP}")
    check_tensor("a_scale", a_scale, dtype=torch.float32, shape=(m, k // GROUP))
    _check_b(b, b_scale, k)
    check_tensor("m_indices", m_indices, dtype=torch.int32, shape=(m,))
    return resolve("fp8_grouped_gemm_nt_contiguous", a.device, backend)(a, a_scale, b, b_scale, m_indices, out_dtype)


def fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, out_dtype=torch.bfloat16, *, backend=None):
    check_tensor("a", a, dtype=FP8_DTYPE, dims=3)
    g, m, k = a.shape
    if k % GROUP:
        raise ValueError(f"K={k} must be a multiple of {GROUP}")
    check_tensor("a_scale", a_scale, dtype=torch.float32, shape=(g, m, k // GROUP))
    _check_b(b, b_scale, k)
    if b.shape[0] != g:
        raise ValueError(f"b has {b.shape[0]} groups, a has {g}")
    check_tensor("masked_m", masked_m, dtype=torch.int32, shape=(g,))
    return resolve("fp8_grouped_gemm_nt_masked", a.device, backend)(a, a_scale, b, b_scale, masked_m, out_dtype)


def silu_and_mul_fp8_quant(x, *, backend=None):
    check_tensor("x", x, dtype=_FLOAT, dims=2)
    if x.shape[1] % (2 * GROUP):
        raise ValueError(f"x width {x.shape[1]} must be 2*N with N a multiple of {GROUP}")
    return resolve("silu_and_mul_fp8_quant", x.device, backend)(x)


def fp8_moe_experts(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, *, backend=None):
    """Routed-expert compute; see module docstring. Returns [T, D] in x.dtype."""
    check_tensor("x", x, dtype=_FLOAT, dims=2)
    t, d = x.shape
    check_tensor("w13", w13, dtype=FP8_DTYPE, dims=3)
    e, two_i, _ = w13.shape
    check_tensor("w13", w13, shape=(e, two_i, d))
    check_tensor("w2", w2, dtype=FP8_DTYPE, shape=(e, d, two_i // 2))
    check_tensor("topk_ids", topk_ids, dtype=(torch.int32, torch.int64), dims=2)
    check_tensor("topk_weights", topk_weights, dtype=torch.float32, shape=tuple(topk_ids.shape))
    if topk_ids.shape[0] != t:
        raise ValueError(f"topk_ids has {topk_ids.shape[0]} rows for {t} tokens")
    # Orchestration (shared by all backends): sort (token, slot) pairs by expert, run the two grouped
    # GEMMs on contiguous rows, scatter-add weighted results back.
    ids = topk_ids.reshape(-1).long()
    valid = (ids >= 0) & (ids < e)
    pair = valid.nonzero().squeeze(-1)
    out = torch.zeros(t, d, dtype=torch.float32, device=x.device)
    if pair.numel() == 0:
        return out.to(x.dtype)
    order = torch.argsort(ids[pair], stable=True)
    pair = pair[order]
    tok = pair // topk_ids.shape[1]
    m_indices = ids[pair].int()
    x_fp8, x_scale = fp8_quant_act(x, backend=backend)
    h = fp8_grouped_gemm_nt_contiguous(x_fp8[tok], x_scale[tok], w13, w13_scale, m_indices, backend=backend)
    h_fp8, h_scale = silu_and_mul_fp8_quant(h, backend=backend)
    y = fp8_grouped_gemm_nt_contiguous(h_fp8, h_scale, w2, w2_scale, m_indices, backend=backend)
    out.index_add_(0, tok, y.float() * topk_weights.reshape(-1)[pair, None])
    return out.to(x.dtype)
