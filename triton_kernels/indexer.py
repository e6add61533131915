"""Triton kernels for the DSA lightning indexer: Hadamard + FP8 quant, paged key cache, logits, top-k.

Semantics and byte layouts: deepseek_v32_plugin.ops.indexer (naive.py defines them). Each public function
has the signature of its `naive_*` reference:
  indexer_quant(x, rotate)                         fused 128-point Hadamard (3 bf16 MMAs, exact split) + ue8m0 FP8
  indexer_cache_write(k_fp8, k_scale, kv_cache, slot_mapping)
  indexer_k_quant_and_cache(k, kv_cache, slot_mapping)   quant fused with the cache write
  indexer_cache_gather(kv_cache, slots)
  fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke)          ragged prefill, FP8 MMA
  fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len)  next_n 1..4
  indexer_topk(logits, topk, ks, ke)               top-byte + adaptive 512-bin histograms, compaction, sort;
                                                   few long rows: each row split over several CTAs
  indices_to_slots(indices, block_table, page_size)

FP8 tensors enter the logits kernels as fp8e4nv on sm_89+ (straight from shared memory into the MMA: no
register round trip, no conversion in the K loop; tests/triton/test_compile_indexer.py checks TTGIR / SASS)
and as their bytes (uint8) below sm_89, decoded to fp16 by integer arithmetic (_fp8_util.e4m3_bits_to_f16);
the choice is made at launch from the device capability (_fp8_util.native_fp8).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._fp8_util import (capability, e4m3_bits_to_f16, f32_to_e4m3_bits, fp8_arg, native_fp8, require,
                        require_device, ue8m0_scale_bits)
from ..ops import PAGE_SIZE as PAGE   # installed as deepseek_v32_plugin.triton_kernels
from .fp8_quant import FP8_DTYPE

HEAD_DIM = 128
BYTES_PER_TOKEN = HEAD_DIM + 4
PAGE_BYTES = PAGE * BYTES_PER_TOKEN          # 8448
VALUE_BYTES = PAGE * HEAD_DIM                # 8192: keys first, then 64 fp32 scales
MAX_TOPK = 4096                              # one row's selection is held in registers for the final sort
_INV_SQRT_D = float(torch.tensor(HEAD_DIM ** -0.5, dtype=torch.float32))


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: still exercise several splits


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def _check_cache(kv_cache: torch.Tensor) -> None:
    require(kv_cache.dtype == torch.uint8 and kv_cache.dim() == 3 and tuple(kv_cache.shape[1:]) == (PAGE, BYTES_PER_TOKEN),
            f"indexer kv_cache must be uint8 [pages, {PAGE}, {BYTES_PER_TOKEN}], got {kv_cache.dtype} {list(kv_cache.shape)}")
    require(kv_cache.is_contiguous(), "indexer kv_cache must be contiguous")


def _contig(name: str, t: torch.Tensor) -> None:
    require(t.is_contiguous(), f"{name} must be contiguous (strides {t.stride()})")


# ----------------------------------------------------------------------------- device helpers

@triton.jit
def _as_mma_operand(b, NATIVE_FP8: tl.constexpr):
    """e4m3 -> MMA operand: fp8e4nv as loaded (sm_89+: the bitcast is a no-op on fp8e4nv pointers) or fp16
    holding value * 2^-8 (byte path: uint8 loads)."""
    if NATIVE_FP8:
        return b.to(tl.float8e4nv, bitcast=True)
    else:
        return e4m3_bits_to_f16(b)


@triton.jit
def _hadamard_rotate(x, D: tl.constexpr):
    """x [R, D] fp32 -> x @ H_D * D^-0.5 (Sylvester order). H entries are +-1 (exact in bf16); x is split
    into three bf16 parts (hi + mid + lo == x exactly) so three bf16 MMAs give the fp32 product."""
    o_i = tl.arange(0, D)
    p = o_i[:, None] & o_i[None, :]
    p = p ^ (p >> 4)
    p = p ^ (p >> 2)
    p = p ^ (p >> 1)
    h = (1 - 2 * (p & 1)).to(tl.bfloat16)
    x_hi = x.to(tl.bfloat16)
    r = x - x_hi.to(tl.float32)
    x_mid = r.to(tl.bfloat16)
    x_lo = (r - x_mid.to(tl.float32)).to(tl.bfloat16)
    acc = tl.dot(x_hi, h)
    acc = tl.dot(x_mid, h, acc)
    acc = tl.dot(x_lo, h, acc)
    return acc * 0.08838834764831845


@triton.jit
def _f32_sort_key(v):
    """fp32 -> int32 whose signed order is the float order (-inf lowest)."""
    b = v.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


# ----------------------------------------------------------------------------- quant (+ cache write)

@triton.jit
def _indexer_quant_kernel(x_ptr, q_ptr, s_ptr, slot_ptr, cache_ptr, cache_f32_ptr, R,
                          BLOCK_R: tl.constexpr, D: tl.constexpr, ROTATE: tl.constexpr,
                          TO_CACHE: tl.constexpr, NATIVE_FP8: tl.constexpr):
    i_r = tl.program_id(0)
    o_r = i_r * BLOCK_R + tl.arange(0, BLOCK_R)
    o_d = tl.arange(0, D)
    m_r = o_r < R
    # [BLOCK_R, D]
    b_x = tl.load(x_ptr + o_r[:, None].to(tl.int64) * D + o_d[None, :], mask=m_r[:, None], other=0.0).to(tl.float32)
    if ROTATE:
        b_x = _hadamard_rotate(b_x, D)
    scale, inv = ue8m0_scale_bits(tl.max(tl.abs(b_x), axis=1))
    b_y = tl.minimum(tl.maximum(b_x * inv[:, None], -448.0), 448.0)
    if NATIVE_FP8:
        b_q = b_y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    else:
        b_q = f32_to_e4m3_bits(b_y).to(tl.uint8)
    if TO_CACHE:
        slot = tl.load(slot_ptr + o_r, mask=m_r, other=-1).to(tl.int64)
        m_w = m_r & (slot >= 0)
        page = slot // 64
        off = slot % 64
        tl.store(cache_ptr + (page * 8448 + off * 128)[:, None] + o_d[None, :], b_q, mask=m_w[:, None])
        tl.store(cache_f32_ptr + page * 2112 + 2048 + off, scale, mask=m_w)
    else:
        tl.store(q_ptr + o_r[:, None].to(tl.int64) * D + o_d[None, :], b_q, mask=m_r[:, None])
        tl.store(s_ptr + o_r, scale, mask=m_r)


QUANT_CONFIG = dict(BLOCK_R=64, num_warps=4, num_stages=1)          # sm_90+: H is a wgmma operand in shared
QUANT_CONFIG_MMA = dict(BLOCK_R=16, num_warps=8, num_stages=1)      # mma.sync: H lives in registers


def quant_config(cap: tuple[int, int]) -> dict:
    return QUANT_CONFIG if cap >= (9, 0) else QUANT_CONFIG_MMA


def indexer_quant(x: torch.Tensor, rotate: bool = True):
    """x [..., 128] float -> (x_fp8 [..., 128] e4m3, scale [...] fp32 power of two)."""
    require_device("indexer_quant", x)
    require(x.shape[-1] == HEAD_DIM, f"indexer_quant: x last dim {x.shape[-1]} must be {HEAD_DIM}")
    _contig("indexer_quant: x", x)
    native = native_fp8(x.device)
    q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    r = x.numel() // HEAD_DIM
    if r:
        cfg = quant_config(capability(x.device))
        _indexer_quant_kernel[(triton.cdiv(r, cfg["BLOCK_R"]),)](
            x, _u8(q), s, s, s, s, r, D=HEAD_DIM, ROTATE=bool(rotate), TO_CACHE=False, NATIVE_FP8=native, **cfg)
    return q, s


def indexer_k_quant_and_cache(k: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """k [T, 128] float -> Hadamard + FP8 quant -> kv_cache at slot_mapping [T] (-1 skipped)."""
    require_device("indexer_k_quant_and_cache", k)
    require(k.dim() == 2 and k.shape[1] == HEAD_DIM, f"indexer_k_quant_and_cache: k must be [T, {HEAD_DIM}]")
    _contig("indexer_k_quant_and_cache: k", k)
    _contig("slot_mapping", slot_mapping)
    _check_cache(kv_cache)
    t = k.shape[0]
    if t == 0:
        return
    cfg = quant_config(capability(k.device))
    _indexer_quant_kernel[(triton.cdiv(t, cfg["BLOCK_R"]),)](
        k, kv_cache, kv_cache, slot_mapping, kv_cache, kv_cache.view(torch.float32), t, D=HEAD_DIM, ROTATE=True,
        TO_CACHE=True, NATIVE_FP8=native_fp8(k.device), **cfg)


# ----------------------------------------------------------------------------- cache write / gather

@triton.jit
def _cache_copy_kernel(k_ptr, ks_ptr, slot_ptr, cache_ptr, cache_f32_ptr, T, TOTAL_SLOTS,
                       BLOCK_T: tl.constexpr, D: tl.constexpr, GATHER: tl.constexpr):
    """GATHER=False: cache[slot[t]] <- (k[t], ks[t]) (slot -1 skipped). GATHER=True: the reverse."""
    o_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = tl.arange(0, D)
    m_t = o_t < T
    slot = tl.load(slot_ptr + o_t, mask=m_t, other=-1).to(tl.int64)
    m_s = m_t & (slot >= 0) & (slot < TOTAL_SLOTS)
    page = slot // 64
    off = slot % 64
    p_c = cache_ptr + (page * 8448 + off * 128)[:, None] + o_d[None, :]
    p_cs = cache_f32_ptr + page * 2112 + 2048 + off
    p_k = k_ptr + o_t[:, None].to(tl.int64) * D + o_d[None, :]
    if GATHER:
        tl.store(p_k, tl.load(p_c, mask=m_s[:, None], other=0), mask=m_t[:, None])
        tl.store(ks_ptr + o_t, tl.load(p_cs, mask=m_s, other=0.0), mask=m_t)
    else:
        tl.store(p_c, tl.load(p_k, mask=m_s[:, None], other=0), mask=m_s[:, None])
        tl.store(p_cs, tl.load(ks_ptr + o_t, mask=m_s, other=0.0), mask=m_s)


def indexer_cache_write(k_fp8, k_scale, kv_cache, slot_mapping) -> None:
    """k_fp8 [T, 128] e4m3 + k_scale [T] fp32 -> kv_cache [pages, 64, 132] uint8 at slot_mapping [T]."""
    require_device("indexer_cache_write", kv_cache)
    _check_cache(kv_cache)
    for name, t in (("k_fp8", k_fp8), ("k_scale", k_scale), ("slot_mapping", slot_mapping)):
        _contig(f"indexer_cache_write: {name}", t)
    t = k_fp8.shape[0]
    if t == 0:
        return
    _cache_copy_kernel[(triton.cdiv(t, 32),)](_u8(k_fp8), k_scale, slot_mapping, kv_cache, kv_cache.view(torch.float32),
                                               t, kv_cache.shape[0] * PAGE, BLOCK_T=32, D=HEAD_DIM, GATHER=False,
                                               num_warps=4)


def indexer_cache_gather(kv_cache, slots):
    """slots [N] -> (k_fp8 [N, 128] e4m3, k_scale [N] fp32); slots outside the cache read as zeros."""
    require_device("indexer_cache_gather", kv_cache)
    _check_cache(kv_cache)
    _contig("indexer_cache_gather: slots", slots)
    n = slots.shape[0]
    k = torch.empty((n, HEAD_DIM), dtype=FP8_DTYPE, device=kv_cache.device)
    s = torch.empty((n,), dtype=torch.float32, device=kv_cache.device)
    if n:
        _cache_copy_kernel[(triton.cdiv(n, 32),)](_u8(k), s, slots, kv_cache, kv_cache.view(torch.float32), n,
                                                   kv_cache.shape[0] * PAGE, BLOCK_T=32, D=HEAD_DIM, GATHER=True,
                                                   num_warps=4)
    return k, s


# ----------------------------------------------------------------------------- logits

@triton.jit
def _weighted_relu_sum(acc, b_w, BS: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr):
    """acc [BS*HP, BN] (q.k per (query, head) row), b_w [BS*HP] -> [BS, BN] = sum_h w * relu(acc)."""
    acc = tl.maximum(acc, 0.0) * b_w[:, None]
    if BS == 1:
        return tl.reshape(tl.sum(acc, axis=0), (1, BN))
    else:
        return tl.sum(tl.reshape(acc, (BS, HP, BN)), axis=1)


@triton.jit
def _fp8_logits_kernel(q_ptr, k_ptr, kscale_ptr, w_ptr, ks_ptr, ke_ptr, out_ptr, S, N, H, KEYS_PER_SPLIT,
                       BS: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                       NATIVE_FP8: tl.constexpr):
    """One program: BS query tokens x one split of the keys. Rows of the MMA are (query, head) pairs."""
    i_s, i_sp = tl.program_id(0), tl.program_id(1)
    o_q = tl.arange(0, BS * HP)
    q_s = i_s * BS + o_q // HP
    q_h = o_q % HP
    m_q = (q_s < S) & (q_h < H)
    o_d = tl.arange(0, D)
    # [BS*HP, D] query bytes, [BS*HP] head weights
    b_q = tl.load(q_ptr + (q_s.to(tl.int64) * H + q_h)[:, None] * D + o_d[None, :], mask=m_q[:, None], other=0.0)
    b_q = _as_mma_operand(b_q, NATIVE_FP8)
    b_w = tl.load(w_ptr + q_s.to(tl.int64) * H + q_h, mask=m_q, other=0.0)
    if not NATIVE_FP8:
        b_w = b_w * 65536.0
    o_s = i_s * BS + tl.arange(0, BS)
    m_s = o_s < S
    r_ks = tl.load(ks_ptr + o_s, mask=m_s, other=0).to(tl.int32)
    r_ke = tl.load(ke_ptr + o_s, mask=m_s, other=0).to(tl.int32)
    lo = tl.min(tl.where(m_s, r_ks, N), axis=0)
    hi = tl.max(tl.where(m_s, r_ke, 0), axis=0)
    n0 = i_sp * KEYS_PER_SPLIT
    n1 = tl.minimum(n0 + KEYS_PER_SPLIT, N)
    c0 = tl.maximum(lo, n0)
    c1 = tl.minimum(hi, n1)
    start = tl.where(c1 > c0, n0 + ((c0 - n0) // BN) * BN, n0)
    end = tl.where(c1 > c0, c1, n0)
    p_out = out_ptr + o_s[:, None].to(tl.int64) * N
    neg = tl.full((BS, BN), float("-inf"), tl.float32)
    for n in range(n0, start, BN):
        o_n = n + tl.arange(0, BN)
        tl.store(p_out + o_n[None, :], neg, mask=m_s[:, None] & (o_n[None, :] < n1))
    for n in range(start, end, BN):
        o_n = n + tl.arange(0, BN)
        m_n = o_n < n1
        # [BN, D] key bytes, [BN] key scales
        b_k = tl.load(k_ptr + o_n[:, None].to(tl.int64) * D + o_d[None, :], mask=m_n[:, None], other=0.0)
        b_sc = tl.load(kscale_ptr + o_n, mask=m_n, other=0.0)
        acc = tl.dot(b_q, tl.trans(_as_mma_operand(b_k, NATIVE_FP8)))
        logit = _weighted_relu_sum(acc, b_w, BS, HP, BN) * b_sc[None, :]
        valid = (o_n[None, :] >= r_ks[:, None]) & (o_n[None, :] < r_ke[:, None])
        tl.store(p_out + o_n[None, :], tl.where(valid, logit, float("-inf")), mask=m_s[:, None] & m_n[None, :])
    for n in range(start + tl.cdiv(end - start, BN) * BN, n1, BN):
        o_n = n + tl.arange(0, BN)
        tl.store(p_out + o_n[None, :], neg, mask=m_s[:, None] & (o_n[None, :] < n1))


def logits_config(h: int, cap: tuple[int, int]) -> dict:
    """Shipped config for fp8_indexer_logits: (query, head) rows per MMA = BS * HP."""
    hp = max(16, _next_pow2(h))
    bs = max(1, min(4, 128 // hp))
    return dict(BS=bs, HP=hp, BN=128 if cap >= (9, 0) else 64, num_warps=8 if bs * hp >= 128 else 4, num_stages=3)


def fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke):
    """q_fp8 [S, H, 128] e4m3, k_fp8 [N, 128] e4m3, k_scale [N], weights [S, H] fp32, ks/ke [S] -> [S, N] fp32."""
    s, h, d = q_fp8.shape
    n = k_fp8.shape[0]
    require_device("fp8_indexer_logits", q_fp8)
    require(d == HEAD_DIM, f"fp8_indexer_logits: head dim {d} must be {HEAD_DIM}")
    require(h <= 128, f"fp8_indexer_logits: H={h} heads > 128 is not supported by the Triton kernel")
    for name, t in (("q_fp8", q_fp8), ("k_fp8", k_fp8), ("k_scale", k_scale), ("weights", weights), ("ks", ks), ("ke", ke)):
        _contig(f"fp8_indexer_logits: {name}", t)
    out = torch.empty((s, n), dtype=torch.float32, device=q_fp8.device)
    if s == 0 or n == 0:
        return out
    cfg = logits_config(h, capability(q_fp8.device))
    n_sblk = triton.cdiv(s, cfg["BS"])
    want_splits = max(1, triton.cdiv(4 * _num_sms(q_fp8.device), n_sblk))
    kps = triton.cdiv(triton.cdiv(n, want_splits), cfg["BN"]) * cfg["BN"]
    grid = (n_sblk, triton.cdiv(n, kps))
    native = native_fp8(q_fp8.device)
    _fp8_logits_kernel[grid](fp8_arg(q_fp8, native), fp8_arg(k_fp8, native), k_scale, weights, ks, ke, out, s, n, h,
                             kps, D=HEAD_DIM, NATIVE_FP8=native, **cfg)
    return out


@triton.jit
def _fp8_paged_logits_kernel(q_ptr, cache_ptr, cache_f32_ptr, w_ptr, ctx_ptr, bt_ptr, out_ptr, H, MAX_LEN,
                             bt_stride, PAGES_PER_SPLIT,
                             NEXT_N: tl.constexpr, NP: tl.constexpr, HP: tl.constexpr, BLOCK_PAGES: tl.constexpr,
                             D: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """One program: one sequence's NEXT_N query tokens x one split of its pages (BLOCK_PAGES pages per step).
    Query j (0-based) of sequence b sees positions n < ctx[b] - NEXT_N + j + 1."""
    BN: tl.constexpr = BLOCK_PAGES * 64
    i_b, i_sp = tl.program_id(0), tl.program_id(1)
    ctx = tl.load(ctx_ptr + i_b).to(tl.int32)
    o_q = tl.arange(0, NP * HP)
    q_j = o_q // HP
    q_h = o_q % HP
    m_q = (q_j < NEXT_N) & (q_h < H)
    row_q = i_b.to(tl.int64) * NEXT_N + q_j
    o_d = tl.arange(0, D)
    # [NP*HP, D] query bytes, [NP*HP] weights
    b_q = tl.load(q_ptr + (row_q * H + q_h)[:, None] * D + o_d[None, :], mask=m_q[:, None], other=0.0)
    b_q = _as_mma_operand(b_q, NATIVE_FP8)
    b_w = tl.load(w_ptr + row_q * H + q_h, mask=m_q, other=0.0)
    if not NATIVE_FP8:
        b_w = b_w * 65536.0
    o_j = tl.arange(0, NP)
    m_j = o_j < NEXT_N
    limit = ctx - NEXT_N + 1 + o_j                       # [NP] exclusive key bound per query
    p_out = out_ptr + (i_b.to(tl.int64) * NEXT_N + o_j)[:, None] * MAX_LEN
    n_pages_out = tl.cdiv(MAX_LEN, 64)
    p0 = i_sp * PAGES_PER_SPLIT
    p1 = tl.minimum(p0 + PAGES_PER_SPLIT, n_pages_out)
    pc = tl.maximum(tl.minimum(tl.cdiv(tl.minimum(ctx, MAX_LEN), 64), p1), p0)   # pages [p0, pc) hold keys
    o_t = tl.arange(0, BN)
    o_tp = o_t // 64
    o_to = o_t % 64
    for p in range(p0, pc, BLOCK_PAGES):
        page = p + o_tp
        m_t = page < pc
        blk = tl.load(bt_ptr + i_b.to(tl.int64) * bt_stride + page, mask=m_t, other=0).to(tl.int64)
        # [BN, D] key bytes (BLOCK_PAGES pages), [BN] scales
        b_k = tl.load(cache_ptr + (blk * 8448 + o_to * 128)[:, None] + o_d[None, :], mask=m_t[:, None], other=0.0)
        b_sc = tl.load(cache_f32_ptr + blk * 2112 + 2048 + o_to, mask=m_t, other=0.0)
        acc = tl.dot(b_q, tl.trans(_as_mma_operand(b_k, NATIVE_FP8)))
        logit = _weighted_relu_sum(acc, b_w, NP, HP, BN) * b_sc[None, :]
        o_n = p * 64 + o_t
        logit = tl.where(o_n[None, :] < limit[:, None], logit, float("-inf"))
        tl.store(p_out + o_n[None, :], logit, mask=m_j[:, None] & (o_n[None, :] < MAX_LEN) & (o_n[None, :] < p1 * 64))
    neg = tl.full((NP, BN), float("-inf"), tl.float32)
    for p in range(p0 + tl.cdiv(pc - p0, BLOCK_PAGES) * BLOCK_PAGES, p1, BLOCK_PAGES):
        o_n = p * 64 + o_t
        tl.store(p_out + o_n[None, :], neg, mask=m_j[:, None] & (o_n[None, :] < p1 * 64) & (o_n[None, :] < MAX_LEN))


def paged_logits_config(h: int, next_n: int, cap: tuple[int, int]) -> dict:
    """Shipped config for fp8_paged_indexer_logits: MMA rows = NP * HP (next_n padded to a power of two)."""
    hp = max(16, _next_pow2(h))
    np_ = _next_pow2(next_n)
    rows = np_ * hp
    block_pages = 2 if rows <= 64 else 1          # keeps the [rows, 64 * pages] fp32 accumulator <= 32 KB
    return dict(NP=np_, HP=hp, BLOCK_PAGES=block_pages, num_warps=4 if rows <= 64 else 8,
                num_stages=3 if cap >= (8, 0) else 2)


def fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len: int):
    """q_fp8 [B, next_n, H, 128] e4m3, kv_cache [pages, 64, 132] uint8, weights [B*next_n, H] fp32,
    context_lens [B], block_table [B, max_pages] -> logits [B*next_n, max_context_len] fp32."""
    b, next_n, h, d = q_fp8.shape
    require_device("fp8_paged_indexer_logits", q_fp8)
    require(d == HEAD_DIM, f"fp8_paged_indexer_logits: head dim {d} must be {HEAD_DIM}")
    require(1 <= next_n <= 4, f"fp8_paged_indexer_logits: next_n={next_n} must be in 1..4")
    require(h <= 128 and next_n * h <= 256, f"fp8_paged_indexer_logits: H={h} x next_n={next_n} query rows "
                                             "exceed the kernel's 256-row MMA tile")
    _check_cache(kv_cache)
    for name, t in (("q_fp8", q_fp8), ("weights", weights), ("context_lens", context_lens)):
        _contig(f"fp8_paged_indexer_logits: {name}", t)
    require(block_table.stride(1) == 1, "fp8_paged_indexer_logits: block_table rows must be contiguous")
    out = torch.empty((b * next_n, max_context_len), dtype=torch.float32, device=q_fp8.device)
    if b == 0 or max_context_len == 0:
        return out
    cfg = paged_logits_config(h, next_n, capability(q_fp8.device))
    n_pages = triton.cdiv(max_context_len, PAGE)
    want_splits = max(1, triton.cdiv(2 * _num_sms(q_fp8.device), b))
    pps = triton.cdiv(triton.cdiv(n_pages, want_splits), cfg["BLOCK_PAGES"]) * cfg["BLOCK_PAGES"]
    grid = (b, triton.cdiv(n_pages, pps))
    native = native_fp8(q_fp8.device)
    _fp8_paged_logits_kernel[grid](fp8_arg(q_fp8, native), kv_cache.view(FP8_DTYPE) if native else kv_cache,
                                   kv_cache.view(torch.float32), weights, context_lens, block_table, out, h,
                                   max_context_len, block_table.stride(0), pps, NEXT_N=next_n, D=HEAD_DIM,
                                   NATIVE_FP8=native, **cfg)
    return out


# ----------------------------------------------------------------------------- top-k

@triton.jit
def _radix_step(hist, remaining, NBINS: tl.constexpr):
    """Digit d holding the `remaining`-th largest key; returns (d, rank still needed inside d, count in d)."""
    o_bin = tl.arange(0, NBINS)
    cge = tl.cumsum(hist, 0, reverse=True)                  # keys with this digit or a larger one
    d = tl.max(tl.where(cge >= remaining, o_bin, -1), axis=0)
    above = tl.sum(tl.where(o_bin == d, cge - hist, 0), axis=0)
    cnt = tl.sum(tl.where(o_bin == d, hist, 0), axis=0)
    return d, remaining - above, cnt


@triton.jit
def _row_radix_pass(row, ks, ke, prefix, remaining, SHIFT: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """One histogram pass over the whole row, counting keys whose bits above SHIFT+BITS equal prefix's."""
    o_b = tl.arange(0, BLOCK)
    hist = tl.zeros((1 << BITS,), tl.int32)
    for n0 in range(ks, ke, BLOCK):
        o_n = n0 + o_b
        m_n = o_n < ke
        key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
        match = m_n & ((key >> (SHIFT + BITS)) == (prefix >> (SHIFT + BITS)))
        hist += tl.histogram((key >> SHIFT) & ((1 << BITS) - 1), 1 << BITS, mask=match)
    d, remaining, cnt = _radix_step(hist, remaining, 1 << BITS)
    return prefix | (d << SHIFT), remaining, cnt


