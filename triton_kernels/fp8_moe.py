"""Triton kernels for the grouped FP8 expert GEMMs (DeepGEMM-style layouts) and the fused SiLU-and-mul + FP8 quant.

Semantics: deepseek_v32_plugin.ops.fp8_moe (naive.py defines them). Same positional signatures as the
references without the `naive_` prefix.

GEMM (out = dequant(a) @ dequant(b[g]).T): one program per (BLOCK_M x BLOCK_N) output tile; the K loop
takes 128-wide steps, so each step sees exactly one activation scale per row (1x128) and one weight scale
per 128 output columns (128x128 blocks):
    acc += tl.dot(a_fp8, b_fp8.T) * a_scale[:, None] * b_scale[None, :]      (fp8 MMA, fp32 promotion)
Contiguous layout: a tile's expert is read from m_indices. Aligned inputs (each expert's rows contiguous
and padded to BLOCK_M, as moe_padded_layout does) run one K loop per tile; a tile whose rows belong to
several experts runs it once per distinct expert (same program, one launch) and stores only that expert's
rows, so any m_indices is correct. Rows whose
m_indices is outside [0, G) (e.g. -1 padding) are not written, and a tile without valid rows exits at once.
Masked layout: rows >= masked_m[g] are not written; tiles past masked_m[g] exit at once. So with per-expert
padded rows and device-side counts (the grid sized for the worst case), the MMA work is
sum_e ceil(n_e / BLOCK_M) * N / BLOCK_N tiles and nothing is spent on padding (benchmarks/work_model.py).
sm_80/86 (no fp8e4nv in Triton): the e4m3 bytes are decoded to fp16 with integer ops (exact, value/256)
and multiplied with fp16 tl.dot; the 2^16 factor is folded into the scales.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._fp8_util import (config_override, e4m3_bits_to_f16, f32_to_e4m3_bits, fp8_arg, native_fp8, require_device,
                        ue8m0_scale_bits)

GROUP = 128
_BIG = tl.constexpr(2 ** 30)

# Shipped GEMM configurations (tests/triton/test_compile_mla_moe.py compiles them): by arch family.
# BLOCK_N must divide 128 (one weight scale per tile and K block).
GEMM_CONFIGS = {
    "sm90": dict(BLOCK_M=128, BLOCK_N=128, GROUP_M=8, num_warps=8, num_stages=4),   # Hopper / sm_100 Blackwell
    "sm89": dict(BLOCK_M=64, BLOCK_N=64, GROUP_M=8, num_warps=4, num_stages=3),     # Ada, sm_120: fp8 mma.sync
    "sm80": dict(BLOCK_M=64, BLOCK_N=64, GROUP_M=8, num_warps=4, num_stages=3),     # Ampere: decoded fp16
}


def gemm_config_for(cap: tuple) -> dict:
    """Shipped launch config for a compute capability (the compile tests build these)."""
    # sm_120 (consumer Blackwell): no wgmma / tcgen05 and 99 KB of shared memory: the Ada tiles (fp8 mma.sync)
    key = "sm90" if (9, 0) <= cap < (12, 0) else ("sm89" if cap >= (8, 9) else "sm80")
    cfg = config_override("DSV32_MOE_GEMM_CONFIG", dict(GEMM_CONFIGS[key]))
    if 128 % cfg["BLOCK_N"]:
        raise ValueError(f"BLOCK_N={cfg['BLOCK_N']} must divide 128 (one weight scale per tile and K block)")
    return cfg


def gemm_config(device: torch.device) -> dict:
    return gemm_config_for(torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0))


@triton.jit
def _gemm_tile(a_ptr, stride_am, as_ptr, stride_asm, b_ptr, stride_bn, bs_ptr, stride_bsn,
               o_m, m_m, n0, m_n, K,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP8_NATIVE: tl.constexpr):
    """[BLOCK_M, BLOCK_N] fp32 = dequant(a[o_m]) @ dequant(b[n0:n0+BLOCK_N]).T; a/b are e4m3: fp8e4nv (sm_89+,
    FP8_NATIVE: fed from shared memory to the MMA as loaded) or raw bytes (decoded to fp16).
    Rows outside m_m hold garbage (their loads are masked off); BLOCK_N divides 128, so one weight scale
    per K block covers the whole tile."""
    o_k = tl.arange(0, 128)
    o_n = n0 + tl.arange(0, BLOCK_N)
    p_a = a_ptr + o_m[:, None].to(tl.int64) * stride_am + o_k[None, :]
    p_b = b_ptr + o_n[None, :].to(tl.int64) * stride_bn + o_k[:, None]
    p_as = as_ptr + o_m.to(tl.int64) * stride_asm
    p_bs = bs_ptr + (n0 // 128) * stride_bsn
    b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, 128)):
        # [BLOCK_M, 128], [128, BLOCK_N] e4m3 bytes
        b_a = tl.load(p_a, mask=m_m[:, None])
        b_b = tl.load(p_b, mask=m_n[None, :])
        # [BLOCK_M] activation scales, scalar weight scale of this 128-wide K block
        b_sa = tl.load(p_as + kb, mask=m_m, other=0.0)
        b_sb = tl.load(p_bs + kb)
        if FP8_NATIVE:
            b_d = tl.dot(b_a.to(tl.float8e4nv, bitcast=True), b_b.to(tl.float8e4nv, bitcast=True))
        else:
            b_d = tl.dot(e4m3_bits_to_f16(b_a), e4m3_bits_to_f16(b_b)) * 65536.0
        b_acc += b_d * (b_sa[:, None] * b_sb)
        p_a += 128
        p_b += 128
    return b_acc


@triton.jit
def _tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order (GROUP_M row-tiles share B columns in L2)."""
    n_pid_m = tl.cdiv(M, BLOCK_M)
    n_pid_n = tl.cdiv(N, BLOCK_N)
    n_in_group = GROUP_M * n_pid_n
    group = pid // n_in_group
    first_m = group * GROUP_M
    size_m = tl.minimum(n_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % n_in_group) % size_m
    pid_n = (pid % n_in_group) // size_m
    return pid_m, pid_n


