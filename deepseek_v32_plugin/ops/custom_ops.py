"""The public ops as torch custom ops (namespace `dsv32`), so torch.compile / dynamo treats each one as one
opaque node instead of tracing into our dispatch (env lookups, one-time warnings, data-dependent shapes in
the MoE orchestration, Triton launches), and CUDA-graph capture records whatever kernels the dispatch picks.

Each op calls the public function of deepseek_v32_plugin.ops with the default (auto) backend, so eager
numerics are exactly the public op's. Each has a fake (meta) implementation giving the output shapes and
dtypes of the public op's docstring. Ops that write a cache declare it in `mutates_args`.

  torch.ops.dsv32.<name>(...)  or  deepseek_v32_plugin.ops.custom_ops.<name>(...)
Tests: tests/test_custom_ops.py (each op equals its public op; torch.library.opcheck; a compiled graph keeps
them opaque).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import fp8_moe as _moe
from . import fp8_quant as _quant
from . import indexer as _idx
from . import sparse_mla as _mla
from .fp8_quant import FP8_DTYPE

NAMESPACE = "dsv32"


def _op(name: str, mutates=()):
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates)


# ------------------------------------------------------------------ fp8_quant

@_op("fp8_quant_act")
def fp8_quant_act(x: torch.Tensor, group: int = 128, ue8m0: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    return _quant.fp8_quant_act(x, group, ue8m0)


@fp8_quant_act.register_fake
def _(x, group=128, ue8m0=True):
    return x.new_empty(x.shape, dtype=FP8_DTYPE), x.new_empty((*x.shape[:-1], x.shape[-1] // group),
                                                              dtype=torch.float32)


# ------------------------------------------------------------------ indexer

@_op("indexer_quant")
def indexer_quant(x: torch.Tensor, rotate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    return _idx.indexer_quant(x, rotate)


@indexer_quant.register_fake
def _(x, rotate=True):
    return x.new_empty(x.shape, dtype=FP8_DTYPE), x.new_empty(x.shape[:-1], dtype=torch.float32)


@_op("indexer_k_quant_and_cache", mutates=("kv_cache",))
def indexer_k_quant_and_cache(k: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    _idx.indexer_k_quant_and_cache(k, kv_cache, slot_mapping)


@indexer_k_quant_and_cache.register_fake
def _(k, kv_cache, slot_mapping):
    return None


@_op("indexer_cache_gather")
def indexer_cache_gather(kv_cache: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _idx.indexer_cache_gather(kv_cache, slots)


@indexer_cache_gather.register_fake
def _(kv_cache, slots):
    n = slots.shape[0]
    return kv_cache.new_empty((n, _idx.HEAD_DIM), dtype=FP8_DTYPE), kv_cache.new_empty((n,), dtype=torch.float32)


@_op("fp8_indexer_logits")
def fp8_indexer_logits(q_fp8: torch.Tensor, k_fp8: torch.Tensor, k_scale: torch.Tensor, weights: torch.Tensor,
                       ks: torch.Tensor, ke: torch.Tensor) -> torch.Tensor:
    return _idx.fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke)


@fp8_indexer_logits.register_fake
def _(q_fp8, k_fp8, k_scale, weights, ks, ke):
    return q_fp8.new_empty((q_fp8.shape[0], k_fp8.shape[0]), dtype=torch.float32)


@_op("fp8_paged_indexer_logits")
def fp8_paged_indexer_logits(q_fp8: torch.Tensor, kv_cache: torch.Tensor, weights: torch.Tensor,
                             context_lens: torch.Tensor, block_table: torch.Tensor,
                             max_context_len: int) -> torch.Tensor:
    return _idx.fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len)


@fp8_paged_indexer_logits.register_fake
def _(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len):
    return q_fp8.new_empty((q_fp8.shape[0] * q_fp8.shape[1], max_context_len), dtype=torch.float32)


@_op("indexer_topk")
def indexer_topk(logits: torch.Tensor, topk: int, ks: Optional[torch.Tensor] = None,
                 ke: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _idx.indexer_topk(logits, topk, ks, ke)


@indexer_topk.register_fake
def _(logits, topk, ks=None, ke=None):
    return logits.new_empty((logits.shape[0], topk), dtype=torch.int32)


@_op("indices_to_slots")
def indices_to_slots(indices: torch.Tensor, block_table: torch.Tensor, page_size: int = _idx.PAGE) -> torch.Tensor:
    return _idx.indices_to_slots(indices, block_table, page_size)


@indices_to_slots.register_fake
def _(indices, block_table, page_size=_idx.PAGE):
    return indices.new_empty(indices.shape, dtype=torch.int32)


# ------------------------------------------------------------------ sparse_mla

@_op("mla_cache_write", mutates=("kv_cache",))
def mla_cache_write(kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    _mla.mla_cache_write(kv_c, k_pe, kv_cache, slot_mapping)


@mla_cache_write.register_fake
def _(kv_c, k_pe, kv_cache, slot_mapping):
    return None


@_op("sparse_mla_decode")
def sparse_mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                      d_v: int = _mla.KV_LORA, topk_length: Optional[torch.Tensor] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    return _mla.sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v, topk_length)


def _mla_outputs(q: torch.Tensor, rows: int, d_v: int):
    """Fake (out [*q.shape[:rows], d_v], lse [*q.shape[:rows]] fp32) of the sparse MLA ops."""
    return q.new_empty((*q.shape[:rows], d_v)), q.new_empty(q.shape[:rows], dtype=torch.float32)


@sparse_mla_decode.register_fake
def _(q, kv_cache, indices, sm_scale, d_v=_mla.KV_LORA, topk_length=None):
    return _mla_outputs(q, 3, d_v)   # q [b, s_q, h, 576]


@_op("sparse_mla_prefill")
def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = _mla.KV_LORA, topk_length: Optional[torch.Tensor] = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    return _mla.sparse_mla_prefill(q, kv, indices, sm_scale, d_v, topk_length)


@sparse_mla_prefill.register_fake
def _(q, kv, indices, sm_scale, d_v=_mla.KV_LORA, topk_length=None):
    return _mla_outputs(q, 2, d_v)   # q [s_q, h, 576]


# ------------------------------------------------------------------ fp8_moe

@_op("fp8_moe_experts")
def fp8_moe_experts(x: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
                    w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    return _moe.fp8_moe_experts(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids)


@fp8_moe_experts.register_fake
def _(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids):
    return torch.empty_like(x)
