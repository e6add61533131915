"""Lightning indexer (DSA): FP8 key cache, logits and top-k token selection.

Quantization (`indexer_quant`): x [..., 128] -> rotate by the 128-point Sylvester Hadamard matrix scaled
by 128^-0.5, then one ue8m0 (power-of-two) fp32 scale per row of 128: x_fp8 [..., 128] e4m3, scale [...].

Paged key cache, DeepGEMM's layout: kv_cache [num_pages, 64, 132] uint8 (132 B/token, 64-token pages).
The per-token view is *not* interleaved: inside page p the first 64*128 bytes are the e4m3 keys
(token-major), the next 64*4 bytes are their fp32 scales:
    page = kv_cache.view(num_pages, 64 * 132)
    k_fp8[t]   = page[p, off*128 : off*128+128].view(e4m3)       # slot = p*64 + off
    k_scale[t] = page[p, 8192 + off*4 : 8192 + off*4 + 4].view(fp32)
Slots < 0 in a slot_mapping are skipped (padding tokens).

Logits (`fp8_indexer_logits`, ragged prefill; DeepGEMM fp8_mqa_logits semantics):
    logits[s, n] = k_scale[n] * sum_h weights[s, h] * relu(q_fp8[s, h] . k_fp8[n])   for ks[s] <= n < ke[s]
                 = -inf                                                              otherwise
  `weights` already folds in weights_proj(x) * H^-0.5 * D^-0.5 * q_scale (see deepseek_v32_plugin.model.indexer_head_weights).
Paged logits (`fp8_paged_indexer_logits`, decode / MTP verify with next_n >= 1 query tokens per sequence):
  q_fp8 [B, next_n, H, 128], context_lens [B] (tokens in the cache, *including* the next_n new ones),
  block_table [B, max_pages] int32; row b*next_n + j sees positions n < context_lens[b] - next_n + j + 1.
  Returns [B*next_n, max_context_len] fp32, -inf outside each row's range.

Top-k (`indexer_topk`): per row r, the min(topk, ke[r]-ks[r]) highest logits among columns [ks[r], ke[r])
  as positions *relative to ks[r]* (= token positions within the sequence), int32, -1 padding after them,
  ordered by descending score (ties in any order). `indices_to_slots` maps positions to cache slots
  (block_table[r, pos // 64] * 64 + pos % 64), keeping -1: the index space sparse_mla consumes.
Kernel limits (past them the auto dispatch falls back to the next backend with one warning):
  Triton: indexer_topk topk <= 4096; paged logits next_n <= 4, next_n*H <= 256; logits H <= 128.
  CUDA:   indexer_topk topk <= 2048; logits and paged logits H <= 128. Out-of-range slots / positions /
          block-table pages are masked on the device (DSV32_CUDA_CHECK_BOUNDS=1 raises; see ops/_cuda.py).
References: naive.py (naive_<op>).
"""
from __future__ import annotations

import torch

from .._dispatch import check_tensor, register_ops, resolve
from ..fp8_quant import FP8_DTYPE
from .naive import BYTES_PER_TOKEN, HEAD_DIM, PAGE, hadamard_matrix, naive_hadamard_rotate  # noqa: F401

# Query rows per request the paged logits serve (decode, MTP verify); adapters use the ragged path beyond.
PAGED_MAX_NEXT_N = 4

register_ops("indexer", ["indexer_quant", "indexer_cache_write", "indexer_k_quant_and_cache",
                         "fp8_indexer_logits", "fp8_paged_indexer_logits", "indexer_topk", "indices_to_slots",
                         "indexer_cache_gather"])
_FLOAT = (torch.float32, torch.bfloat16, torch.float16)
_INT = (torch.int32, torch.int64)


def check_indexer_cache(kv_cache: torch.Tensor, name: str = "indexer kv_cache") -> None:
    check_tensor(name, kv_cache, dtype=torch.uint8, dims=3, shape=(None, PAGE, BYTES_PER_TOKEN), contiguous=True)


def indexer_quant(x: torch.Tensor, rotate: bool = True, *, backend=None):
    """x [..., 128] float -> (x_fp8 [..., 128] e4m3, scale [...] fp32 power of two). Hadamard first if rotate."""
    check_tensor("x", x, dtype=_FLOAT)
    if x.shape[-1] != HEAD_DIM:
        raise ValueError(f"x last dim {x.shape[-1]}: the indexer head dim must be {HEAD_DIM}")
    return resolve("indexer_quant", x.device, backend)(x, rotate)


def _check_slots(slot_mapping, t):
    check_tensor("slot_mapping", slot_mapping, dtype=_INT, shape=(t,))


def indexer_cache_write(k_fp8, k_scale, kv_cache, slot_mapping, *, backend=None) -> None:
    """Write k_fp8 [T, 128] e4m3 + k_scale [T] fp32 into kv_cache at slot_mapping [T] (-1 skipped)."""
    check_tensor("k_fp8", k_fp8, dtype=FP8_DTYPE, shape=(None, HEAD_DIM))
    check_tensor("k_scale", k_scale, dtype=torch.float32, shape=(k_fp8.shape[0],))
    check_indexer_cache(kv_cache)
    _check_slots(slot_mapping, k_fp8.shape[0])
    resolve("indexer_cache_write", kv_cache.device, backend)(k_fp8, k_scale, kv_cache, slot_mapping)


