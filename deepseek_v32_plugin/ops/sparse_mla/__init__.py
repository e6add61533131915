"""Sparse MLA over the shared latent cache (absorbed / MQA-over-latent form), as in FlashMLA.

Latent cache, 64-token pages, one 576-wide row per token (512 compressed kv after kv_a_layernorm | 64 rope key):
  bf16:        kv_cache [num_pages, 64, 576] bfloat16
  fp8_ds_mla:  kv_cache [num_pages, 64, 656] uint8, per token (FlashMLA's 656 B layout):
                 bytes   0..511  512 x e4m3 of the compressed kv, in 4 groups of 128
                 bytes 512..527  4 x fp32 dequant scales, one per group (powers of two, ue8m0)
                 bytes 528..655  64 x bf16 rope key (not quantized)
Slot = page * 64 + offset. Slots < 0 in a slot_mapping are skipped.

sparse_mla_decode(q [b, s_q, h, 576] bf16, kv_cache, indices [b, s_q, topk] int32 slots, sm_scale, d_v=512,
                  topk_length=None | [b, s_q] int32)  -> out [b, s_q, h, 512] bf16, lse [b, s_q, h] fp32
sparse_mla_prefill(q [s_q, h, 576] bf16, kv [s_kv, 1, 576] bf16, indices [s_q, 1, topk] int32 rows of kv, ...,
                   topk_length=None | [s_q] int32)  -> out [s_q, h, 512] bf16, lse [s_q, h] fp32
Semantics, per query row and head: scores_k = sm_scale * q . kv[idx_k] over valid idx_k (>= 0);
  out = softmax(scores) @ kv[idx, :512]; lse = natural-log logsumexp(scores).
  Index -1 means "no key" (skipped); a row with no valid index gives out = 0 and lse = -inf.
  Causality is the caller's job: the indexer's top-k only ever selects positions <= the query's.
topk_length (the one dense/sparse mechanism, decided per row on the device): row r uses only its first
  topk_length[r] entries; entries at k >= topk_length[r] are never read (they may hold anything, e.g. -1
  padding or stale slots) and count as -1. The DSA step passes min(position + 1, index_topk): a row whose
  context fits in top-k attends over its real context (its entries are positions 0..p, ascending), so every
  backend's loop stops there and no kernel touches a -1 tail; nothing is synced to the host, so decode stays
  capturable in CUDA graphs with [T, topk]-wide index buffers. None = every entry is read (-1 still skipped).
  Values < 0 act as 0, values > topk as topk.
References: naive.py (naive_<op>); the torch backend runs blocked.py (the same math in bounded row blocks).
"""
from __future__ import annotations

import torch

from .._dispatch import check_tensor, register_ops, resolve
from .naive import FP8_BYTES, HEAD_576, KV_LORA, PAGE, ROPE, is_fp8_cache  # noqa: F401

register_ops("sparse_mla", ["mla_cache_write", "mla_cache_gather", "sparse_mla_decode", "sparse_mla_prefill"])
_FLOAT = (torch.float32, torch.bfloat16, torch.float16)
_INT = (torch.int32, torch.int64)


def check_mla_cache(kv_cache: torch.Tensor, name: str = "mla kv_cache") -> None:
    if kv_cache.dtype == torch.uint8:
        check_tensor(name, kv_cache, dims=3, shape=(None, PAGE, FP8_BYTES), contiguous=True)
    else:
        check_tensor(name, kv_cache, dtype=(torch.bfloat16, torch.float16, torch.float32), dims=3,
                     shape=(None, PAGE, HEAD_576), contiguous=True)


def mla_cache_write(kv_c, k_pe, kv_cache, slot_mapping, *, backend=None) -> None:
    """kv_c [T, 512] (normed compressed kv), k_pe [T, 64] (roped key) -> kv_cache rows at slot_mapping [T]."""
    check_tensor("kv_c", kv_c, dtype=_FLOAT, shape=(None, KV_LORA))
    t = kv_c.shape[0]
    check_tensor("k_pe", k_pe, dtype=_FLOAT, shape=(t, ROPE))
    check_tensor("slot_mapping", slot_mapping, dtype=_INT, shape=(t,))
    check_mla_cache(kv_cache)
    resolve("mla_cache_write", kv_cache.device, backend)(kv_c, k_pe, kv_cache, slot_mapping)


def mla_cache_gather(kv_cache, slots, *, backend=None) -> torch.Tensor:
    """slots [...] int -> rows [..., 576] fp32 (dequantized for fp8_ds_mla); -1 gives zeros."""
    check_mla_cache(kv_cache)
    check_tensor("slots", slots, dtype=_INT)
    return resolve("mla_cache_gather", kv_cache.device, backend)(kv_cache, slots)


def _check_topk_length(topk_length, shape) -> None:
    if topk_length is not None:
        check_tensor("topk_length", topk_length, dtype=torch.int32, shape=shape)


def sparse_mla_decode(q, kv_cache, indices, sm_scale: float, d_v: int = KV_LORA, topk_length=None, *,
                      backend=None):
    """See module docstring. Returns (out [b, s_q, h, d_v] q.dtype, lse [b, s_q, h] fp32)."""
    check_tensor("q", q, dtype=_FLOAT, dims=4)
    b, s_q, h, d = q.shape
    if d != HEAD_576:
        raise ValueError(f"q last dim {d} must be {HEAD_576} (512 latent + 64 rope)")
    check_mla_cache(kv_cache)
    check_tensor("indices", indices, dtype=torch.int32, dims=3)
    if tuple(indices.shape[:2]) != (b, s_q):
        raise ValueError(f"indices shape {list(indices.shape)} must start with [b={b}, s_q={s_q}]")
    if d_v != KV_LORA:
        raise ValueError(f"d_v={d_v}: only {KV_LORA} is supported")
    _check_topk_length(topk_length, (b, s_q))
    return resolve("sparse_mla_decode", q.device, backend)(q, kv_cache, indices, float(sm_scale), d_v, topk_length)


def sparse_mla_prefill(q, kv, indices, sm_scale: float, d_v: int = KV_LORA, topk_length=None, *, backend=None):
    """See module docstring. Returns (out [s_q, h, d_v] q.dtype, lse [s_q, h] fp32)."""
    check_tensor("q", q, dtype=_FLOAT, dims=3)
    s_q, h, d = q.shape
    if d != HEAD_576:
        raise ValueError(f"q last dim {d} must be {HEAD_576} (512 latent + 64 rope)")
    check_tensor("kv", kv, dtype=_FLOAT, shape=(None, 1, HEAD_576))
    check_tensor("indices", indices, dtype=torch.int32, dims=3)
    if indices.shape[0] != s_q or indices.shape[1] != 1:
        raise ValueError(f"indices shape {list(indices.shape)} must be [s_q={s_q}, 1, topk]")
    if d_v != KV_LORA:
        raise ValueError(f"d_v={d_v}: only {KV_LORA} is supported")
    _check_topk_length(topk_length, (s_q,))
    return resolve("sparse_mla_prefill", q.device, backend)(q, kv, indices, float(sm_scale), d_v, topk_length)