@triton.jit
def _grouped_gemm_contiguous_kernel(a_ptr, stride_am, as_ptr, stride_asm,
                                    b_ptr, stride_bg, stride_bn, bs_ptr, stride_bsg, stride_bsn,
                                    mi_ptr, c_ptr, stride_cm, M, N, K, G,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
                                    FP8_NATIVE: tl.constexpr):
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    o_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    # [BLOCK_M] expert of each row; out-of-range experts (-1 padding) -> BIG
    b_ids = tl.load(mi_ptr + o_m, mask=m_m, other=-1)
    b_ids = tl.where((b_ids >= 0) & (b_ids < G), b_ids, _BIG)
    # one K loop per distinct expert of the tile, in increasing order: aligned layouts (moe_padded_layout)
    # run it once, a tile of padding rows exits at once, a tile spanning experts (unaligned) runs it per expert
    e = tl.min(b_ids, axis=0)
    while e < _BIG:
        m_e = m_m & (b_ids == e)
        b_acc = _gemm_tile(a_ptr, stride_am, as_ptr, stride_asm,
                           b_ptr + e.to(tl.int64) * stride_bg, stride_bn, bs_ptr + e.to(tl.int64) * stride_bsg,
                           stride_bsn, o_m, m_e, pid_n * BLOCK_N, m_n, K, BLOCK_M, BLOCK_N, FP8_NATIVE)
        p_c = c_ptr + o_m[:, None].to(tl.int64) * stride_cm + o_n[None, :]
        tl.store(p_c, b_acc.to(c_ptr.dtype.element_ty), mask=m_e[:, None] & m_n[None, :])
        e = tl.min(tl.where(b_ids > e, b_ids, _BIG), axis=0)


@triton.jit
def _grouped_gemm_masked_kernel(a_ptr, stride_ag, stride_am, as_ptr, stride_asg, stride_asm,
                                b_ptr, stride_bg, stride_bn, bs_ptr, stride_bsg, stride_bsn,
                                mm_ptr, c_ptr, stride_cg, stride_cm, M, N, K,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
                                FP8_NATIVE: tl.constexpr):
    g = tl.program_id(1).to(tl.int64)
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    n_valid = tl.minimum(tl.load(mm_ptr + g), M)
    o_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    p_c = c_ptr + g * stride_cg + o_m[:, None].to(tl.int64) * stride_cm + o_n[None, :]
    if pid_m * BLOCK_M < n_valid:  # tiles past this group's rows: no work, no stores
        m_v = o_m < n_valid
        b_acc = _gemm_tile(a_ptr + g * stride_ag, stride_am, as_ptr + g * stride_asg, stride_asm,
                           b_ptr + g * stride_bg, stride_bn, bs_ptr + g * stride_bsg, stride_bsn,
                           o_m, m_v, pid_n * BLOCK_N, m_n, K, BLOCK_M, BLOCK_N, FP8_NATIVE)
        tl.store(p_c, b_acc.to(c_ptr.dtype.element_ty), mask=m_v[:, None] & m_n[None, :])