@triton.jit
def _row_radix_pass_rt(row, ks, ke, prefix, remaining, lo, hi, BLOCK: tl.constexpr):
    """_row_radix_pass with run-time bit positions: keys whose bits >= hi equal prefix's, histogram of bits
    [lo, hi) (hi - lo <= 8)."""
    o_b = tl.arange(0, BLOCK)
    hist = tl.zeros((256,), tl.int32)
    for n0 in range(ks, ke, BLOCK):
        o_n = n0 + o_b
        m_n = o_n < ke
        key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
        match = m_n & ((key >> hi) == (prefix >> hi))
        hist += tl.histogram((key >> lo) & ((1 << (hi - lo)) - 1), 256, mask=match)
    d, remaining, _ = _radix_step(hist, remaining, 256)
    return prefix | (d << lo), remaining


@triton.jit
def _row_compact(row, orow, ks, ke, thr, n_eq, eq_base, BLOCK: tl.constexpr):
    """Write positions (relative to ks) of keys > thr to orow[0..], and the first n_eq keys == thr to
    orow[eq_base..]: stream compaction with prefix sums."""
    o_b = tl.arange(0, BLOCK)
    cnt_gt = tl.zeros((), tl.int32)
    cnt_eq = tl.zeros((), tl.int32)
    for n0 in range(ks, ke, BLOCK):
        o_n = n0 + o_b
        m_n = o_n < ke
        key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
        gt = m_n & (key > thr)
        eq = m_n & (key == thr)
        gt_i = gt.to(tl.int32)
        eq_i = eq.to(tl.int32)
        pos_eq = cnt_eq + tl.cumsum(eq_i, 0) - 1
        tl.store(orow + cnt_gt + tl.cumsum(gt_i, 0) - 1, o_n - ks, mask=gt)
        tl.store(orow + eq_base + pos_eq, o_n - ks, mask=eq & (pos_eq < n_eq))
        cnt_gt += tl.sum(gt_i, axis=0)
        cnt_eq += tl.sum(eq_i, axis=0)


