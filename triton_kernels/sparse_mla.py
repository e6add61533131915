"""Triton kernels for the MLA latent cache and sparse MLA (decode over the paged cache, prefill over kv).

Semantics: deepseek_v32_plugin.ops.sparse_mla (naive.py defines them). Same positional signatures as the
references without the `naive_` prefix.

Attention kernel (`_sparse_mla_attn_kernel`): one program per (query token, block of BLOCK_H heads, split
of top-k). Heads are padded to BLOCK_H (>= 16 for tl.dot) by masking. The loop walks the token's top-k
indices BLOCK_T at a time, gathers those latent rows ([BLOCK_T, 512] + [BLOCK_T, 64]), dequantizes the
FP8 656-B layout in registers (one multiply per 128-group), and runs
    s = q_nope @ k^T + q_pe @ k_pe^T   (bf16 tl.dot, fp32 accumulate)
    online softmax in base 2,  acc += p @ k     (the latent row is both K and V: dequantized once)
Indices < 0 (or past the cache) are skipped; a row with none valid returns out = 0, lse = -inf.
When few (token, head-block) programs exist (small decode batches), top-k is split across programs and
`_combine_kernel` merges the partial (out, lse) pairs.
Shipped configs (`attn_config`, compile-checked spill-free in tests/triton/test_compile_mla_moe.py):
  sm_90a: 64 heads x 32 keys (fp8 cache, 1 stage) / 16 keys (bf16, 2 stages), 8 warps (wgmma; q and the
          latent tile in shared memory). S is split over the two warpgroups (each computes half of the keys'
          scores, ISOLATE_P) and each owns half of d_v in PV: tensor-core work per key = the ideal.
  sm_100a: 64 heads x 32 keys, but each program owns half of d_v (DV_SPLIT=2): four [64, 128] fp32
           accumulators plus the scores overflow tcgen05 tensor memory (LLVM then reduces the kernel to a
           trap); both programs compute S.
  sm_80/86/89/120: 32 heads x 32 keys (mma.sync keeps q in registers). h <= 16 pads heads to 16 only
           (mma.sync on every arch, no d_v split). On mma.sync Triton's layouts compute S twice (1.53x the ideal MMA
           work per key, compile-checked).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._fp8_util import (require_device, config_override, e4m3_bits_to_f16, f32_to_e4m3_bits, native_fp8, num_sms,
                        ue8m0_scale_bits)
from ..ops import PAGE_SIZE as PAGE   # installed as deepseek_v32_plugin.triton_kernels

KV_LORA = 512
ROPE = 64
HEAD_576 = KV_LORA + ROPE
FP8_ROW = 656            # bytes: 512 e4m3 | 4 fp32 scales | 64 bf16 rope
_FP8_SCALE_OFF = 128     # in fp32 elements of a 656-B row (byte 512)
_FP8_ROPE_OFF = 264      # in bf16 elements of a 656-B row (byte 528)
LOG2E = 1.4426950408889634

MIN_KEYS_PER_SPLIT = 256


def _fp8_views(kv_cache: torch.Tensor):
    """Three typed views of one 656-B/token cache: raw bytes (e4m3 values), fp32 scales, bf16 rope."""
    if kv_cache.storage_offset() % 4 or kv_cache.data_ptr() % 16:
        raise ValueError("fp8_ds_mla kv_cache must start 16-byte aligned (fp32 scales are read in place)")
    flat = kv_cache.view(-1, FP8_ROW)
    return flat, flat.view(torch.float32), flat.view(torch.bfloat16)


def _check_cache(kv_cache: torch.Tensor) -> None:
    width = FP8_ROW if kv_cache.dtype == torch.uint8 else HEAD_576
    if kv_cache.dtype not in (torch.uint8, torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"kv_cache.dtype={kv_cache.dtype}: expected uint8 (fp8_ds_mla) or bfloat16/float16/float32")
    if kv_cache.dim() != 3 or kv_cache.shape[1] != PAGE or kv_cache.shape[2] != width:
        raise ValueError(f"kv_cache has shape {list(kv_cache.shape)}, expected [num_pages, {PAGE}, {width}]")
    if not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache must be contiguous (got strides {kv_cache.stride()})")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# ------------------------------------------------------------------------------------------------
# cache write / gather
# ------------------------------------------------------------------------------------------------

@triton.jit
def _mla_cache_write_kernel(c_ptr, stride_c, pe_ptr, stride_pe, slot_ptr,
                            cache_ptr, cache_scale_ptr, cache_rope_ptr, stride_row, n_rows,
                            KV_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr):
    i_t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + i_t).to(tl.int64)
    if (slot >= 0) & (slot < n_rows):
        o_r = tl.arange(0, 64)
        # [64]
        b_pe = tl.load(pe_ptr + i_t * stride_pe + o_r)
        if KV_FP8:
            o_g = tl.arange(0, 4)
            o_c = tl.arange(0, 128)
            o_gc = o_g[:, None] * 128 + o_c[None, :]
            # [4, 128]
            b_c = tl.load(c_ptr + i_t * stride_c + o_gc).to(tl.float32)
            scale, inv = ue8m0_scale_bits(tl.max(tl.abs(b_c), axis=1))
            b_y = b_c * inv[:, None]
            if FP8_NATIVE:
                b_y = tl.minimum(tl.maximum(b_y, -448.0), 448.0)
                tl.store(cache_ptr + slot * 656 + o_gc, b_y.to(tl.float8e4nv).to(tl.uint8, bitcast=True))
            else:
                tl.store(cache_ptr + slot * 656 + o_gc, f32_to_e4m3_bits(b_y).to(tl.uint8))
            tl.store(cache_scale_ptr + slot * 164 + 128 + o_g, scale)
            tl.store(cache_rope_ptr + slot * 328 + 264 + o_r, b_pe.to(tl.bfloat16))
        else:
            o_c = tl.arange(0, 512)
            b_c = tl.load(c_ptr + i_t * stride_c + o_c).to(tl.float32)
            tl.store(cache_ptr + slot * stride_row + o_c, b_c.to(cache_ptr.dtype.element_ty))
            tl.store(cache_ptr + slot * stride_row + 512 + o_r,
                     b_pe.to(tl.float32).to(cache_ptr.dtype.element_ty))


def mla_cache_write(kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """kv_c [T, 512], k_pe [T, 64] -> kv_cache rows at slot_mapping [T] (bf16 576 or fp8_ds_mla 656 B)."""
    for name, t in (("kv_c", kv_c), ("k_pe", k_pe), ("kv_cache", kv_cache), ("slot_mapping", slot_mapping)):
        require_device(name, t)
    _check_cache(kv_cache)
    t = kv_c.shape[0]
    if kv_c.shape != (t, KV_LORA) or k_pe.shape != (t, ROPE) or slot_mapping.shape != (t,):
        raise ValueError(f"kv_c {list(kv_c.shape)}, k_pe {list(k_pe.shape)}, slot_mapping {list(slot_mapping.shape)}: "
                         f"expected [T, {KV_LORA}], [T, {ROPE}], [T]")
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"slot_mapping.dtype={slot_mapping.dtype}: expected int32 or int64")
    if t == 0:
        return
    kv_c, k_pe, slot_mapping = _rows(kv_c), _rows(k_pe), slot_mapping.contiguous()
    n_rows = kv_cache.shape[0] * kv_cache.shape[1]
    fp8 = kv_cache.dtype == torch.uint8
    if fp8:
        native = native_fp8(kv_cache.device)
        vals, scales, rope = _fp8_views(kv_cache)
        _mla_cache_write_kernel[(t,)](kv_c, kv_c.stride(0), k_pe, k_pe.stride(0), slot_mapping,
                                      vals, scales, rope, FP8_ROW, n_rows,
                                      KV_FP8=True, FP8_NATIVE=native, num_warps=2)
    else:
        rows = kv_cache.view(-1, HEAD_576)
        _mla_cache_write_kernel[(t,)](kv_c, kv_c.stride(0), k_pe, k_pe.stride(0), slot_mapping,
                                      rows, rows, rows, HEAD_576, n_rows,
                                      KV_FP8=False, FP8_NATIVE=False, num_warps=2)


@triton.jit
def _load_k_chunk(kv_ptr, kv_scale_ptr, stride_row, row, valid, G: tl.constexpr,
                  KV_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr):
    """Gathered latent columns [G*128, G*128+128) of rows -> [BLOCK_T, 128] fp32 (dequantized); invalid rows 0."""
    o_c = G * 128 + tl.arange(0, 128)
    if KV_FP8:
        # [BLOCK_T, 128] e4m3 as raw bytes (masked rows read 0 = +0.0)
        b_raw = tl.load(kv_ptr + row[:, None] * 656 + o_c[None, :], mask=valid[:, None], other=0)
        # [BLOCK_T] fp32 dequant scale of this group
        b_s = tl.load(kv_scale_ptr + row * 164 + (128 + G), mask=valid, other=0.0)
        if FP8_NATIVE:
            b_v = b_raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        else:
            b_v = e4m3_bits_to_f16(b_raw).to(tl.float32)
            b_s = b_s * 256.0
        b_k = b_v * b_s[:, None]
    else:
        b_k = tl.load(kv_ptr + row[:, None] * stride_row + o_c[None, :], mask=valid[:, None], other=0.0)
    return b_k


@triton.jit
def _load_k_pe(kv_ptr, kv_rope_ptr, stride_row, row, valid, KV_FP8: tl.constexpr):
    """Gathered rope key [BLOCK_T, 64] (bf16 in the fp8 layout, cache dtype otherwise); invalid rows 0."""
    o_r = tl.arange(0, 64)
    if KV_FP8:
        b_pe = tl.load(kv_rope_ptr + row[:, None] * 328 + 264 + o_r[None, :], mask=valid[:, None], other=0.0)
    else:
        b_pe = tl.load(kv_ptr + row[:, None] * stride_row + 512 + o_r[None, :], mask=valid[:, None], other=0.0)
    return b_pe


@triton.jit
def _mla_cache_gather_kernel(slot_ptr, n_slots, kv_ptr, kv_scale_ptr, kv_rope_ptr, stride_row, n_rows, out_ptr,
                             KV_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr, BLOCK_T: tl.constexpr):
    i_n = tl.program_id(0)
    o_t = i_n * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < n_slots
    slot = tl.load(slot_ptr + o_t, mask=m_t, other=-1).to(tl.int64)
    valid = (slot >= 0) & (slot < n_rows)
    row = tl.where(valid, slot, 0)
    o_out = o_t.to(tl.int64)[:, None] * 576
    for g in tl.static_range(4):
        b_k = _load_k_chunk(kv_ptr, kv_scale_ptr, stride_row, row, valid, g, KV_FP8, FP8_NATIVE)
        tl.store(out_ptr + o_out + g * 128 + tl.arange(0, 128)[None, :], b_k.to(tl.float32), mask=m_t[:, None])
    b_pe = _load_k_pe(kv_ptr, kv_rope_ptr, stride_row, row, valid, KV_FP8)
    tl.store(out_ptr + o_out + 512 + tl.arange(0, 64)[None, :], b_pe.to(tl.float32), mask=m_t[:, None])


def mla_cache_gather(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """slots [...] int -> rows [..., 576] fp32 (dequantized for fp8_ds_mla); -1 gives zeros."""
    require_device("kv_cache", kv_cache)
    require_device("slots", slots)
    _check_cache(kv_cache)
    if slots.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"slots.dtype={slots.dtype}: expected int32 or int64")
    flat = slots.reshape(-1).contiguous()
    n = flat.numel()
    out = torch.empty(n, HEAD_576, dtype=torch.float32, device=kv_cache.device)
    if n == 0:
        return out.reshape(*slots.shape, HEAD_576)
    n_rows = kv_cache.shape[0] * kv_cache.shape[1]
    block = 16
    grid = (triton.cdiv(n, block),)
    if kv_cache.dtype == torch.uint8:
        native = native_fp8(kv_cache.device)
        vals, scales, rope = _fp8_views(kv_cache)
        _mla_cache_gather_kernel[grid](flat, n, vals, scales, rope, FP8_ROW, n_rows, out,
                                       KV_FP8=True, FP8_NATIVE=native, BLOCK_T=block, num_warps=4)
    else:
        rows = kv_cache.view(-1, HEAD_576)
        _mla_cache_gather_kernel[grid](flat, n, rows, rows, rows, HEAD_576, n_rows, out,
                                       KV_FP8=False, FP8_NATIVE=False, BLOCK_T=block, num_warps=4)
    return out.reshape(*slots.shape, HEAD_576)


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------

@triton.jit
def _scores_add(b_s, b_q, b_k, qk_scale_log2, SEPARATE: tl.constexpr):
    """b_s + b_q @ b_k^T. SEPARATE: as its own dot, scaled to log2 units before the add (b_s then already is):
    a dot accumulating into another dot's result is a chained dot to Triton's layout choice (see ISOLATE_P),
    and `s + dot(a, b)` alone would be folded back into one accumulating dot."""
    if SEPARATE:
        return b_s + tl.dot(b_q, tl.trans(b_k)) * qk_scale_log2
    else:
        return tl.dot(b_q, tl.trans(b_k), b_s)


@triton.jit
def _softmax_step(b_s, valid, b_m, b_l, DOT_DTYPE: tl.constexpr):
    """One online-softmax step (base 2) over a [BLOCK_H, BLOCK_T] score block; invalid keys are -inf.
    A fully masked block keeps m = -inf without producing NaN. Returns (m_new, alpha, l_new, p)."""
    b_s = tl.where(valid[None, :], b_s, float("-inf"))
    b_m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
    b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
    b_alpha = tl.exp2(b_m - b_m_safe)
    b_p = tl.exp2(b_s - b_m_safe[:, None])
    b_l = b_l * b_alpha + tl.sum(b_p, axis=1)
    return b_m_new, b_alpha, b_l, b_p.to(DOT_DTYPE)


@triton.jit
def _sparse_mla_attn_kernel(
    q_ptr, stride_q_t, stride_q_h,
    kv_ptr, kv_scale_ptr, kv_rope_ptr, stride_kv_row, n_rows,
    idx_ptr, stride_idx_t, topk, split_len, len_ptr,
    o_ptr, stride_o_t, stride_o_s, stride_o_h,
    lse_ptr, stride_l_t, stride_l_s,
    H, qk_scale_log2,
    BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
    KV_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr, DOT_FP16: tl.constexpr, DV_SPLIT: tl.constexpr,
    HAS_LEN: tl.constexpr, ISOLATE_P: tl.constexpr,
):
    DOT_DTYPE: tl.constexpr = tl.float16 if DOT_FP16 else tl.bfloat16
    i_t = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1) // DV_SPLIT
    i_d = tl.program_id(1) % DV_SPLIT
    i_s = tl.program_id(2)
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = o_h < H
    o_c = tl.arange(0, 128)
    o_r = tl.arange(0, 64)

    p_q = q_ptr + i_t * stride_q_t + o_h[:, None] * stride_q_h
    # q in four 128-column groups + rope: [BLOCK_H, 128] x 4, [BLOCK_H, 64]
    b_q0 = tl.load(p_q + o_c[None, :], mask=m_h[:, None], other=0.0).to(DOT_DTYPE)
    b_q1 = tl.load(p_q + 128 + o_c[None, :], mask=m_h[:, None], other=0.0).to(DOT_DTYPE)
    b_q2 = tl.load(p_q + 256 + o_c[None, :], mask=m_h[:, None], other=0.0).to(DOT_DTYPE)
    b_q3 = tl.load(p_q + 384 + o_c[None, :], mask=m_h[:, None], other=0.0).to(DOT_DTYPE)
    b_qpe = tl.load(p_q + 512 + o_r[None, :], mask=m_h[:, None], other=0.0).to(DOT_DTYPE)

    b_m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_H], dtype=tl.float32)
    b_acc0 = tl.zeros([BLOCK_H, 128], dtype=tl.float32)
    b_acc1 = tl.zeros([BLOCK_H, 128], dtype=tl.float32)
    b_acc2 = tl.zeros([BLOCK_H, 128], dtype=tl.float32)
    b_acc3 = tl.zeros([BLOCK_H, 128], dtype=tl.float32)

    start = i_s * split_len
    n_keys = topk
    if HAS_LEN:   # the row's real length: entries past it are never loaded (ops.sparse_mla: topk_length)
        n_keys = tl.minimum(tl.maximum(tl.load(len_ptr + i_t), 0), topk)
    end = tl.minimum(start + split_len, n_keys)
    p_idx = idx_ptr + i_t * stride_idx_t
    for t0 in range(start, end, BLOCK_T):
        o_t = t0 + tl.arange(0, BLOCK_T)
        # [BLOCK_T] slots / rows
        b_idx = tl.load(p_idx + o_t, mask=o_t < end, other=-1).to(tl.int64)
        valid = (b_idx >= 0) & (b_idx < n_rows)
        row = tl.where(valid, b_idx, 0)
        # the latent row is both K (with the rope part) and V: gathered and dequantized once
        b_pe = _load_k_pe(kv_ptr, kv_rope_ptr, stride_kv_row, row, valid, KV_FP8).to(DOT_DTYPE)
        # [BLOCK_H, BLOCK_T] scores; each 128-column group is loaded, dequantized and used in turn
        b_s = _scores_add(tl.zeros([BLOCK_H, BLOCK_T], dtype=tl.float32), b_qpe, b_pe, qk_scale_log2, ISOLATE_P)
        b_k0 = _load_k_chunk(kv_ptr, kv_scale_ptr, stride_kv_row, row, valid, 0, KV_FP8, FP8_NATIVE).to(DOT_DTYPE)
        b_s = _scores_add(b_s, b_q0, b_k0, qk_scale_log2, ISOLATE_P)
        b_k1 = _load_k_chunk(kv_ptr, kv_scale_ptr, stride_kv_row, row, valid, 1, KV_FP8, FP8_NATIVE).to(DOT_DTYPE)
        b_s = _scores_add(b_s, b_q1, b_k1, qk_scale_log2, ISOLATE_P)
        b_k2 = _load_k_chunk(kv_ptr, kv_scale_ptr, stride_kv_row, row, valid, 2, KV_FP8, FP8_NATIVE).to(DOT_DTYPE)
        b_s = _scores_add(b_s, b_q2, b_k2, qk_scale_log2, ISOLATE_P)
        b_k3 = _load_k_chunk(kv_ptr, kv_scale_ptr, stride_kv_row, row, valid, 3, KV_FP8, FP8_NATIVE).to(DOT_DTYPE)
        b_s = _scores_add(b_s, b_q3, b_k3, qk_scale_log2, ISOLATE_P)
        if ISOLATE_P:
            # P reaches the PV dots only through this runtime branch: Triton's layout choice for a wgmma dot
            # (warpsPerTileV3) puts all warps along M when a dot is in its forward slice, which at 64 heads
            # and 8 warps makes both warpgroups compute the same S. Through an scf.if result P is not in
            # S's slice, S gets [4, 2] warps and each warpgroup computes half of the keys' scores.
            if tl.max(valid.to(tl.int32), axis=0) > 0:
                b_m_new, b_alpha, b_l, b_p = _softmax_step(b_s, valid, b_m, b_l, DOT_DTYPE)
            else:   # no valid key in this block: nothing to add (same result as the step with p = 0)
                b_m_new = b_m
                b_alpha = tl.full([BLOCK_H], 1.0, dtype=tl.float32)
                b_p = tl.zeros([BLOCK_H, BLOCK_T], dtype=DOT_DTYPE)
        else:
            b_m_new, b_alpha, b_l, b_p = _softmax_step(b_s * qk_scale_log2, valid, b_m, b_l, DOT_DTYPE)
        if DV_SPLIT == 1:
            b_acc0 = tl.dot(b_p, b_k0, b_acc0 * b_alpha[:, None])
            b_acc1 = tl.dot(b_p, b_k1, b_acc1 * b_alpha[:, None])
            b_acc2 = tl.dot(b_p, b_k2, b_acc2 * b_alpha[:, None])
            b_acc3 = tl.dot(b_p, b_k3, b_acc3 * b_alpha[:, None])
        else:
            # this program owns output columns [256 * i_d, 256 * i_d + 256) (Blackwell: 2 accumulators fit TMEM)
            b_acc0 = tl.dot(b_p, tl.where(i_d == 0, b_k0, b_k2), b_acc0 * b_alpha[:, None])
            b_acc1 = tl.dot(b_p, tl.where(i_d == 0, b_k1, b_k3), b_acc1 * b_alpha[:, None])
        b_m = b_m_new

    empty = b_l == 0.0
    b_l_safe = tl.where(empty, 1.0, b_l)
    b_inv = 1.0 / b_l_safe
    b_lse = tl.where(empty, float("-inf"), (b_m + tl.log2(b_l_safe)) * 0.6931471805599453)
    p_o = o_ptr + i_t * stride_o_t + i_s * stride_o_s + o_h[:, None] * stride_o_h + o_c[None, :]
    if DV_SPLIT == 1:
        tl.store(p_o, (b_acc0 * b_inv[:, None]).to(o_ptr.dtype.element_ty), mask=m_h[:, None])
        tl.store(p_o + 128, (b_acc1 * b_inv[:, None]).to(o_ptr.dtype.element_ty), mask=m_h[:, None])
        tl.store(p_o + 256, (b_acc2 * b_inv[:, None]).to(o_ptr.dtype.element_ty), mask=m_h[:, None])
        tl.store(p_o + 384, (b_acc3 * b_inv[:, None]).to(o_ptr.dtype.element_ty), mask=m_h[:, None])
    else:
        p_o += i_d * 256
        tl.store(p_o, (b_acc0 * b_inv[:, None]).to(o_ptr.dtype.element_ty), mask=m_h[:, None])
        tl.store(p_o + 128, (b_acc1 * b_inv[:, None]).to(o_ptr.dtype.element_ty), mask=m_h[:, None])
    tl.store(lse_ptr + i_t * stride_l_t + i_s * stride_l_s + o_h, b_lse, mask=m_h & (i_d == 0))


@triton.jit
def _combine_kernel(op_ptr, lp_ptr, out_ptr, lse_ptr, H, n_splits,
                    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge split partials: op [T, S, H, 512] fp32 (normalized), lp [T, S, H] -> out [T, H, 512], lse [T, H]."""
    i_t = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1)
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < n_splits
    b_ls = tl.load(lp_ptr + (i_t * n_splits + o_s) * H + i_h, mask=m_s, other=float("-inf"))
    b_max = tl.max(b_ls, axis=0)
    b_max_safe = tl.where(b_max == float("-inf"), 0.0, b_max)
    b_w = tl.exp(b_ls - b_max_safe)
    b_tot = tl.sum(b_w, axis=0)
    empty = b_tot == 0.0
    b_tot_safe = tl.where(empty, 1.0, b_tot)
    tl.store(lse_ptr + i_t * H + i_h, tl.where(empty, float("-inf"), b_max_safe + tl.log(b_tot_safe)))
    b_w = b_w / b_tot_safe
    for d0 in tl.static_range(0, 512, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        # [BLOCK_S, BLOCK_D]
        b_o = tl.load(op_ptr + ((i_t * n_splits + o_s[:, None]) * H + i_h) * 512 + o_d[None, :],
                      mask=m_s[:, None], other=0.0)
        b_out = tl.sum(b_o * b_w[:, None], axis=0)
        tl.store(out_ptr + (i_t * H + i_h) * 512 + o_d, b_out.to(out_ptr.dtype.element_ty))


def attn_config(cap: tuple, kv_fp8: bool = True, h: int = 128) -> dict:
    """Shipped attention launch config for a compute capability, cache kind and head count (the compile tests
    build these). BLOCK_H is already fitted to h (padded to >= 16 for tl.dot).
    ISOLATE_P: route P to the PV dots through a branch so S is split across warpgroups (wgmma, 64 heads)."""
    if (10, 0) <= cap < (12, 0):   # tcgen05: 4 [64, 128] fp32 acc + scores overflow TMEM -> split d_v in 2
        cfg = dict(BLOCK_H=64, BLOCK_T=32, DV_SPLIT=2, ISOLATE_P=False, num_warps=8, num_stages=2)
    elif (9, 0) <= cap < (10, 0):  # wgmma: q and the latent tile in shared memory, 128 fp32 acc registers;
        # with S split over both warpgroups, these are the spill-free tile/stage pairs (255 registers)
        cfg = dict(BLOCK_H=64, BLOCK_T=32 if kv_fp8 else 16, DV_SPLIT=1, ISOLATE_P=True, num_warps=8,
                   num_stages=1 if kv_fp8 else 2)
    else:                # mma.sync (sm_80/86/89/120): q lives in registers as the A operand -> 32 heads per program
        # sm_120: 1 stage spills the fp8 kernel (21 STL/LDL with ptxas for sm_120), 2 stages do not
        cfg = dict(BLOCK_H=32, BLOCK_T=32, DV_SPLIT=1, ISOLATE_P=False, num_warps=8,
                   num_stages=2 if cap >= (12, 0) else 1)
    cfg = config_override("DSV32_MLA_ATTN_CONFIG", cfg)
    cfg["BLOCK_H"] = max(16, min(cfg["BLOCK_H"], triton.next_power_of_2(h)))
    if cfg["BLOCK_H"] < 64 and (9, 0) <= cap < (12, 0):
        # below 64 heads the dots are mma.sync on every arch: there the branch would put S on [num_warps, 1]
        # warps (4x the work at 32 rows), 16-key tiles duplicate it along N, and a d_v split (a tensor-memory
        # limit) only makes both programs compute S; use the mma.sync shape
        cfg.update(ISOLATE_P=False, BLOCK_T=32, DV_SPLIT=1, num_stages=2)
    return cfg


def _device_cap(device: torch.device) -> tuple:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)