def _check_gemm(a, a_scale, b, b_scale):
    for name, t in (("a", a), ("a_scale", a_scale), ("b", b), ("b_scale", b_scale)):
        require_device(name, t)
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        raise TypeError(f"a.dtype={a.dtype}, b.dtype={b.dtype}: expected torch.float8_e4m3fn")
    k = a.shape[-1]
    if k % GROUP:
        raise ValueError(f"K={k} must be a multiple of {GROUP}")
    if b.shape[-1] != k:
        raise ValueError(f"b is {list(b.shape)} but a has K={k}")
    if a.stride(-1) != 1 or b.stride(-1) != 1:
        raise ValueError("a and b must be K-major (last-dim stride 1)")
    n = b.shape[1]
    want_bs = (b.shape[0], triton.cdiv(n, GROUP), k // GROUP)
    if tuple(b_scale.shape) != want_bs or b_scale.dtype != torch.float32:
        raise ValueError(f"b_scale is {list(b_scale.shape)} {b_scale.dtype}, expected {list(want_bs)} float32")
    if a_scale.dtype != torch.float32 or a_scale.shape[-1] != k // GROUP:
        raise ValueError(f"a_scale is {list(a_scale.shape)} {a_scale.dtype}, expected [..., {k // GROUP}] float32")
    if a_scale.stride(-1) != 1 or b_scale.stride(-1) != 1:
        raise ValueError("a_scale and b_scale must have last-dim stride 1")


def contiguous_launches(m: int, n: int, cap: tuple) -> list[dict]:
    """The launches fp8_grouped_gemm_nt_contiguous makes for M rows x N columns on arch `cap`: one dict per
    kernel launch with its grid (programs) and BLOCK_M/BLOCK_N (used by benchmarks/work_model.py). One launch:
    a tile spanning several experts loops over them in the same program."""
    cfg = gemm_config_for(cap)
    bm, bn = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    return [dict(grid=(triton.cdiv(m, bm) * triton.cdiv(n, bn),), BLOCK_M=bm, BLOCK_N=bn, cfg=cfg)]


def masked_launch(g: int, m: int, n: int, cap: tuple) -> dict:
    """The launch fp8_grouped_gemm_nt_masked makes for a [G, M, K] input (see contiguous_launches)."""
    cfg = gemm_config_for(cap)
    bm, bn = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    return dict(grid=(triton.cdiv(m, bm) * triton.cdiv(n, bn), g), BLOCK_M=bm, BLOCK_N=bn, cfg=cfg)


def _cap(device: torch.device) -> tuple:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)


def fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, out_dtype=torch.bfloat16):
    """a [M, K] e4m3, a_scale [M, K/128] fp32, b [G, N, K] e4m3, b_scale [G, ceil(N/128), K/128] fp32,
    m_indices [M] int32 (expert of each row; outside [0, G) -> row not written) -> [M, N] out_dtype."""
    _check_gemm(a, a_scale, b, b_scale)
    require_device("m_indices", m_indices)
    if m_indices.dtype != torch.int32 or m_indices.shape != (a.shape[0],):
        raise ValueError(f"m_indices must be int32 [{a.shape[0]}], got {m_indices.dtype} {list(m_indices.shape)}")
    M, K = a.shape
    G, N, _ = b.shape
    out = torch.empty(M, N, dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if G == 0:
        return out.zero_()
    native = native_fp8(a.device)
    m_indices = m_indices.contiguous()
    a8, b8 = fp8_arg(a, native), fp8_arg(b, native)   # fp8e4nv on sm_89+, bytes below
    args = (a8, a8.stride(0), a_scale, a_scale.stride(0),
            b8, b8.stride(0), b8.stride(1), b_scale, b_scale.stride(0), b_scale.stride(1),
            m_indices, out, out.stride(0), M, N, K, G)
    for ln in contiguous_launches(M, N, _cap(a.device)):
        _grouped_gemm_contiguous_kernel[ln["grid"]](*args, BLOCK_M=ln["BLOCK_M"], BLOCK_N=ln["BLOCK_N"],
                                                    FP8_NATIVE=native, **ln["cfg"])
    return out


def fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, out_dtype=torch.bfloat16):
    """a [G, M, K] e4m3, a_scale [G, M, K/128] fp32, b [G, N, K], b_scale [G, ceil(N/128), K/128],
    masked_m [G] int32 -> [G, M, N] out_dtype; rows m >= masked_m[g] are not written."""
    _check_gemm(a, a_scale, b, b_scale)
    require_device("masked_m", masked_m)
    G, M, K = a.shape
    N = b.shape[1]
    if b.shape[0] != G or masked_m.shape != (G,) or masked_m.dtype != torch.int32:
        raise ValueError(f"b has {b.shape[0]} groups, masked_m is {masked_m.dtype} {list(masked_m.shape)}; "
                         f"expected {G} groups and int32 [{G}]")
    out = torch.empty(G, M, N, dtype=out_dtype, device=a.device)
    if G == 0 or M == 0 or N == 0:
        return out
    native = native_fp8(a.device)
    ln = masked_launch(G, M, N, _cap(a.device))
    a8, b8 = fp8_arg(a, native), fp8_arg(b, native)   # fp8e4nv on sm_89+, bytes below
    _grouped_gemm_masked_kernel[ln["grid"]](
        a8, a8.stride(0), a8.stride(1), a_scale, a_scale.stride(0), a_scale.stride(1),
        b8, b8.stride(0), b8.stride(1), b_scale, b_scale.stride(0), b_scale.stride(1),
        masked_m.contiguous(), out, out.stride(0), out.stride(1), M, N, K,
        BLOCK_M=ln["BLOCK_M"], BLOCK_N=ln["BLOCK_N"], FP8_NATIVE=native, **ln["cfg"])
    return out