@triton.jit
def _resolve_candidates(row, orow, crow, ks, k, c2, remaining, thr_bin, shift, cnt_gt, CAP: tl.constexpr):
    """The c2 <= CAP candidates (positions in crow) share key >> shift == thr_bin (shift <= 24 - FINE_BITS
    < 16): resolve the low 16 bits in registers (two 256-bin histograms), then write the candidates above
    the threshold after the cnt_gt keys already in orow and the first `remaining` equal to it at k - remaining."""
    o_c = tl.arange(0, CAP)
    m_c = o_c < c2
    pos = tl.load(crow + o_c, mask=m_c, other=0)
    ck = _f32_sort_key(tl.load(row + pos, mask=m_c, other=float("-inf")))
    d3, remaining, _ = _radix_step(tl.histogram((ck >> 8) & 0xFF, 256, mask=m_c), remaining, 256)
    m3 = m_c & (((ck >> 8) & 0xFF) == d3)
    d4, remaining, _ = _radix_step(tl.histogram(ck & 0xFF, 256, mask=m3), remaining, 256)
    thr = ((thr_bin << shift) & -65536) | (d3 << 8) | d4
    gt = m_c & (ck > thr)
    eq = m_c & (ck == thr)
    rank = tl.cumsum(eq.to(tl.int32), 0) - 1
    tl.store(orow + cnt_gt + tl.cumsum(gt.to(tl.int32), 0) - 1, pos - ks, mask=gt)
    tl.store(orow + (k - remaining) + rank, pos - ks, mask=eq & (rank < remaining))


