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

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImplBase,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla
from deepseek_v32_plugin.ops.indexer import BYTES_PER_TOKEN
from deepseek_v32_plugin.ops.sparse_mla import FP8_BYTES, HEAD_576

# Query lengths up to this are served by the paged (decode) indexer path; MTP verification of
# k draft tokens schedules 1 + k tokens per request.
DEFAULT_DECODE_THRESHOLD = 1


@dataclass
class PagedGroup:
    """Requests [req_lo, req_hi) with the same short query length q, tokens [tok_lo, tok_hi)."""
    req_lo: int
    req_hi: int
    tok_lo: int
    tok_hi: int
    q: int
    max_context: int


@dataclass
class RaggedRequest:
    """One prefill (chunk): tokens [tok_lo, tok_hi) of request req, context seq_len tokens."""
    req: int
    tok_lo: int
    tok_hi: int
    seq_len: int


@dataclass
class DSV32Metadata:
    num_reqs: int
    num_actual_tokens: int
    seq_lens: torch.Tensor            # [R] int32, context incl. this step's tokens
    block_table: torch.Tensor         # [R, max_pages] int32
    slot_mapping: torch.Tensor        # [T] int64, -1 for padding
    positions: torch.Tensor           # [T] int64
    token_block_table: torch.Tensor   # [T, max_pages] int32
    paged: list = field(default_factory=list)    # list[PagedGroup]
    ragged: list = field(default_factory=list)   # list[RaggedRequest]
    max_seq_len: int = 0


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
        r, t = m.num_reqs, m.num_actual_tokens
        qsl = m.query_start_loc_cpu[: r + 1].tolist()
        seq_lens_cpu = m.seq_lens[:r].to("cpu", torch.int32)
        seq_list = seq_lens_cpu.tolist()
        device = m.block_table_tensor.device
        qlens = [qsl[i + 1] - qsl[i] for i in range(r)]
        # positions of each scheduled token: the last query_len positions of its sequence
        pos = torch.empty(t, dtype=torch.int64)
        req_of = torch.empty(t, dtype=torch.int64)
        for i in range(r):
            pos[qsl[i]: qsl[i + 1]] = torch.arange(seq_list[i] - qlens[i], seq_list[i])
            req_of[qsl[i]: qsl[i + 1]] = i
        block_table = m.block_table_tensor[:r]
        paged, ragged = [], []
        i = 0
        while i < r:
            q = qlens[i]
            if 0 < q <= self.decode_threshold:
                j = i
                while j < r and qlens[j] == q:
                    j += 1
                paged.append(PagedGroup(i, j, qsl[i], qsl[j], q, max(seq_list[i:j])))
                i = j
            else:
                if q > 0:
                    ragged.append(RaggedRequest(i, qsl[i], qsl[i + 1], seq_list[i]))
                i += 1
        return DSV32Metadata(
            num_reqs=r, num_actual_tokens=t, seq_lens=seq_lens_cpu.to(device), block_table=block_table,
            slot_mapping=m.slot_mapping[:t], positions=pos.to(device),
            token_block_table=block_table[req_of.to(device)], paged=paged, ragged=ragged,
            max_seq_len=max(seq_list) if seq_list else 0)


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
    """Lightning indexer over the paged key cache: write keys, score, top-k, map to latent-cache slots."""

    def __init__(self, topk: int):
        self.topk = topk

    def __new__(cls, *args, **kwargs):  # AttentionImplBase.__new__ reads parallel groups; keep it plain
        return object.__new__(cls)

    def forward(self, k: torch.Tensor, q_fp8: torch.Tensor, weights: torch.Tensor, kv_cache: torch.Tensor,
                md: DSV32Metadata) -> torch.Tensor:
        """k [T, 128] (normed, roped), q_fp8 [T, H, 128] e4m3, weights [T, H] fp32 (q scale folded in)
        -> slots [T, topk] int32 in the latent cache (-1 = none)."""
        t = md.num_actual_tokens
        indexer.indexer_k_quant_and_cache(k, kv_cache, md.slot_mapping)
        pos_idx = torch.full((t, self.topk), -1, dtype=torch.int32, device=k.device)
        ke = (md.positions + 1).to(torch.int32)
        for g in md.paged:
            rows = slice(g.tok_lo, g.tok_hi)
            if g.max_context <= self.topk:   # every past token is selected: top-k is the identity
                pos_idx[rows] = _all_positions(md.positions[rows], self.topk)
                continue
            b = g.req_hi - g.req_lo
            logits = indexer.fp8_paged_indexer_logits(
                q_fp8[rows].reshape(b, g.q, *q_fp8.shape[1:]), kv_cache, weights[rows].contiguous(),
                md.seq_lens[g.req_lo:g.req_hi], md.block_table[g.req_lo:g.req_hi], g.max_context)
            pos_idx[rows] = indexer.indexer_topk(logits, self.topk, ke=ke[rows])
        for rq in md.ragged:
            rows = slice(rq.tok_lo, rq.tok_hi)
            if rq.seq_len <= self.topk:
                pos_idx[rows] = _all_positions(md.positions[rows], self.topk)
                continue
            ctx = torch.arange(rq.seq_len, device=k.device)
            table = md.block_table[rq.req]
            ctx_slots = table[ctx // PAGE_SIZE].long() * PAGE_SIZE + ctx % PAGE_SIZE
            k_fp8, k_scale = indexer.indexer_cache_gather(kv_cache, ctx_slots)
            n = rq.tok_hi - rq.tok_lo
            logits = indexer.fp8_indexer_logits(q_fp8[rows].contiguous(), k_fp8, k_scale,
                                                weights[rows].contiguous(),
                                                torch.zeros(n, dtype=torch.int32, device=k.device), ke[rows])
            pos_idx[rows] = indexer.indexer_topk(logits, self.topk, ke=ke[rows])
        return indexer.indices_to_slots(pos_idx, md.token_block_table[:t])


def _all_positions(positions: torch.Tensor, topk: int) -> torch.Tensor:
    """Rows whose context fits in top-k: positions 0..p, -1 after (what top-k selects, in ascending order)."""
    ar = torch.arange(topk, device=positions.device)
    return torch.where(ar[None, :] <= positions[:, None], ar[None, :], -1).to(torch.int32)


class DSV32SparseMLAImpl(AttentionImplBase):
    """Writes the latent row of each new token, then attends over the indexer-selected slots."""

    def __init__(self, num_heads: int, scale: float, kv_lora_rank: int):
        self.num_heads, self.scale, self.kv_lora_rank = num_heads, scale, kv_lora_rank
        self.head_size = HEAD_576

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def forward(self, q576: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                slots: torch.Tensor, md: DSV32Metadata) -> torch.Tensor:
        """q576 [T, h, 576] (absorbed nope | roped pe), kv_c [T, 512], k_pe [T, 64], slots [T, topk]
        -> latent output [T, h, 512]."""
        sparse_mla.mla_cache_write(kv_c, k_pe, kv_cache, md.slot_mapping)
        out, _ = sparse_mla.sparse_mla_decode(q576[None].contiguous(), kv_cache, slots[None].contiguous(),
                                              self.scale, self.kv_lora_rank)
        return out[0]
