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
  silu_and_mul_fp8_quant(x [M, 2N], m_indices [M] int32 or None) -> (fp8 [M, N], scale [M, N/128]) of
      silu(x[:, :N]) * x[:, N:]. With m_indices, rows whose m_indices < 0 (padding of the layout below) are
      unspecified: the kernels neither read nor write them (the reference computes every row).
  fp8_moe_experts(x [T, D], w13 [E, 2I, D] e4m3 (gate rows then up rows), w13_scale [E, 2I/128, D/128],
      w2 [E, D, I] e4m3, w2_scale [E, D/128, I/128], topk_weights [T, k] fp32, topk_ids [T, k] int32)
      -> [T, D] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]); ids outside [0, E) (e.g. -1, or
      experts on another EP rank) are skipped. Activations are FP8-quantized per 1x128 before each GEMM,
      as on the GPU. Built from the three primitives above, so every backend shares the orchestration.
  Per-expert padded layout (what fp8_moe_experts feeds the contiguous GEMM; moe_padded_layout builds it on the
      device, no host sync): M = moe_capacity(T*k, E, A) rows, a static bound (T*k + min(E, T*k)*(A-1), rounded
      up to A); expert e owns rows [start_e, start_e + ceil(n_e/A)*A) with start_e = sum_{e'<e} ceil(n_e'/A)*A,
      its n_e (token, slot) pairs first in pair order, then m_indices = -1 padding; -1 rows after the last
      expert. n_e stays on the device; the grid is sized for M (static given T, k, E, A). A = moe_align_m:
      MOE_BLOCK_M (128, the kernels' largest BLOCK_M, so no tile spans two experts and every tile runs one
      K loop) on the kernel backends, 1 for the torch reference (it loops over experts itself).
References: naive.py (naive_<op>; naive_fp8_moe_experts is an independent per-expert loop).
"""
from __future__ import annotations

import os

import torch

from .._dispatch import check_tensor, register_ops, requested_backend, resolve
from ..fp8_quant import FP8_DTYPE, GROUP, fp8_quant_act

register_ops("fp8_moe", ["fp8_grouped_gemm_nt_contiguous", "fp8_grouped_gemm_nt_masked",
                         "silu_and_mul_fp8_quant"])
_FLOAT = (torch.float32, torch.bfloat16, torch.float16)
MOE_BLOCK_M = 128


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


def silu_and_mul_fp8_quant(x, m_indices=None, *, backend=None):
    check_tensor("x", x, dtype=_FLOAT, dims=2)
    if x.shape[1] % (2 * GROUP):
        raise ValueError(f"x width {x.shape[1]} must be 2*N with N a multiple of {GROUP}")
    if m_indices is not None:
        check_tensor("m_indices", m_indices, dtype=torch.int32, shape=(x.shape[0],))
    # the kernels skip padding rows; the torch reference computes them too
    return resolve("silu_and_mul_fp8_quant", x.device, backend)(x, m_indices)


def moe_align_m(device: torch.device, backend=None) -> int:
    """Rows per expert in the padded layout: the grouped-GEMM kernels' largest BLOCK_M (128: sm_90 Triton and
    CUDA tiles; the 64-row sm_80/89 tiles divide it), so no tile spans two experts. 1 (no padding) when the
    plain-PyTorch reference serves the GEMMs: it loops over experts and needs no alignment."""
    b = requested_backend("fp8_grouped_gemm_nt_contiguous", backend)
    if b is None:
        cpu_triton = device.type != "cuda" and os.environ.get("DSV32_CPU_TRITON", "0") == "1"
        b = "torch" if device.type != "cuda" and not cpu_triton else "auto"
    return 1 if b == "torch" else MOE_BLOCK_M


def moe_capacity(num_pairs: int, num_experts: int, align_m: int) -> int:
    """Rows of the padded layout for num_pairs (token, slot) pairs: a static bound (no counts needed),
    sum_e ceil(n_e / align) * align <= num_pairs + min(E, num_pairs) * (align - 1), rounded up to align."""
    rows = num_pairs + min(num_experts, num_pairs) * (align_m - 1)
    return -(-rows // align_m) * align_m


def moe_padded_layout(topk_ids: torch.Tensor, num_experts: int, align_m: int):
    """Per-expert padded layout of the (token, slot) pairs of topk_ids [T, k], built on the device with static
    shapes (no host sync). Returns (m_indices [M] int32, row_pair [M] int64, counts [E] int32) with
    M = moe_capacity(T*k, E, align_m): expert e owns rows [start_e, start_e + ceil(n_e / align) * align), its
    n_e pairs first (in pair order), then -1 padding; -1 rows after the last expert up to M. row_pair[r] is
    the flattened pair index t*k + j of row r (T*k on padding rows); ids outside [0, E) get no row."""
    t, k = topk_ids.shape
    n, e, dev = t * k, num_experts, topk_ids.device
    cap = moe_capacity(n, e, align_m)
    ids = topk_ids.reshape(-1).long()
    key = torch.where((ids >= 0) & (ids < e), ids, e)                 # invalid pairs: bucket E, sorted last
    skey, order = torch.sort(key, stable=True)
    counts = torch.zeros(e + 1, dtype=torch.long, device=dev).scatter_add_(0, key, torch.ones_like(key))
    padded = (counts[:e] + (align_m - 1)) // align_m * align_m
    start = torch.cat([torch.cumsum(padded, 0) - padded, padded.new_full((1,), cap)])   # bucket E -> row cap
    rank = torch.arange(n, device=dev) - (torch.cumsum(counts, 0) - counts)[skey]      # index within its expert
    dest = torch.where(skey < e, start[skey] + rank, cap)             # row cap (dropped below) takes invalid pairs
    m_indices = torch.full((cap + 1,), -1, dtype=torch.int32, device=dev).scatter_(0, dest, skey.int())[:cap]
    row_pair = torch.full((cap + 1,), n, dtype=torch.long, device=dev).scatter_(0, dest, order)[:cap]
    return m_indices, row_pair, counts[:e].int()


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
    # Orchestration (shared by all backends, no host sync, static shapes): the per-expert padded layout,
    # the two grouped GEMMs over it, and a scatter-add of the weighted rows (padding rows into a spare row T).
    m_indices, row_pair, _ = moe_padded_layout(topk_ids, e, moe_align_m(x.device, backend))
    k = topk_ids.shape[1]
    tok = row_pair // k                                              # T on padding rows
    x_fp8, x_scale = fp8_quant_act(x, backend=backend)
    src = tok.clamp(max=max(t - 1, 0))                               # padding rows read any row (never used)
    h = fp8_grouped_gemm_nt_contiguous(x_fp8[src], x_scale[src], w13, w13_scale, m_indices, backend=backend)
    h_fp8, h_scale = silu_and_mul_fp8_quant(h, m_indices, backend=backend)   # padding rows skipped
    y = fp8_grouped_gemm_nt_contiguous(h_fp8, h_scale, w2, w2_scale, m_indices, backend=backend)
    wts = torch.cat([topk_weights.reshape(-1), topk_weights.new_zeros(1)])[row_pair]
    out = torch.zeros(t + 1, d, dtype=torch.float32, device=x.device)
    out.index_add_(0, tok, y.float() * wts[:, None])     # padding rows (unwritten, any value) land in row T
    return out[:t].to(x.dtype)