@triton.jit
def _sort_and_pad(row, orow, ks, k, TOPK, TOPK_PAD: tl.constexpr, SORTED: tl.constexpr):
    """orow[0..k) holds the selected positions (relative to ks) in any order: sort them by descending score
    (ties in any order) and pad orow[k..TOPK) with -1."""
    o_k = tl.arange(0, TOPK_PAD)
    if SORTED:
        tl.debug_barrier()
        m_k = o_k < k
        idx = tl.load(orow + o_k, mask=m_k, other=0)
        key = _f32_sort_key(tl.load(row + ks + idx, mask=m_k, other=float("-inf")))
        packed = (key.to(tl.int64) << 32) | idx.to(tl.int64)
        packed = tl.where(m_k, packed, -9223372036854775807 - 1)
        packed = tl.sort(packed, descending=True)
        idx = (packed & 0xFFFFFFFF).to(tl.int32)
        tl.store(orow + o_k, tl.where(m_k, idx, -1), mask=o_k < TOPK)
    else:
        tl.store(orow + o_k, tl.full((TOPK_PAD,), -1, tl.int32), mask=(o_k >= k) & (o_k < TOPK))


@triton.jit
def _topk_kernel(x_ptr, ks_ptr, ke_ptr, out_ptr, cand_ptr, N, stride_x, TOPK,
                 TOPK_PAD: tl.constexpr, BLOCK: tl.constexpr, CAP: tl.constexpr, FINE_BITS: tl.constexpr,
                 SORTED: tl.constexpr):
    """Per row, top-TOPK of [ks, ke) by radix select on order-preserving int32 keys.

    Pass 1 (full row): a 256-bin histogram of the top key byte (sign, 7 exponent bits) finds the byte
    holding the TOPK-th largest key, and the row's key range. Pass 2 (full row): a 2^FINE_BITS-bin
    histogram of key >> shift over the keys of that byte, shift the smallest that fits the byte's keys
    within [min, max] in 2^FINE_BITS bins: the bins adapt to the data, so logits concentrated in a narrow
    band (benchmarks/work_model.py `concentrated_logits`: the previous fixed 16-bit prefix held the whole
    row there) still spread over many bins. If the threshold bin holds <= CAP keys (the usual case), pass 3
    (full row) writes every key above it to the output and its positions to a per-row candidate buffer; the
    low 16 bits are resolved in registers over the candidates (two more 256-bin histograms): 3 row passes.
    Otherwise (heavy ties) the shift bits below the bin take 1-2 more full-row 8-bit radix passes, then one
    compaction pass (4-5 row passes). Finally the selection is sorted by descending score (ties in any order) and padded with -1."""
    r = tl.program_id(0)
    row = x_ptr + r.to(tl.int64) * stride_x
    orow = out_ptr + r.to(tl.int64) * TOPK
    ks = tl.minimum(tl.maximum(tl.load(ks_ptr + r).to(tl.int32), 0), N)
    ke = tl.minimum(tl.maximum(tl.load(ke_ptr + r).to(tl.int32), ks), N)
    k = tl.minimum(ke - ks, TOPK)
    o_b = tl.arange(0, BLOCK)
    NB: tl.constexpr = 1 << FINE_BITS
    if ke - ks > TOPK:
        # pass 1: 256-bin histogram of the top key byte (sign, 7 exponent bits) + the row's key range
        hist8 = tl.zeros((256,), tl.int32)
        kmin = tl.full((), 2147483647, tl.int32)
        kmax = tl.full((), -2147483647 - 1, tl.int32)
        for n0 in range(ks, ke, BLOCK):
            o_n = n0 + o_b
            m_n = o_n < ke
            key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
            hist8 += tl.histogram(((key >> 24) & 0xFF) ^ 0x80, 256, mask=m_n)   # sign flipped: unsigned order
            kmin = tl.minimum(kmin, tl.min(tl.where(m_n, key, 2147483647), axis=0))
            kmax = tl.maximum(kmax, tl.max(tl.where(m_n, key, -2147483647 - 1), axis=0))
        t1, remaining, _ = _radix_step(hist8, TOPK, 256)
        prefix = (t1 ^ 0x80) << 24
        # keys of the threshold's top byte span [lo, hi] (<= 2^24 keys): the finest shift fitting NB bins
        lo = tl.maximum(kmin, prefix)
        hi = tl.minimum(kmax, prefix | 0xFFFFFF)
        shift = tl.zeros((), tl.int32)
        while (hi >> shift) - (lo >> shift) >= NB:
            shift += 1
        base = lo >> shift
        # pass 2: NB-bin histogram of key >> shift inside that byte
        hist = tl.zeros((NB,), tl.int32)
        for n0 in range(ks, ke, BLOCK):
            o_n = n0 + o_b
            m_n = o_n < ke
            key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
            inb = m_n & ((key >> 24) == (prefix >> 24))
            hist += tl.histogram(tl.where(inb, (key >> shift) - base, 0), NB, mask=inb)
        d2, remaining, c2 = _radix_step(hist, remaining, NB)
        thr_bin = base + d2
        if c2 <= CAP:
            crow = cand_ptr + r.to(tl.int64) * CAP
            cnt_gt = tl.zeros((), tl.int32)
            cnt_c = tl.zeros((), tl.int32)
            for n0 in range(ks, ke, BLOCK):
                o_n = n0 + o_b
                m_n = o_n < ke
                key_hi = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf"))) >> shift
                gt = m_n & (key_hi > thr_bin)
                cd = m_n & (key_hi == thr_bin)
                gt_i = gt.to(tl.int32)
                cd_i = cd.to(tl.int32)
                tl.store(orow + cnt_gt + tl.cumsum(gt_i, 0) - 1, o_n - ks, mask=gt)
                tl.store(crow + cnt_c + tl.cumsum(cd_i, 0) - 1, o_n, mask=cd)
                cnt_gt += tl.sum(gt_i, axis=0)
                cnt_c += tl.sum(cd_i, axis=0)
            tl.debug_barrier()
            _resolve_candidates(row, orow, crow, ks, k, c2, remaining, thr_bin, shift, cnt_gt, CAP)
        else:   # heavy ties: resolve the bits below the threshold bin with 1-2 more full-row radix passes
            prefix = thr_bin << shift
            s1 = tl.maximum(shift - 8, 0)
            prefix, remaining = _row_radix_pass_rt(row, ks, ke, prefix, remaining, s1, shift, BLOCK)
            if s1 > 0:
                prefix, remaining = _row_radix_pass_rt(row, ks, ke, prefix, remaining, 0, s1, BLOCK)
            _row_compact(row, orow, ks, ke, prefix, remaining, k - remaining, BLOCK)
    else:
        _row_compact(row, orow, ks, ke, -2147483647 - 1, 0, k, BLOCK)   # everything in range
    _sort_and_pad(row, orow, ks, k, TOPK, TOPK_PAD, SORTED)