def plan_splits(n_tokens: int, n_hblocks: int, topk: int, block_t: int, device: torch.device) -> int:
    """Number of top-k splits: enough programs for ~2 waves, each split >= MIN_KEYS_PER_SPLIT keys."""
    progs = n_tokens * n_hblocks
    target = 2 * num_sms(device)
    if progs >= target:
        return 1
    max_splits = max(1, topk // max(MIN_KEYS_PER_SPLIT, block_t))
    return max(1, min(triton.cdiv(target, progs), max_splits, 64))


def _sparse_mla(q3: torch.Tensor, kv_rows, kv_fp8: bool, native: bool, stride_kv_row: int, n_rows: int,
                idx2: torch.Tensor, sm_scale: float, kv_dtype: torch.dtype, lens=None):
    """q3 [T, H, 576], idx2 [T, topk], lens [T] int32 or None -> out [T, H, 512] q.dtype, lse [T, H] fp32.
    A split past its row's length exits at once (empty: lse -inf, merged away by the combine)."""
    T, H, _ = q3.shape
    topk = idx2.shape[1]
    dev = q3.device
    out = torch.empty(T, H, KV_LORA, dtype=q3.dtype, device=dev)
    lse = torch.empty(T, H, dtype=torch.float32, device=dev)
    if T == 0 or H == 0:
        return out, lse
    if topk == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    cfg = attn_config(_device_cap(dev), kv_fp8, H)
    block_h = cfg.pop("BLOCK_H")
    isolate_p = cfg.pop("ISOLATE_P")
    dv_split = cfg.pop("DV_SPLIT")
    block_t = cfg.pop("BLOCK_T")
    n_hb = triton.cdiv(H, block_h)
    dot_fp16 = q3.dtype == torch.float16 and kv_dtype == torch.float16
    vals, scales, rope = kv_rows
    splits = plan_splits(T, n_hb, topk, block_t, dev)
    split_len = triton.cdiv(triton.cdiv(topk, splits), block_t) * block_t
    splits = triton.cdiv(topk, split_len)
    if splits == 1:
        o_buf, l_buf = out, lse
        so = (out.stride(0), 0, out.stride(1))
        sl = (lse.stride(0), 0)
    else:
        o_buf = torch.empty(T, splits, H, KV_LORA, dtype=torch.float32, device=dev)
        l_buf = torch.empty(T, splits, H, dtype=torch.float32, device=dev)
        so = (o_buf.stride(0), o_buf.stride(1), o_buf.stride(2))
        sl = (l_buf.stride(0), l_buf.stride(1))
    _sparse_mla_attn_kernel[(T, n_hb * dv_split, splits)](
        q3, q3.stride(0), q3.stride(1),
        vals, scales, rope, stride_kv_row, n_rows,
        idx2, idx2.stride(0), topk, split_len, idx2 if lens is None else lens,
        o_buf, *so, l_buf, *sl,
        H, float(sm_scale) * LOG2E,
        BLOCK_H=block_h, BLOCK_T=block_t, KV_FP8=kv_fp8, FP8_NATIVE=native, DOT_FP16=dot_fp16, DV_SPLIT=dv_split,
        HAS_LEN=lens is not None, ISOLATE_P=isolate_p, **cfg)
    if splits > 1:
        _combine_kernel[(T, H)](o_buf, l_buf, out, lse, H, splits,
                                BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=128, num_warps=4)
    return out, lse


def _check_q(q: torch.Tensor) -> torch.Tensor:
    if q.stride(-1) != 1:
        q = q.contiguous()
    return q


def _lens(topk_length, n: int):
    if topk_length is None:
        return None
    require_device("topk_length", topk_length)
    if topk_length.dtype != torch.int32 or topk_length.numel() != n:
        raise ValueError(f"topk_length must be int32 with {n} entries, got {topk_length.dtype} "
                         f"{list(topk_length.shape)}")
    return topk_length.reshape(n).contiguous()


def sparse_mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                      d_v: int = KV_LORA, topk_length=None):
    """q [b, s_q, h, 576], kv_cache paged (bf16 [P, 64, 576] or fp8_ds_mla uint8 [P, 64, 656]),
    indices [b, s_q, topk] int32 slots (-1 skipped), topk_length [b, s_q] int32 or None (entries read per row)
    -> out [b, s_q, h, 512] q.dtype, lse [b, s_q, h] fp32."""
    for name, t in (("q", q), ("kv_cache", kv_cache), ("indices", indices)):
        require_device(name, t)
    if d_v != KV_LORA:
        raise ValueError(f"d_v={d_v}: the Triton sparse MLA kernel supports only {KV_LORA}")
    if indices.dtype != torch.int32:
        raise TypeError(f"indices.dtype={indices.dtype}: expected torch.int32")
    _check_cache(kv_cache)
    if q.dim() != 4 or q.shape[-1] != HEAD_576:
        raise ValueError(f"q has shape {list(q.shape)}, expected [b, s_q, h, {HEAD_576}]")
    b, s_q, h, d = q.shape
    if indices.dim() != 3 or tuple(indices.shape[:2]) != (b, s_q):
        raise ValueError(f"indices has shape {list(indices.shape)}, expected [b={b}, s_q={s_q}, topk]")
    q3 = _check_q(q).reshape(b * s_q, h, HEAD_576)
    idx2 = indices.reshape(b * s_q, indices.shape[-1])
    if idx2.stride(-1) != 1:
        idx2 = idx2.contiguous()
    n_rows = kv_cache.shape[0] * kv_cache.shape[1]
    lens = _lens(topk_length, b * s_q)
    if kv_cache.dtype == torch.uint8:
        native = native_fp8(kv_cache.device)
        views = _fp8_views(kv_cache)
        out, lse = _sparse_mla(q3, views, True, native, FP8_ROW, n_rows, idx2, sm_scale, torch.bfloat16, lens)
    else:
        rows = kv_cache.view(-1, HEAD_576)
        out, lse = _sparse_mla(q3, (rows, rows, rows), False, False, HEAD_576, n_rows, idx2, sm_scale,
                               kv_cache.dtype, lens)
    return out.reshape(b, s_q, h, KV_LORA), lse.reshape(b, s_q, h)


