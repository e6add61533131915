"""Our SGLang attention backend for V3.2: lightning indexer + sparse MLA, driven from ForwardBatch.

SGLang side: the KV pool is SGLang's own `DSATokenToKVPool` (chosen for the architecture name
"DeepseekV32ForCausalLM"), 64-token pages. Its latent buffer per layer is [size + 64, 1, 576] bf16
(or [.., 656] uint8 for an FP8 cache: FlashMLA's layout), its `index_key_cache` buffer per layer is
[pages, 64 * 132] uint8 in DeepGEMM's layout (64 x 128 e4m3 keys, then 64 fp32 scales per page). Both are
exactly the packed layouts of deepseek_v32_plugin.ops, so the backend only *views* them as pages.

Index spaces: SGLang's `req_to_token[req, pos]` is the cache slot of token `pos` of a request; with
64-token pages a request's slots are page-aligned, so its block table is `req_to_token[req, ::64] // 64`
and slot = page * 64 + offset, as ops.indexer.indices_to_slots expects.

Per batch (`init_forward_metadata`, shared by all layers) we build, for the T query tokens of the batch:
  row_req [T] (request of each query row), block_table [B, P], context_lens [B];
  extend/mixed: key slots of every request's whole sequence concatenated (kv_slots [N]) and each row's
  key range [ks, ke) into it (ke = ks + position + 1: causal, radix-cache prefix included).
Per layer the backend writes the new latent rows and index keys at `out_cache_loc`, scores keys with the
indexer, keeps the top-k positions, maps them to slots and runs sparse MLA over the paged latent cache.
No math here: every step is an ops call.
"""
from __future__ import annotations

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
    is_decode: bool
    row_req: torch.Tensor                  # [T] int64
    block_table: torch.Tensor              # [B, P] int32
    context_lens: torch.Tensor             # [B] int32 (tokens cached after this step)
    max_context_len: int
    kv_slots: Optional[torch.Tensor] = None  # [N] int64, extend only
    ks: Optional[torch.Tensor] = None        # [T] int32
    ke: Optional[torch.Tensor] = None        # [T] int32


def _make_backend_class():
    from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

    class DSV32SparseAttnBackend(AttentionBackend):
        """Sparse MLA + lightning indexer over SGLang's DSA token pool, through deepseek_v32_plugin.ops."""

        def __init__(self, model_runner):
            super().__init__()
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
            self.forward_metadata: Optional[_Metadata] = None

        # ---- per batch -------------------------------------------------------------------------
        def init_forward_metadata(self, forward_batch):
            fb = forward_batch
            mode = fb.forward_mode
            if not (mode.is_decode() or mode.is_extend() or mode.is_idle()):
                raise NotImplementedError(f"{BACKEND_NAME}: forward mode {mode} is not supported")
            dev = fb.seq_lens.device
            bs = fb.batch_size
            seq_lens = fb.seq_lens.to(torch.int64)
            seq_cpu = fb.seq_lens_cpu.tolist() if fb.seq_lens_cpu is not None else seq_lens.tolist()
            max_len = max(seq_cpu) if bs else 0
            pages = max(1, -(-max_len // PAGE_SIZE))
            rows = self.req_to_token[fb.req_pool_indices.long()]                       # [B, max_ctx]
            cols = torch.arange(pages, device=dev) * PAGE_SIZE
            block_table = (rows[:, cols] // PAGE_SIZE).to(torch.int32)                 # [B, P]
            context_lens = seq_lens.to(torch.int32)
            if mode.is_decode() or mode.is_idle():
                row_req = torch.arange(bs, device=dev)
                self.forward_metadata = _Metadata(True, row_req, block_table, context_lens, max_len)
                return
            ext = fb.extend_seq_lens_cpu
            if ext is None:
                ext = fb.extend_seq_lens.tolist()
            row_req = torch.repeat_interleave(torch.arange(bs, device=dev),
                                              torch.tensor(ext, device=dev))           # [T]
            kv_start = torch.zeros(bs, dtype=torch.int64, device=dev)
            kv_start[1:] = torch.cumsum(seq_lens, 0)[:-1]
            kv_slots = torch.cat([rows[i, : seq_cpu[i]] for i in range(bs)]).to(torch.int64)
            ks = kv_start[row_req]
            ke = ks + fb.positions.to(torch.int64) + 1
            self.forward_metadata = _Metadata(False, row_req, block_table, context_lens, max_len,
                                              kv_slots, ks.to(torch.int32), ke.to(torch.int32))

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
            if save_kv_cache:
                sparse_mla.mla_cache_write(k.reshape(t, -1), k_rope.reshape(t, -1), kv_cache, loc)
                indexer.indexer_k_quant_and_cache(dsv32_index.k, idx_cache, loc)
            if md.is_decode:
                logits = indexer.fp8_paged_indexer_logits(
                    dsv32_index.q_fp8[:, None], idx_cache, dsv32_index.weights, md.context_lens,
                    md.block_table, md.max_context_len)
                positions = indexer.indexer_topk(logits, dsv32_index.topk, ke=md.context_lens)
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


_BACKEND_CLS = None


def create_backend(model_runner):
    """Factory registered with SGLang's attention registry (lazy: SGLang imported only when used)."""
    global _BACKEND_CLS
    if _BACKEND_CLS is None:
        _BACKEND_CLS = _make_backend_class()
    return _BACKEND_CLS(model_runner)