TOPK_CONFIG = dict(BLOCK=4096, CAP=2048, FINE_BITS=9, num_warps=16, num_stages=1)



# --- multi-CTA top-k (few rows): each row's window is split over S CTAs; the passes of _topk_kernel become
# separate launches whose per-chunk histograms are merged by atomics in a per-row int32 workspace. Every CTA
# recomputes the (tiny) radix state from the merged histograms of the previous launches, so the grid is
# static (rows x S from host-known shapes) and nothing syncs with the host.
#   step 1: top-byte histogram + the row's key range          (full-row pass)
#   step 2: 2^FINE_BITS-bin histogram of key >> shift          (full-row pass)
#   step 3: compaction (> threshold bin -> out, == -> candidates) (full-row pass): 3 passes in all; or, if the
#           threshold bin holds > CAP keys (heavy ties), an 8-bit histogram of the bits below it, and
#   steps 4, 5 (heavy ties only; early exit otherwise): one more 8-bit histogram and/or the compaction.
#   final (one CTA per row, no full-row pass): resolve the <= CAP candidates, sort, pad with -1.
# Output slots are reserved with one atomic per CTA-block, so the order before the final sort (and which of
# several keys equal to the threshold are kept) depends on scheduling; the selected scores do not.

def _ws_layout(nb: int) -> dict:
    """Per-row workspace words (int32): hist8 [256], fine hist [nb], tie hists [256] x 2, counters
    [gt, cand, eq], then two int64 key-range maxima (kmax + 2^31, 2^31 - 1 - kmin: zero is their identity)."""
    cnt = 768 + nb
    return dict(H9=256, HA=256 + nb, HB=512 + nb, CNT=cnt, MM=cnt + 4, WORDS=cnt + 8)


