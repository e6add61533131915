"""Our SGLang attention backend for V3.2: lightning indexer + sparse MLA, driven from ForwardBatch.

SGLang side: the KV pool is SGLang's own `DSATokenToKVPool` (chosen for the architecture name
"DeepseekV32ForCausalLM"), 64-token pages. Its latent buffer per layer is [size + 64, 1, 576] bf16
(or [.., 656] uint8 for an FP8 cache: FlashMLA's layout), its `index_key_cache` buffer per layer is
[pages, 64 * 132] uint8 in DeepGEMM's layout (64 x 128 e4m3 keys, then 64 fp32 scales per page). Both are
exactly the packed layouts of deepseek_v32_plugin.ops, so the backend only *views* them as pages.

Index spaces: SGLang's `req_to_token[req, pos]` is the cache slot of token `pos` of a request; with
64-token pages a request's slots are page-aligned, so its block table is `req_to_token[req, ::64] // 64`
and slot = page * 64 + offset, as ops.indexer.indices_to_slots expects.

Per batch (`init_forward_metadata`, shared by all layers) every query row gets its request and attends
causally to that request's tokens 0..position, whatever SGLang's mode (prefill chunks and radix hits, decode,
and the EAGLE modes: target verify, draft extend, multi-step draft decode; see NOTES.md). Rows that are the
last k <= 4 tokens of every request (decode, draft decode, verify of a draft chain) take the paged path:
block_table [B, P], context_lens [B], the indexer reads keys from the paged cache (next_n = k). Otherwise the
ragged path: the key slots of every request's sequence concatenated (kv_slots [N]) and each row's range
[ks, ke) into it.
Per layer the backend writes the new latent rows and index keys at `out_cache_loc`, scores keys with the
indexer, keeps the top-k positions, maps them to slots and runs sparse MLA over the paged latent cache.
No math here: every step is an ops call.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from ...ops import PAGE_SIZE, indexer, sparse_mla

BACKEND_NAME = "dsv32_sparse"


@dataclass
class IndexerInputs:
    """What the model's indexer computed for the T new tokens of one layer (engine-neutral math)."""
    k: torch.Tensor          # [T, 128] key after k_norm + rope (not yet rotated/quantized)
    q_fp8: torch.Tensor      # [T, H_i, 128] e4m3 (Hadamard-rotated)
    weights: torch.Tensor    # [T, H_i] fp32, head weights with softmax scale and q scale folded in
    topk: int


@dataclass
class _Metadata:
    next_n: int                            # > 0: paged path, next_n query rows per request; 0: ragged path
    row_req: torch.Tensor                  # [T] int64
    block_table: torch.Tensor              # [B, P] int32
    context_lens: torch.Tensor             # [B] int32 (tokens cached after this step)
    max_context_len: int
    row_ke: torch.Tensor                   # [T] int32: keys 0..position of each row's request (paged path)
    kv_slots: Optional[torch.Tensor] = None  # [N] int64, ragged only
    ks: Optional[torch.Tensor] = None        # [T] int32, into kv_slots
    ke: Optional[torch.Tensor] = None        # [T] int32