# ------------------------------------------------------------------------------------------------
# SiLU-and-mul + FP8 (1x128, ue8m0) re-quantization
# ------------------------------------------------------------------------------------------------

@triton.jit
def _silu_mul_quant_kernel(x_ptr, stride_xm, q_ptr, stride_qm, s_ptr, stride_sm, mi_ptr, M, N,
                           BLOCK_M: tl.constexpr, FP8_NATIVE: tl.constexpr, HAS_ROWS: tl.constexpr):
    i_m = tl.program_id(0)
    i_g = tl.program_id(1)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    if HAS_ROWS:   # padded MoE layout: rows with m_indices < 0 are padding, neither read nor written
        m_m = m_m & (tl.load(mi_ptr + o_m, mask=m_m, other=-1) >= 0)
    if tl.max(m_m.to(tl.int32), axis=0) > 0:   # a block of padding rows costs only its m_indices read
        o_c = i_g * 128 + tl.arange(0, 128)
        p_x = x_ptr + o_m[:, None].to(tl.int64) * stride_xm + o_c[None, :]
        # [BLOCK_M, 128] gate and up halves
        b_gate = tl.load(p_x, mask=m_m[:, None], other=0.0).to(tl.float32)
        b_up = tl.load(p_x + N, mask=m_m[:, None], other=0.0).to(tl.float32)
        b_h = b_gate / (1.0 + tl.exp(-b_gate)) * b_up
        scale, inv = ue8m0_scale_bits(tl.max(tl.abs(b_h), axis=1))
        b_y = b_h * inv[:, None]
        if FP8_NATIVE:
            b_y = tl.minimum(tl.maximum(b_y, -448.0), 448.0)
            b_q = b_y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        else:
            b_q = f32_to_e4m3_bits(b_y).to(tl.uint8)
        tl.store(q_ptr + o_m[:, None].to(tl.int64) * stride_qm + o_c[None, :], b_q, mask=m_m[:, None])
        tl.store(s_ptr + o_m.to(tl.int64) * stride_sm + i_g, scale, mask=m_m)


SILU_BLOCK_M = 16


def silu_and_mul_fp8_quant(x, m_indices=None):
    """x [M, 2N] float -> (fp8 [M, N] e4m3, scale [M, N/128] fp32 ue8m0) of silu(x[:, :N]) * x[:, N:].
    m_indices [M] int32 or None: rows with m_indices < 0 (padding of the per-expert padded layout) are
    neither read nor written (unspecified in the outputs); the grid stays static (no host sync)."""
    require_device("x", x)
    if x.dim() != 2 or x.shape[1] % (2 * GROUP):
        raise ValueError(f"x must be [M, 2N] with N a multiple of {GROUP}, got {list(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, N = x.shape[0], x.shape[1] // 2
    if m_indices is not None:
        require_device("m_indices", m_indices)
        if m_indices.dtype != torch.int32 or m_indices.shape != (M,):
            raise ValueError(f"m_indices must be int32 [{M}], got {m_indices.dtype} {list(m_indices.shape)}")
        m_indices = m_indices.contiguous()
    q = torch.empty(M, N, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(M, N // GROUP, dtype=torch.float32, device=x.device)
    if M == 0:
        return q, s
    q8 = q.view(torch.uint8)
    _silu_mul_quant_kernel[(triton.cdiv(M, SILU_BLOCK_M), N // GROUP)](
        x, x.stride(0), q8, q8.stride(0), s, s.stride(0), x if m_indices is None else m_indices, M, N,
        BLOCK_M=SILU_BLOCK_M, FP8_NATIVE=native_fp8(x.device), HAS_ROWS=m_indices is not None, num_warps=4)
    return q, s


def flops_grouped_gemm(m_rows: int, n: int, k: int) -> float:
    return 2.0 * m_rows * n * k


__all__ = ["fp8_grouped_gemm_nt_contiguous", "fp8_grouped_gemm_nt_masked", "silu_and_mul_fp8_quant"]