@triton.jit
def _split_chunk(ks, ke, S, BLOCK: tl.constexpr):
    """[c0, c1) of the window [ks, ke) for chunk program_id(1) of S (BLOCK-aligned lengths)."""
    cl = tl.cdiv(tl.cdiv(ke - ks, S), BLOCK) * BLOCK
    c0 = ks + tl.program_id(1) * cl
    return c0, tl.minimum(c0 + cl, ke)


@triton.jit
def _split_state(wsr, TOPK, NB: tl.constexpr, CAP: tl.constexpr, H9: tl.constexpr, MM: tl.constexpr,
                 FINE: tl.constexpr):
    """Radix state after steps 1 (FINE=False: returns prefix, remaining, shift, base) or 2 (FINE=True:
    returns thr_bin, remaining, shift, c2), from the merged histograms."""
    o_8 = tl.arange(0, 256)
    t1, remaining, _ = _radix_step(tl.load(wsr + o_8), TOPK, 256)
    prefix = (t1 ^ 0x80) << 24
    wsr64 = wsr.to(tl.pointer_type(tl.int64), bitcast=True) + MM // 2
    kmax = (tl.load(wsr64) - 2147483648).to(tl.int32)
    kmin = (2147483647 - tl.load(wsr64 + 1)).to(tl.int32)
    lo = tl.maximum(kmin, prefix)
    hi = tl.minimum(kmax, prefix | 0xFFFFFF)
    shift = tl.zeros((), tl.int32)
    while (hi >> shift) - (lo >> shift) >= NB:
        shift += 1
    base = lo >> shift
    if FINE:
        d2, remaining, c2 = _radix_step(tl.load(wsr + H9 + tl.arange(0, NB)), remaining, NB)
        return base + d2, remaining, shift, c2
    else:
        return prefix, remaining, shift, base


@triton.jit
def _chunk_hist_rt(row, c0, c1, prefix, lo, hi, BLOCK: tl.constexpr):
    """256-bin histogram of bits [lo, hi) of the chunk's keys whose bits >= hi equal prefix's."""
    o_b = tl.arange(0, BLOCK)
    hist = tl.zeros((256,), tl.int32)
    for n0 in range(c0, c1, BLOCK):
        o_n = n0 + o_b
        m_n = o_n < c1
        key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
        match = m_n & ((key >> hi) == (prefix >> hi))
        hist += tl.histogram((key >> lo) & ((1 << (hi - lo)) - 1), 256, mask=match)
    return hist


