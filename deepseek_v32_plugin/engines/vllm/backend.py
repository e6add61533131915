"""Sparse-MLA attention backend for vLLM: Backend (static capabilities) / MetadataBuilder (host-side
scheduler output -> kernel inputs) / Impl (calls deepseek_v32_plugin.ops only).

Two cache layers per decoder layer share one KV-cache group (vLLM's UniformTypeKVCacheSpecs), so one
block table addresses both: the latent cache (576 x bf16, or 656 B "fp8_ds_mla") and the indexer key
cache (132 B/token, DeepGEMM layout). Both use `ops.PAGE_SIZE` (64) token pages, the page size every
kernel of ours and FlashMLA/DeepGEMM share.

What the builder derives from vLLM's `CommonAttentionMetadata` (query_start_loc, seq_lens, block_table,
slot_mapping) for each scheduled token t of request r:
  position[t] = seq_lens[r] - query_len[r] + i   (works for prefill, chunked prefill, prefix hits, decode,
                                                  spec-decode verify: the cache already holds the prefix)
  token_block_table[t] = block_table[r]          (so top-k positions map to cache slots per row)
and groups requests into "paged" batches (decode / MTP verify: equal query_len <= decode_threshold, use
the paged indexer logits kernel) and "ragged" ones (prefill chunks: keys gathered from the cache, ragged
logits). Prefix-cache hits and earlier chunks are read back from the cache like any other context.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImplBase,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

from deepseek_v32_plugin.ops import PAGE_SIZE
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import FP8_BYTES, HEAD_576

from . import dsa
from .dsa import DSV32Metadata, PagedGroup, RaggedRequest  # noqa: F401

# Query lengths up to this are served by the paged (decode) indexer path; MTP verification of
# k draft tokens schedules 1 + k tokens per request.
DEFAULT_DECODE_THRESHOLD = 1


class DSV32MetadataBuilder(AttentionMetadataBuilder[DSV32Metadata]):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        if kv_cache_spec.block_size != PAGE_SIZE:
            raise ValueError(f"deepseek_v32_plugin: KV-cache block_size={kv_cache_spec.block_size}; our sparse "
                             f"MLA / indexer kernels use {PAGE_SIZE}-token pages")
        spec = vllm_config.speculative_config
        k = (spec.num_speculative_tokens or 0) if spec is not None else 0
        self.decode_threshold = DEFAULT_DECODE_THRESHOLD + k
        # decodes (and MTP verifications) first: they batch into one paged indexer call
        self._init_reorder_batch_threshold(self.decode_threshold, supports_spec_as_decode=True)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> DSV32Metadata:
        m = common_attn_metadata
        md = dsa.build_metadata(m.query_start_loc_cpu, m.seq_lens, m.block_table_tensor, m.slot_mapping,
                                m.num_reqs, m.num_actual_tokens, self.decode_threshold)
        if CAPTURE is not None:
            CAPTURE(md)
        return md


# Set by tests to record every built metadata (integration_tests/vllm/engine_run.py, "capture_metadata").
CAPTURE = None


class DSV32SparseMLABackend(AttentionBackend):
    """Latent cache + sparse MLA (DSA) through deepseek_v32_plugin.ops."""
    accept_output_buffer: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_ds_mla"]

    @staticmethod
    def get_name() -> str:
        return "DSV32_PLUGIN_SPARSE_MLA"

    @staticmethod
    def get_impl_cls():
        return DSV32SparseMLAImpl

    @staticmethod
    def get_builder_cls():
        return DSV32MetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None):
        return [PAGE_SIZE]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return [HEAD_576, FP8_BYTES]

    @classmethod
    def is_mla(cls) -> bool:
        return True

    @classmethod
    def is_sparse(cls) -> bool:
        return True

    @classmethod
    def supports_compute_capability(cls, capability) -> bool:
        return True


class DSV32IndexerBackend(DSV32SparseMLABackend):
    """Indexer key cache (132 B/token): storage + the same metadata as the latent cache."""
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_ds_mla"]

    @staticmethod
    def get_name() -> str:
        return "DSV32_PLUGIN_INDEXER"

    @staticmethod
    def get_impl_cls():
        return DSV32IndexerImpl

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return [BYTES_PER_TOKEN]


class DSV32IndexerImpl(AttentionImplBase):
    """Lightning indexer over the paged key cache (dsa.indexer_select)."""

    def __init__(self, topk: int):
        self.topk = topk

    def __new__(cls, *args, **kwargs):  # AttentionImplBase.__new__ reads parallel groups; keep it plain
        return object.__new__(cls)

    def forward(self, k, q_fp8, weights, kv_cache, md: DSV32Metadata) -> torch.Tensor:
        return dsa.indexer_select(k, q_fp8, weights, kv_cache, md, self.topk)


class DSV32SparseMLAImpl(AttentionImplBase):
    """Latent-cache write + sparse MLA over the indexer-selected slots (dsa.sparse_mla_attend)."""

    def __init__(self, num_heads: int, scale: float, kv_lora_rank: int):
        self.num_heads, self.scale, self.kv_lora_rank = num_heads, scale, kv_lora_rank
        self.head_size = HEAD_576

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def forward(self, q576, kv_c, k_pe, kv_cache, slots, md: DSV32Metadata) -> torch.Tensor:
        return dsa.sparse_mla_attend(q576, kv_c, k_pe, kv_cache, slots, md, self.scale, self.kv_lora_rank)