def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = KV_LORA, topk_length=None):
    """q [s_q, h, 576], kv [s_kv, 1, 576], indices [s_q, 1, topk] int32 rows of kv (-1 skipped), topk_length
    [s_q] int32 or None
    -> out [s_q, h, 512] q.dtype, lse [s_q, h] fp32."""
    for name, t in (("q", q), ("kv", kv), ("indices", indices)):
        require_device(name, t)
    if d_v != KV_LORA:
        raise ValueError(f"d_v={d_v}: the Triton sparse MLA kernel supports only {KV_LORA}")
    if indices.dtype != torch.int32:
        raise TypeError(f"indices.dtype={indices.dtype}: expected torch.int32")
    if q.dim() != 3 or q.shape[-1] != HEAD_576:
        raise ValueError(f"q has shape {list(q.shape)}, expected [s_q, h, {HEAD_576}]")
    s_q, h, d = q.shape
    if kv.dim() != 3 or kv.shape[1] != 1 or kv.shape[2] != HEAD_576:
        raise ValueError(f"kv has shape {list(kv.shape)}, expected [s_kv, 1, {HEAD_576}]")
    if indices.dim() != 3 or indices.shape[0] != s_q or indices.shape[1] != 1:
        raise ValueError(f"indices has shape {list(indices.shape)}, expected [s_q={s_q}, 1, topk]")
    q3 = _check_q(q)
    rows = kv.reshape(kv.shape[0], HEAD_576)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    idx2 = indices[:, 0, :]
    if idx2.stride(-1) != 1:
        idx2 = idx2.contiguous()
    return _sparse_mla(q3, (rows, rows, rows), False, False, rows.stride(0), rows.shape[0], idx2, sm_scale,
                       kv.dtype, _lens(topk_length, s_q))


def flops_sparse_mla(b: int, s_q: int, h: int, topk: int) -> float:
    """FlashMLA's FLOP count for sparse decode: 2 * b * s_q * h * topk * (576 + 512)."""
    return 2.0 * b * s_q * h * topk * (HEAD_576 + KV_LORA)


__all__ = ["mla_cache_write", "mla_cache_gather", "sparse_mla_decode", "sparse_mla_prefill"]