@triton.jit
def _chunk_compact(row, orow, cnt_ptr, ks, c0, c1, thr, n_eq, eq_base, BLOCK: tl.constexpr):
    """_row_compact over one chunk: keys > thr at orow[cnt_ptr[0]++], the first n_eq keys == thr (over all
    chunks) at orow[eq_base + cnt_ptr[2]++]."""
    o_b = tl.arange(0, BLOCK)
    for n0 in range(c0, c1, BLOCK):
        o_n = n0 + o_b
        m_n = o_n < c1
        key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
        gt = m_n & (key > thr)
        eq = m_n & (key == thr)
        gt_i = gt.to(tl.int32)
        eq_i = eq.to(tl.int32)
        b_gt = tl.atomic_add(cnt_ptr, tl.sum(gt_i, axis=0))
        b_eq = tl.atomic_add(cnt_ptr + 2, tl.sum(eq_i, axis=0))
        pos_eq = b_eq + tl.cumsum(eq_i, 0) - 1
        tl.store(orow + b_gt + tl.cumsum(gt_i, 0) - 1, o_n - ks, mask=gt)
        tl.store(orow + eq_base + pos_eq, o_n - ks, mask=eq & (pos_eq < n_eq))


@triton.jit
def _topk_split_kernel(x_ptr, ks_ptr, ke_ptr, out_ptr, cand_ptr, ws_ptr, N, stride_x, TOPK, S, STEP,
                       BLOCK: tl.constexpr, CAP: tl.constexpr, FINE_BITS: tl.constexpr,
                       H9: tl.constexpr, HA: tl.constexpr, HB: tl.constexpr, CNT: tl.constexpr, MM: tl.constexpr,
                       WORDS: tl.constexpr):
    """Step STEP (1..5; a run-time argument: one binary for all steps) of the multi-CTA top-k for chunk
    program_id(1) of row program_id(0)."""
    r = tl.program_id(0)
    ks = tl.minimum(tl.maximum(tl.load(ks_ptr + r).to(tl.int32), 0), N)
    ke = tl.minimum(tl.maximum(tl.load(ke_ptr + r).to(tl.int32), ks), N)
    if ke - ks > TOPK:        # shorter rows: everything is selected, by the final kernel
        row = x_ptr + r.to(tl.int64) * stride_x
        orow = out_ptr + r.to(tl.int64) * TOPK
        wsr = ws_ptr + r.to(tl.int64) * WORDS
        c0, c1 = _split_chunk(ks, ke, S, BLOCK)
        o_b = tl.arange(0, BLOCK)
        o_8 = tl.arange(0, 256)
        NB: tl.constexpr = 1 << FINE_BITS
        if STEP == 1:
            hist8 = tl.zeros((256,), tl.int32)
            kmin = tl.full((), 2147483647, tl.int32)
            kmax = tl.full((), -2147483647 - 1, tl.int32)
            for n0 in range(c0, c1, BLOCK):
                o_n = n0 + o_b
                m_n = o_n < c1
                key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
                hist8 += tl.histogram(((key >> 24) & 0xFF) ^ 0x80, 256, mask=m_n)
                kmin = tl.minimum(kmin, tl.min(tl.where(m_n, key, 2147483647), axis=0))
                kmax = tl.maximum(kmax, tl.max(tl.where(m_n, key, -2147483647 - 1), axis=0))
            tl.atomic_add(wsr + o_8, hist8, mask=hist8 > 0)
            if c1 > c0:
                wsr64 = wsr.to(tl.pointer_type(tl.int64), bitcast=True) + MM // 2
                tl.atomic_max(wsr64, kmax.to(tl.int64) + 2147483648)
                tl.atomic_max(wsr64 + 1, 2147483647 - kmin.to(tl.int64))
        elif STEP == 2:
            prefix, remaining, shift, base = _split_state(wsr, TOPK, NB, CAP, H9, MM, False)
            hist = tl.zeros((NB,), tl.int32)
            for n0 in range(c0, c1, BLOCK):
                o_n = n0 + o_b
                m_n = o_n < c1
                key = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf")))
                inb = m_n & ((key >> 24) == (prefix >> 24))
                hist += tl.histogram(tl.where(inb, (key >> shift) - base, 0), NB, mask=inb)
            tl.atomic_add(wsr + H9 + tl.arange(0, NB), hist, mask=hist > 0)
        else:
            thr_bin, remaining, shift, c2 = _split_state(wsr, TOPK, NB, CAP, H9, MM, True)
            s1 = tl.maximum(shift - 8, 0)
            if STEP == 3:
                if c2 <= CAP:     # > threshold bin -> out, == -> candidates (resolved by the final kernel)
                    crow = cand_ptr + r.to(tl.int64) * CAP
                    for n0 in range(c0, c1, BLOCK):
                        o_n = n0 + o_b
                        m_n = o_n < c1
                        key_hi = _f32_sort_key(tl.load(row + o_n, mask=m_n, other=float("-inf"))) >> shift
                        gt = m_n & (key_hi > thr_bin)
                        cd = m_n & (key_hi == thr_bin)
                        gt_i = gt.to(tl.int32)
                        cd_i = cd.to(tl.int32)
                        b_gt = tl.atomic_add(wsr + CNT, tl.sum(gt_i, axis=0))
                        b_c = tl.atomic_add(wsr + CNT + 1, tl.sum(cd_i, axis=0))
                        tl.store(orow + b_gt + tl.cumsum(gt_i, 0) - 1, o_n - ks, mask=gt)
                        tl.store(crow + b_c + tl.cumsum(cd_i, 0) - 1, o_n, mask=cd)
                else:             # heavy ties: histogram of the bits [s1, shift) below the threshold bin
                    hist = _chunk_hist_rt(row, c0, c1, thr_bin << shift, s1, shift, BLOCK)
                    tl.atomic_add(wsr + HA + o_8, hist, mask=hist > 0)
            elif c2 > CAP:
                dA, remaining, _ = _radix_step(tl.load(wsr + HA + o_8), remaining, 256)
                prefix = (thr_bin << shift) | (dA << s1)
                if STEP == 4:
                    if s1 > 0:
                        hist = _chunk_hist_rt(row, c0, c1, prefix, 0, s1, BLOCK)
                        tl.atomic_add(wsr + HB + o_8, hist, mask=hist > 0)
                    else:
                        _chunk_compact(row, orow, wsr + CNT, ks, c0, c1, prefix, remaining, TOPK - remaining, BLOCK)
                elif s1 > 0:      # STEP 5
                    dB, remaining, _ = _radix_step(tl.load(wsr + HB + o_8), remaining, 256)
                    prefix = prefix | dB
                    _chunk_compact(row, orow, wsr + CNT, ks, c0, c1, prefix, remaining, TOPK - remaining, BLOCK)


