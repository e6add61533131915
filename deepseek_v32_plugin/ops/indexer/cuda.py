"""CUDA backend of the indexer ops: wrappers over `torch.ops.dsv32.*` (csrc/indexer/, csrc/api/indexer.h).

Same positional signatures as the naive_* references (ops/_dispatch.py finds them here). The build, the
availability check and the bounds flag are shared: ops/_cuda.py.
"""
from __future__ import annotations

import torch

from .._cuda import _err_flag, _i32, raise_bounds
from .._dispatch import Unsupported

MAX_TOPK = 2048                   # indexer_topk: the kernel sorts the selection in shared memory
MAX_HEADS = 128                   # indexer logits: heads per query row
OP_NAMES = ("fp8_paged_indexer_logits", "fp8_indexer_logits", "indexer_topk", "indexer_quant",
            "indexer_k_quant_and_cache", "indexer_cache_write", "indexer_cache_gather", "indices_to_slots")


def register_fakes(fake) -> None:
    @fake("fp8_paged_indexer_logits")
    def _(q, kv_cache, weights, context_lens, block_table, max_context_len, err=None):
        return q.new_empty((q.shape[0] * q.shape[1], max_context_len), dtype=torch.float32)

    @fake("fp8_indexer_logits")
    def _(q, k, k_scale, weights, ks, ke):
        return q.new_empty((q.shape[0], k.shape[0]), dtype=torch.float32)

    @fake("indexer_topk")
    def _(logits, topk, ks, ke):
        return logits.new_empty((logits.shape[0], topk), dtype=torch.int32)

    @fake("indexer_quant")
    def _(x, rotate):
        return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[:-1], dtype=torch.float32)

    @fake("indices_to_slots")
    def _(indices, block_table, page_size, err=None):
        return torch.empty_like(indices)

    @fake("indexer_cache_gather")
    def _(kv_cache, slots, err=None):
        return (kv_cache.new_empty((slots.shape[0], 128), dtype=torch.float8_e4m3fn),
                kv_cache.new_empty((slots.shape[0],), dtype=torch.float32))

    for name in ("indexer_k_quant_and_cache", "indexer_cache_write"):
        fake(name)(lambda *args, **kwargs: None)


def fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len):
    if q_fp8.shape[2] > MAX_HEADS:
        raise Unsupported(f"the CUDA paged indexer logits take at most {MAX_HEADS} heads, got {q_fp8.shape[2]}")
    err = _err_flag(q_fp8.device)
    out = torch.ops.dsv32.fp8_paged_indexer_logits(q_fp8.contiguous(), kv_cache, weights.float().contiguous(),
                                                   _i32(context_lens), _i32(block_table), int(max_context_len), err)
    raise_bounds("fp8_paged_indexer_logits", err)
    return out


def fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke):
    if q_fp8.shape[1] > MAX_HEADS:
        raise Unsupported(f"the CUDA indexer logits take at most {MAX_HEADS} heads, got {q_fp8.shape[1]}")
    return torch.ops.dsv32.fp8_indexer_logits(q_fp8.contiguous(), k_fp8.contiguous(), k_scale.float().contiguous(),
                                              weights.float().contiguous(), _i32(ks), _i32(ke))


def indexer_topk(logits, topk, ks, ke):
    if topk > MAX_TOPK:  # the kernel sorts the selection in shared memory (2048 entries)
        raise Unsupported(f"the CUDA top-k serves topk <= {MAX_TOPK}, got {topk}")
    return torch.ops.dsv32.indexer_topk(logits.float().contiguous(), int(topk), _i32(ks), _i32(ke))


def indexer_quant(x, rotate=True):
    return torch.ops.dsv32.indexer_quant(x.contiguous(), bool(rotate))


def indexer_k_quant_and_cache(k, kv_cache, slot_mapping):
    err = _err_flag(kv_cache.device)
    torch.ops.dsv32.indexer_k_quant_and_cache(k.contiguous(), kv_cache, slot_mapping.contiguous(), err)
    raise_bounds("indexer_k_quant_and_cache", err)


def indexer_cache_write(k_fp8, k_scale, kv_cache, slot_mapping):
    err = _err_flag(kv_cache.device)
    torch.ops.dsv32.indexer_cache_write(k_fp8.contiguous(), k_scale.float().contiguous(), kv_cache,
                                        slot_mapping.contiguous(), err)
    raise_bounds("indexer_cache_write", err)


def indexer_cache_gather(kv_cache, slots):
    err = _err_flag(kv_cache.device)
    out = torch.ops.dsv32.indexer_cache_gather(kv_cache, slots.contiguous(), err)
    raise_bounds("indexer_cache_gather", err)
    return out


def indices_to_slots(indices, block_table, page_size=64):
    err = _err_flag(indices.device)
    out = torch.ops.dsv32.indices_to_slots(_i32(indices), _i32(block_table), int(page_size), err)
    raise_bounds("indices_to_slots", err)
    return out