def _make_backend_class():
    from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

    class DSV32SparseAttnBackend(AttentionBackend):
        """Sparse MLA + lightning indexer over SGLang's DSA token pool, through deepseek_v32_plugin.ops."""

        def __init__(self, model_runner, step_offset: int = 0):
            super().__init__()
            # draft decode step i of a multi-step draft sees the batch's positions + i (see MultiStep below)
            self.step_offset = step_offset
            self.req_to_token = model_runner.req_to_token_pool.req_to_token
            self.pool = model_runner.token_to_kv_pool
            self.device = model_runner.device
            page_size = model_runner.page_size
            if page_size != PAGE_SIZE:
                raise ValueError(f"page_size={page_size}: the {BACKEND_NAME} attention backend needs "
                                 f"{PAGE_SIZE}-token pages (pass --page-size {PAGE_SIZE})")
            if not hasattr(self.pool, "index_key_cache"):
                raise ValueError(f"token_to_kv_pool is {type(self.pool).__name__}: the {BACKEND_NAME} backend "
                                 "needs SGLang's DSATokenToKVPool (an index-key cache beside the MLA cache)")
            # debug invariant (tests turn it on): every new token's cache slot is req_to_token[req, position]
            self.check_slots = os.environ.get("DSV32_CHECK_SLOTS", "0") == "1"
            self.forward_metadata: Optional[_Metadata] = None

        # ---- per batch -------------------------------------------------------------------------
        def init_forward_metadata(self, forward_batch):
            fb = forward_batch
            mode = fb.forward_mode
            if not (mode.is_decode() or mode.is_extend() or mode.is_idle() or mode.is_draft_extend_v2()):
                raise NotImplementedError(f"{BACKEND_NAME}: forward mode {mode} is not supported")
            dev = fb.seq_lens.device
            bs = fb.batch_size
            t = fb.positions.shape[0]
            # Every query row attends causally to its own request's tokens 0..position (all already in the
            # cache, this batch's written first), whatever the mode: prefill chunks, radix hits, decode, and
            # the speculative modes (target verify of a draft chain, draft extend, draft decode steps).
            counts = self._rows_per_request(fb, t, bs)
            row_req = torch.repeat_interleave(torch.arange(bs, device=dev),
                                              torch.tensor(counts, dtype=torch.long, device=dev))
            pos = fb.positions.to(torch.int64) + self.step_offset
            kv_lens = torch.zeros(bs, dtype=torch.int64, device=dev)
            if t:
                kv_lens.scatter_reduce_(0, row_req, pos + 1, reduce="amax")
            max_len = int(kv_lens.max()) if bs else 0
            pages = max(1, -(-max_len // PAGE_SIZE))
            rows = self.req_to_token[fb.req_pool_indices.long()]                       # [B, max_ctx]
            cols = torch.arange(pages, device=dev) * PAGE_SIZE
            block_table = (rows[:, cols] // PAGE_SIZE).to(torch.int32)                 # [B, P]
            row_ke = (pos + 1).to(torch.int32)
            if t == 0:   # idle batch: nothing to attend (_run returns an empty output)
                self.forward_metadata = _Metadata(1, row_req, block_table, kv_lens.to(torch.int32), 0, row_ke)
                return
            k = counts[0]
            if 1 <= k <= indexer.PAGED_MAX_NEXT_N and counts == [k] * bs and bool(
                    (pos.view(bs, k) == kv_lens[:, None] - k + torch.arange(k, device=dev)).all()):
                # each request's rows are its last k tokens (decode, draft decode, verify of a k-token chain):
                # paged path, the indexer reads keys straight from the paged cache
                self.forward_metadata = _Metadata(k, row_req, block_table, kv_lens.to(torch.int32), max_len, row_ke)
                return
            kv_start = torch.zeros(bs, dtype=torch.int64, device=dev)
            kv_start[1:] = torch.cumsum(kv_lens, 0)[:-1]
            kv_slots = rows[:, :max_len][torch.arange(max_len, device=dev)[None, :] < kv_lens[:, None]].to(torch.int64)
            ks = kv_start[row_req]
            ke = ks + pos + 1
            self.forward_metadata = _Metadata(0, row_req, block_table, kv_lens.to(torch.int32), max_len, row_ke,
                                              kv_slots, ks.to(torch.int32), ke.to(torch.int32))

        @staticmethod
        def _rows_per_request(fb, t: int, bs: int) -> list:
            """Query rows of each request (rows are grouped by request, in batch order)."""
            mode = fb.forward_mode
            if mode.is_decode() or mode.is_idle():
                if t % max(bs, 1):
                    raise NotImplementedError(f"{BACKEND_NAME}: {t} decode rows for {bs} requests (a draft tree, "
                                              "speculative_eagle_topk > 1, is not supported)")
                return [t // bs] * bs if bs else []
            if not mode.is_target_verify():
                ext = fb.extend_seq_lens_cpu
                if ext is None and fb.extend_seq_lens is not None:
                    ext = fb.extend_seq_lens.tolist()
                if ext is not None:
                    if sum(ext) != t:   # e.g. padded rows (DP attention): refusing beats mixing requests
                        raise NotImplementedError(f"{BACKEND_NAME}: {t} query rows but extend_seq_lens sum to "
                                                  f"{sum(ext)} in a {mode} batch")
                    return list(ext)
            if bs == 0 or t % bs:
                raise NotImplementedError(f"{BACKEND_NAME}: cannot split {t} rows of a {mode} batch over {bs} requests")
            return [t // bs] * bs

        # ---- per layer -------------------------------------------------------------------------
        def _caches(self, layer_id: int):
            kv = self.pool.get_key_buffer(layer_id)
            if kv.shape[-1] == sparse_mla.FP8_BYTES and kv.dtype != torch.uint8:
                kv = kv.view(torch.uint8)   # FP8 pool: 656-byte FlashMLA rows, addressed as bytes by our ops
            kv = kv.view(-1, PAGE_SIZE, kv.shape[-1])
            idx = self.pool.index_key_cache.get_buffer(layer_id)
            idx = idx.view(-1, PAGE_SIZE, indexer.BYTES_PER_TOKEN)
            return kv, idx

        def _run(self, q, k, k_rope, layer, forward_batch, save_kv_cache, dsv32_index: IndexerInputs):
            md = self.forward_metadata
            kv_cache, idx_cache = self._caches(layer.layer_id)
            loc = forward_batch.out_cache_loc
            t = q.shape[0]
            if t == 0:
                return q.new_empty(0, layer.tp_q_head_num * layer.v_head_dim)
            if self.check_slots:
                req = forward_batch.req_pool_indices.long()[md.row_req]
                want = self.req_to_token[req, forward_batch.positions.long()]
                if not torch.equal(want.to(torch.int64), loc.to(torch.int64)):
                    raise AssertionError(f"{BACKEND_NAME}: out_cache_loc != req_to_token[req, position] in "
                                         f"{forward_batch.forward_mode}")
            if save_kv_cache:
                sparse_mla.mla_cache_write(k.reshape(t, -1), k_rope.reshape(t, -1), kv_cache, loc)
                indexer.indexer_k_quant_and_cache(dsv32_index.k, idx_cache, loc)
            if md.next_n:
                q_fp8 = dsv32_index.q_fp8.view(-1, md.next_n, *dsv32_index.q_fp8.shape[1:])
                logits = indexer.fp8_paged_indexer_logits(q_fp8, idx_cache, dsv32_index.weights, md.context_lens,
                                                          md.block_table, md.max_context_len)
                positions = indexer.indexer_topk(logits, dsv32_index.topk, ke=md.row_ke)
            else:
                k_fp8, k_scale = indexer.indexer_cache_gather(idx_cache, md.kv_slots)
                logits = indexer.fp8_indexer_logits(dsv32_index.q_fp8, k_fp8, k_scale, dsv32_index.weights,
                                                    md.ks, md.ke)
                positions = indexer.indexer_topk(logits, dsv32_index.topk, md.ks, md.ke)
            slots = indexer.indices_to_slots(positions, md.block_table[md.row_req])
            q = q.reshape(t, layer.tp_q_head_num, -1)
            out, _ = sparse_mla.sparse_mla_decode(q[:, None].contiguous(), kv_cache, slots[:, None].contiguous(),
                                                  layer.scaling)
            return out.reshape(t, layer.tp_q_head_num * layer.v_head_dim)

        def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
            return self._run(q, k, kwargs["k_rope"], layer, forward_batch, save_kv_cache, kwargs["dsv32_index"])

        def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
            return self._run(q, k, kwargs["k_rope"], layer, forward_batch, save_kv_cache, kwargs["dsv32_index"])

    return DSV32SparseAttnBackend


class DSV32MultiStepDraftBackend:
    """SGLang's multi-step draft container (EAGLE draft decode, speculative_num_steps > 1): one backend per
    inner step. The EAGLE worker initialises all of them once per draft round, from the first step's
    ForwardBatch, then advances positions by one per step; step i's backend therefore plans for positions + i."""
    needs_cpu_seq_lens = True

    def __init__(self, model_runner, topk: int, speculative_num_steps: int):
        # (speculative_eagle_topk > 1 is refused at launch, hooks._check_servable_with_our_backend)
        self.topk, self.speculative_num_steps = topk, speculative_num_steps
        self.attn_backends = [create_backend(model_runner, step_offset=i) for i in range(speculative_num_steps - 1)]

    def init_forward_metadata(self, forward_batch):
        for backend in self.attn_backends:
            backend.init_forward_metadata(forward_batch)


_BACKEND_CLS = None


def create_backend(model_runner, step_offset: int = 0):
    """Factory registered with SGLang's attention registry (lazy: SGLang imported only when used)."""
    global _BACKEND_CLS
    if _BACKEND_CLS is None:
        _BACKEND_CLS = _make_backend_class()
    return _BACKEND_CLS(model_runner, step_offset)