@triton.jit
def _topk_split_final_kernel(x_ptr, ks_ptr, ke_ptr, out_ptr, cand_ptr, ws_ptr, N, stride_x, TOPK,
                             TOPK_PAD: tl.constexpr, BLOCK: tl.constexpr, CAP: tl.constexpr,
                             FINE_BITS: tl.constexpr, H9: tl.constexpr, MM: tl.constexpr, WORDS: tl.constexpr):
    """One CTA per row after the split steps: resolve the candidates (or, for windows of <= TOPK keys,
    take them all), then sort and pad."""
    r = tl.program_id(0)
    row = x_ptr + r.to(tl.int64) * stride_x
    orow = out_ptr + r.to(tl.int64) * TOPK
    ks = tl.minimum(tl.maximum(tl.load(ks_ptr + r).to(tl.int32), 0), N)
    ke = tl.minimum(tl.maximum(tl.load(ke_ptr + r).to(tl.int32), ks), N)
    k = tl.minimum(ke - ks, TOPK)
    if ke - ks > TOPK:
        wsr = ws_ptr + r.to(tl.int64) * WORDS
        thr_bin, remaining, shift, c2 = _split_state(wsr, TOPK, 1 << FINE_BITS, CAP, H9, MM, True)
        if c2 <= CAP:
            _resolve_candidates(row, orow, cand_ptr + r.to(tl.int64) * CAP, ks, k, c2, remaining, thr_bin, shift,
                                k - remaining, CAP)
    else:
        _row_compact(row, orow, ks, ke, -2147483647 - 1, 0, k, BLOCK)
    _sort_and_pad(row, orow, ks, k, TOPK, TOPK_PAD, True)


TOPK_SPLIT_CONFIG = dict(BLOCK=4096, MIN_SPLITS=4, num_warps=16, num_stages=1)


def topk_splits(rows: int, n: int, num_sms: int) -> int:
    """CTAs per row: enough to cover the SMs when rows are few (one BLOCK-key chunk each at least); 1 (the
    one-launch _topk_kernel) when that would give fewer than MIN_SPLITS. From host-known shapes only."""
    s = min(triton.cdiv(n, TOPK_SPLIT_CONFIG["BLOCK"]), triton.cdiv(num_sms, max(rows, 1)))
    return s if s >= TOPK_SPLIT_CONFIG["MIN_SPLITS"] else 1


def topk_launches(rows: int, n: int, num_sms: int) -> list[tuple[str, tuple[int, ...]]]:
    """(kernel, grid) of every launch indexer_topk makes (the work model counts these)."""
    s = topk_splits(rows, n, num_sms)
    if s == 1:
        return [("_topk_kernel", (rows,))]
    return [(f"_topk_split_kernel step {i}", (rows, s)) for i in range(1, 6)] + [("_topk_split_final_kernel", (rows,))]


def indexer_topk(logits: torch.Tensor, topk: int, ks: torch.Tensor, ke: torch.Tensor) -> torch.Tensor:
    """logits [R, N] fp32 (unit stride along N) -> indices [R, topk] int32 relative to ks, descending, -1 padded."""
    r, n = logits.shape
    require_device("indexer_topk", logits)
    require(1 <= topk <= MAX_TOPK, f"indexer_topk: topk={topk} must be in 1..{MAX_TOPK} for the Triton kernel")
    require(logits.stride(1) == 1, f"indexer_topk: logits must have unit stride along N (strides {logits.stride()})")
    require(n < 2 ** 31, "indexer_topk: N must fit in int32")
    _contig("indexer_topk: ks", ks)
    _contig("indexer_topk: ke", ke)
    out = torch.empty((r, topk), dtype=torch.int32, device=logits.device)
    if r == 0:
        return out
    cand = torch.empty((r, TOPK_CONFIG["CAP"]), dtype=torch.int32, device=logits.device)
    splits = topk_splits(r, n, _num_sms(logits.device))
    if splits == 1:
        _topk_kernel[(r,)](logits, ks, ke, out, cand, n, logits.stride(0), topk, TOPK_PAD=_next_pow2(topk),
                           SORTED=True, **TOPK_CONFIG)
        return out
    lay = _ws_layout(1 << TOPK_CONFIG["FINE_BITS"])
    ws = torch.zeros((r, lay.pop("WORDS")), dtype=torch.int32, device=logits.device)
    cfg = dict(TOPK_SPLIT_CONFIG)
    cfg.pop("MIN_SPLITS")
    common = dict(CAP=TOPK_CONFIG["CAP"], FINE_BITS=TOPK_CONFIG["FINE_BITS"], WORDS=ws.shape[1])
    for step in range(1, 6):
        _topk_split_kernel[(r, splits)](logits, ks, ke, out, cand, ws, n, logits.stride(0), topk, splits, step,
                                        **lay, **common, **cfg)
    _topk_split_final_kernel[(r,)](logits, ks, ke, out, cand, ws, n, logits.stride(0), topk,
                                   TOPK_PAD=_next_pow2(topk), H9=lay["H9"], MM=lay["MM"], **common,
                                   BLOCK=TOPK_CONFIG["BLOCK"], num_warps=TOPK_CONFIG["num_warps"],
                                   num_stages=TOPK_CONFIG["num_stages"])
    return out


# ----------------------------------------------------------------------------- positions -> slots

@triton.jit
def _indices_to_slots_kernel(idx_ptr, bt_ptr, out_ptr, K, MAX_PAGES, idx_stride, bt_stride, PAGE_SIZE,
                             BLOCK: tl.constexpr):
    r, i_k = tl.program_id(0), tl.program_id(1)
    o_k = i_k * BLOCK + tl.arange(0, BLOCK)
    m_k = o_k < K
    pos = tl.load(idx_ptr + r.to(tl.int64) * idx_stride + o_k, mask=m_k, other=-1).to(tl.int64)
    page = pos // PAGE_SIZE
    valid = (pos >= 0) & (page < MAX_PAGES)
    blk = tl.load(bt_ptr + r.to(tl.int64) * bt_stride + page, mask=m_k & valid, other=0).to(tl.int64)
    slot = tl.where(valid, blk * PAGE_SIZE + pos % PAGE_SIZE, -1)
    tl.store(out_ptr + r.to(tl.int64) * K + o_k, slot.to(tl.int32), mask=m_k)


def indices_to_slots(indices: torch.Tensor, block_table: torch.Tensor, page_size: int = PAGE) -> torch.Tensor:
    """indices [R, K] positions (-1 invalid), block_table [R, max_pages] -> slots [R, K] int32 (-1 kept;
    positions beyond the block table also give -1)."""
    require_device("indices_to_slots", indices)
    require(page_size > 0, f"indices_to_slots: page_size={page_size} must be positive")
    require(indices.stride(1) == 1 and block_table.stride(1) == 1,
            "indices_to_slots: indices and block_table need unit stride along their last dim")
    r, k = indices.shape
    out = torch.empty((r, k), dtype=torch.int32, device=indices.device)
    if r == 0 or k == 0:
        return out
    block = min(1024, _next_pow2(k))
    _indices_to_slots_kernel[(r, triton.cdiv(k, block))](indices, block_table, out, k, block_table.shape[1],
                                                         indices.stride(0), block_table.stride(0), page_size,
                                                         BLOCK=block, num_warps=4)
    return out
