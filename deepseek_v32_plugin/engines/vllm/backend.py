"""Sparse-MLA attention backend for vLLM: Backends (static capabilities of the two cache layers) and one
MetadataBuilder (vLLM's batch -> the engine-neutral DSA plan, model/dsa.py). There is no Impl: vLLM never
builds one for these cache-only layers; the model runs dsa.select / dsa.attend itself (model.py).

Two cache layers per decoder layer share one KV-cache group (vLLM's UniformTypeKVCacheSpecs), so one
block table addresses both: the latent cache (576 x bf16, or 656 B "fp8_ds_mla") and the indexer key
cache (132 B/token, DeepGEMM layout). Both use `ops.PAGE_SIZE` (64) token pages, the page size every
kernel of ours and FlashMLA/DeepGEMM share.

The builder hands vLLM's `CommonAttentionMetadata` (query_start_loc, seq_lens, block_table, slot_mapping) to
`dsa.plan` once per step (the latent cache's group; the indexer cache's group shares that plan, its builder
does nothing), with decode_threshold = 1 + num_speculative_tokens: decodes and MTP verifications take the
paged indexer kernel, prefill chunks (prefix hits and earlier chunks read back from the cache) are batched
into one ragged call.

CUDA graphs (UNIFORM_BATCH): with full graphs on, uniform batches (decode, MTP verify, plus vLLM's padding
requests) get a plan in persistent buffers refilled in place (model/dsa_graph.py), so a graph captured on one
batch replays on another; mixed batches keep the exact plan and run the DSA op eagerly (dsa_op.py).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

from deepseek_v32_plugin.ops import PAGE_SIZE
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import FP8_BYTES, HEAD_576

from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.model.dsa import DSAPlan
from deepseek_v32_plugin.model.dsa_graph import UniformPlanBuffers

# Query lengths up to this are served by the paged (decode) indexer path; MTP verification of
# k draft tokens schedules 1 + k tokens per request.
DEFAULT_DECODE_THRESHOLD = 1


class DSV32MetadataBuilder(AttentionMetadataBuilder[DSAPlan]):
    # Full CUDA graphs for uniform batches (decode, MTP verify: every request has the same query length
    # <= decode_threshold); mixed batches run our attention op eagerly between piecewise graphs (dsa_op.py).
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        if kv_cache_spec.block_size != PAGE_SIZE:
            raise ValueError(f"deepseek_v32_plugin: KV-cache block_size={kv_cache_spec.block_size}; our sparse "
                             f"MLA / indexer kernels use {PAGE_SIZE}-token pages")
        spec = vllm_config.speculative_config
        k = (spec.num_speculative_tokens or 0) if spec is not None else 0
        self.decode_threshold = DEFAULT_DECODE_THRESHOLD + k
        self.topk = vllm_config.model_config.hf_config.index_topk
        # decodes (and MTP verifications) first: they batch into one paged indexer call
        self._init_reorder_batch_threshold(self.decode_threshold, supports_spec_as_decode=True)
        # With full CUDA graphs, uniform batches get a plan whose tensors are persistent buffers (filled in
        # place each step) and whose host-side shape depends only on (requests, query length): what a graph
        # captured on one batch reads when replayed on another. Elsewhere (CPU, eager, piecewise) every
        # batch gets its exact host-side plan.
        self.persistent = vllm_config.compilation_config.cudagraph_mode.has_full_cudagraphs()
        self.max_reqs = vllm_config.scheduler_config.max_num_seqs
        self.max_model_len = vllm_config.model_config.max_model_len
        self._bufs: UniformPlanBuffers | None = None

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> DSAPlan:
        m, r = common_attn_metadata, common_attn_metadata.num_reqs
        q = self.uniform_query_len(m) if self.persistent else 0
        if q:
            md = self.graph_plan(m, q)
        else:
            md = dsa.plan(m.query_start_loc_cpu[: r + 1].tolist(), m.seq_lens[:r].cpu().tolist(),
                          m.block_table_tensor, m.slot_mapping, self.topk, self.decode_threshold)
        if CAPTURE is not None:
            CAPTURE(md)
        return md

    def uniform_query_len(self, m: CommonAttentionMetadata) -> int:
        """q when every request of the batch has query length q <= decode_threshold (vLLM's CUDA-graph
        padding adds requests of length 0 after them, and their q rows each), else 0. Host data only."""
        qsl = m.query_start_loc_cpu[: m.num_reqs + 1]
        qlens = (qsl[1:] - qsl[:-1]).tolist()
        q = qlens[0] if qlens else 0
        real = sum(1 for v in qlens if v)
        if not 0 < q <= self.decode_threshold or any(v != q for v in qlens[:real]) or any(qlens[real:]) \
                or m.num_actual_tokens != m.num_reqs * q or m.num_reqs > self.max_reqs \
                or (self._bufs is not None and not self._bufs.fits(m.num_reqs, q, m.block_table_tensor.shape[1])):
            return 0
        return q

    def graph_plan(self, m: CommonAttentionMetadata, q: int) -> DSAPlan:
        """The plan of a uniform batch (num_reqs requests x q rows) in persistent buffers, the same DSAPlan
        object every step for the same (requests, q): model/dsa_graph.py. Sized at the first such batch
        (vLLM's capture): max_num_seqs x decode_threshold rows, the block table's width."""
        bt = m.block_table_tensor
        if self._bufs is None:
            self._bufs = UniformPlanBuffers(self.max_reqs, self.decode_threshold, bt.shape[1], self.max_model_len,
                                            self.topk, bt.device)
        return self._bufs.fill(m.seq_lens[: m.num_reqs], bt[: m.num_reqs], m.slot_mapping[: m.num_actual_tokens], q)


class _SharedPlanBuilder(AttentionMetadataBuilder[None]):
    """The indexer cache's group: same batch, same block table as the latent cache's, whose plan the model
    uses for both; nothing to build here (so nothing that a CUDA graph could not replay)."""
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> None:
        return None


# Set by tests to record every built metadata (integration_tests/vllm/engine_run.py, "capture_metadata").
CAPTURE = None


class DSV32SparseMLABackend(AttentionBackend):
    """Latent cache + sparse MLA (DSA) through deepseek_v32_plugin.ops."""
    accept_output_buffer: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_ds_mla"]
    NAME: ClassVar[str] = "DSV32_PLUGIN_SPARSE_MLA"
    HEAD_SIZES: ClassVar[tuple] = (HEAD_576, FP8_BYTES)   # bf16 576-wide rows, or 656-byte fp8_ds_mla rows
    BUILDER: ClassVar[type] = DSV32MetadataBuilder

    @classmethod
    def get_name(cls) -> str:
        return cls.NAME

    @staticmethod
    def get_impl_cls():
        raise NotImplementedError("DSV32 cache layers have no Impl: the model runs deepseek_v32_plugin.model.dsa")

    @classmethod
    def get_builder_cls(cls):
        return cls.BUILDER

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None):
        return [PAGE_SIZE]

    # vLLM's platforms pick the KV block size from these (Platform.update_block_size_for_backend; 0.34's
    # default is 64 on GPU and 128 on CPU, and the base accepts any multiple of a kernel size): our caches
    # are laid out in exactly PAGE_SIZE-token pages (CacheLayer specs, the builder's check).
    @classmethod
    def supports_block_size(cls, block_size) -> bool:
        return block_size is None or block_size == PAGE_SIZE

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        return PAGE_SIZE

    # The builder plans from the host's query_start_loc (dsa.plan: decode/prefill split, per-row positions);
    # vLLM's adaptive verification trims drafts on the device only, so the plan would be wrong.
    @classmethod
    def supports_device_cpu_query_lens_mismatch(cls) -> bool:
        return False

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(cls.HEAD_SIZES)

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
    """Indexer key cache (132 B/token): storage; the latent cache's plan serves it (no builder work)."""
    NAME: ClassVar[str] = "DSV32_PLUGIN_INDEXER"
    HEAD_SIZES: ClassVar[tuple] = (BYTES_PER_TOKEN,)
    BUILDER: ClassVar[type] = _SharedPlanBuilder