def indexer_k_quant_and_cache(k, kv_cache, slot_mapping, *, backend=None) -> None:
    """k [T, 128] float (after k_norm + rope) -> Hadamard + FP8 quant -> kv_cache at slot_mapping."""
    check_tensor("k", k, dtype=_FLOAT, shape=(None, HEAD_DIM))
    check_indexer_cache(kv_cache)
    _check_slots(slot_mapping, k.shape[0])
    resolve("indexer_k_quant_and_cache", kv_cache.device, backend)(k, kv_cache, slot_mapping)


def indexer_cache_gather(kv_cache, slots, *, backend=None):
    """slots [N] (no -1) -> (k_fp8 [N, 128] e4m3, k_scale [N] fp32) read back from the paged cache."""
    check_indexer_cache(kv_cache)
    check_tensor("slots", slots, dtype=_INT, dims=1)
    return resolve("indexer_cache_gather", kv_cache.device, backend)(kv_cache, slots)


def fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke, *, backend=None) -> torch.Tensor:
    """q_fp8 [S, H, 128] e4m3, k_fp8 [N, 128] e4m3, k_scale [N] fp32, weights [S, H] fp32,
    ks/ke [S] int32 (key range per query row) -> logits [S, N] fp32 (-inf outside [ks, ke))."""
    check_tensor("q_fp8", q_fp8, dtype=FP8_DTYPE, dims=3)
    s, h, d = q_fp8.shape
    if d != HEAD_DIM:
        raise ValueError(f"q_fp8 head dim {d} must be {HEAD_DIM}")
    check_tensor("k_fp8", k_fp8, dtype=FP8_DTYPE, shape=(None, HEAD_DIM))
    check_tensor("k_scale", k_scale, dtype=torch.float32, shape=(k_fp8.shape[0],))
    check_tensor("weights", weights, dtype=torch.float32, shape=(s, h))
    check_tensor("ks", ks, dtype=_INT, shape=(s,))
    check_tensor("ke", ke, dtype=_INT, shape=(s,))
    return resolve("fp8_indexer_logits", q_fp8.device, backend)(q_fp8, k_fp8, k_scale, weights, ks, ke)


def fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len: int,
                             *, backend=None) -> torch.Tensor:
    """q_fp8 [B, next_n, H, 128] e4m3, kv_cache [pages, 64, 132] uint8, weights [B*next_n, H] fp32,
    context_lens [B] int32, block_table [B, max_pages] int32 -> logits [B*next_n, max_context_len] fp32."""
    check_tensor("q_fp8", q_fp8, dtype=FP8_DTYPE, dims=4)
    b, next_n, h, d = q_fp8.shape
    if d != HEAD_DIM:
        raise ValueError(f"q_fp8 head dim {d} must be {HEAD_DIM}")
    check_indexer_cache(kv_cache)
    check_tensor("weights", weights, dtype=torch.float32, shape=(b * next_n, h))
    check_tensor("context_lens", context_lens, dtype=_INT, shape=(b,))
    check_tensor("block_table", block_table, dtype=_INT, dims=2)
    if block_table.shape[0] != b:
        raise ValueError(f"block_table has {block_table.shape[0]} rows for a batch of {b}")
    if max_context_len > block_table.shape[1] * PAGE:
        raise ValueError(f"max_context_len={max_context_len} exceeds block_table capacity "
                         f"{block_table.shape[1]} pages x {PAGE}")
    return resolve("fp8_paged_indexer_logits", q_fp8.device, backend)(
        q_fp8, kv_cache, weights, context_lens, block_table, max_context_len)


def indexer_topk(logits, topk: int, ks=None, ke=None, *, backend=None) -> torch.Tensor:
    """logits [R, N] fp32 -> indices [R, topk] int32: top-min(topk, ke-ks) columns in [ks, ke) as
    positions relative to ks, descending score, -1 padded. ks defaults to 0, ke to N."""
    check_tensor("logits", logits, dtype=torch.float32, dims=2)
    if topk <= 0:
        raise ValueError(f"topk={topk} must be positive")
    r, n = logits.shape
    ks = torch.zeros(r, dtype=torch.int32, device=logits.device) if ks is None else ks
    ke = torch.full((r,), n, dtype=torch.int32, device=logits.device) if ke is None else ke
    check_tensor("ks", ks, dtype=_INT, shape=(r,))
    check_tensor("ke", ke, dtype=_INT, shape=(r,))
    return resolve("indexer_topk", logits.device, backend)(logits, topk, ks, ke)


def indices_to_slots(indices, block_table, page_size: int = PAGE, *, backend=None) -> torch.Tensor:
    """indices [R, K] int32 positions (-1 invalid), block_table [R, max_pages] (already one row per
    index row) -> slots [R, K] int32 = block_table[r, pos // page] * page + pos % page, -1 kept."""
    check_tensor("indices", indices, dtype=_INT, dims=2)
    check_tensor("block_table", block_table, dtype=_INT, dims=2)
    if block_table.shape[0] != indices.shape[0]:
        raise ValueError(f"block_table has {block_table.shape[0]} rows for {indices.shape[0]} index rows")
    return resolve("indices_to_slots", indices.device, backend)(indices, block_table, page_size)
