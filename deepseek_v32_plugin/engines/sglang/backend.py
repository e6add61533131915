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
and the EAGLE modes: target verify, draft extend, multi-step draft decode; see NOTES.md): the backend turns
ForwardBatch into query_start_loc / context lengths / block table / out_cache_loc and hands them to the
engine-neutral `model.dsa.plan` (requests with <= 4 rows take the paged indexer kernel, the others one
batched ragged call). Per layer the model calls `dsa_forward`, which runs `dsa.select` (write the index
keys, score, top-k, slots) and `dsa.attend` (write the latent rows, sparse MLA) on this layer's caches.
Decode, draft decode and target verify batches (uniform: q <= 4 rows per request) skip the host plan: a plan
whose shapes depend on (batch size, q) only, filled in place by device ops -- no host syncs -- is what
eager steps and SGLang's graph runners (CUDA graphs, and the CPUGraphRunner of --enable-torch-compile)
capture and replay; see NOTES.md "Graph capture". Rows SGLang pads a batch with (DP attention, graph replays
at a larger captured size) carry no request: they select no keys and get a zero output (NOTES.md "DP
attention"). No math here.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import torch

from ...model import dsa, dsa_graph
from ...ops import PAGE_SIZE, indexer, sparse_mla

BACKEND_NAME = "dsv32_sparse"
GRAPH_LOG_ENV = "DSV32_SGLANG_GRAPH_LOG"
BATCH_LOG_ENV = "DSV32_SGLANG_BATCH_LOG"


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
            self.topk = model_runner.model_config.hf_config.index_topk
            self.forward_metadata: Optional[dsa.DSAPlan] = None
            self.row_req: Optional[torch.Tensor] = None
            # decode-like batches index up to the cache capacity: static shapes for graphs, no host syncs
            self.capacity_pages = -(-self.req_to_token.shape[1] // PAGE_SIZE)
            self._graph_bufs: Optional[dsa_graph.UniformPlanBuffers] = None
            self._graph_plans: dict = {}   # (batch size, rows per request) -> plan over _graph_bufs
            # test hook: append (event, batch size, rows per request, buffer addresses) of every graph capture
            # and every batch planned on a captured plan to this file (integration_tests/sglang)
            self._graph_log = os.environ.get(GRAPH_LOG_ENV) or None
            # test hook: append (pid, mode, rows, planned rows, padding requests) of every batch to this file
            self._batch_log = os.environ.get(BATCH_LOG_ENV) or None

        # ---- per batch -------------------------------------------------------------------------
        def init_forward_metadata(self, forward_batch):
            fb = forward_batch
            mode = fb.forward_mode
            if not (mode.is_decode() or mode.is_extend() or mode.is_idle() or mode.is_draft_extend_v2()):
                raise NotImplementedError(f"{BACKEND_NAME}: forward mode {mode} is not supported")
            t, bs = fb.positions.shape[0], fb.batch_size
            q = self._uniform_rows(mode, t, bs)
            if q:   # decode / draft decode / target verify: the capturable plan, no host syncs
                plan, bufs = self._graph_plans.get((bs, q)), self._graph_bufs
                if plan is None:   # eager: buffers of this batch's size
                    bufs = uniform_buffers(bs, bs * q, self.capacity_pages, self.topk, self.device)
                    plan = bufs.plan(bs, q, self._eager_bound(fb))
                elif self._graph_log:
                    self._log_graph("plan", plan)
                self._fill_uniform(bufs, plan, fb.req_pool_indices, fb.positions, fb.out_cache_loc)
                if self._batch_log:   # (a host read: test hook only)
                    self._log_batch(mode, t, t, int((fb.req_pool_indices[:bs] == 0).sum()))
                return
            dev = fb.seq_lens.device
            # Every query row attends causally to its own request's tokens 0..position (all already in the
            # cache, this batch's written first), whatever the mode: prefill chunks, radix hits, decode, and
            # the speculative modes (target verify of a draft chain, draft extend, draft decode steps).
            # Rows past the requests' (DP attention pads a batch to its group's size; an idle rank's batch is
            # padding only) carry no request: they are not planned, dsa_forward gives them a zero output.
            counts = self._rows_per_request(fb, t, bs)
            n = sum(counts)
            row_req = torch.repeat_interleave(torch.arange(len(counts), device=dev),
                                              torch.tensor(counts, dtype=torch.long, device=dev))
            pos = fb.positions[:n].to(torch.int64) + self.step_offset
            kv_lens = torch.zeros(len(counts), dtype=torch.int64, device=dev)
            if n:
                kv_lens.scatter_reduce_(0, row_req, pos + 1, reduce="amax")
            kv_list = kv_lens.tolist()
            max_len = max(kv_list, default=0)
            pages = max(1, -(-max_len // PAGE_SIZE))
            rows = self.req_to_token[fb.req_pool_indices[:len(counts)].long()]        # [B, max_ctx]
            cols = torch.arange(pages, device=dev) * PAGE_SIZE
            block_table = (rows[:, cols] // PAGE_SIZE).to(torch.int32)                 # [B, P]
            self.row_req = row_req
            if self._batch_log:
                self._log_batch(mode, t, n, 0)
            if n == 0:   # idle batch: nothing to attend (dsa_forward returns zeros for its padding rows)
                self.forward_metadata = None
                return
            qsl = [0]
            for c in counts:
                qsl.append(qsl[-1] + c)
            slots = fb.out_cache_loc[:n]
            md = dsa.plan(qsl, kv_list, block_table, slots, self.topk, indexer.PAGED_MAX_NEXT_N)
            if not torch.equal(md.positions, pos):   # rows that are not their requests' last tokens: all ragged
                md = dsa.plan(qsl, kv_list, block_table, slots, self.topk, 0, positions=pos)
            self.forward_metadata = md

        # ---- uniform batches (decode, draft decode, target verify): one path for eager and graphs --
        # Every request has q <= PAGED_MAX_NEXT_N rows, its last q tokens (decode: 1 at seq_len - 1; a chain
        # verify: q consecutive; draft decode step i: + i). The plan's shapes depend on (bs, q) only: the
        # indexer reads up to the cache capacity (the pool's req_to_token width, rows past seq_len masked),
        # so filling it is device work alone -- no .item()/.tolist() -- and a captured graph replays it
        # on persistent buffers (init_cuda_graph_state / init_cpu_graph_state) for any context length.
        @staticmethod
        def _uniform_rows(mode, t: int, bs: int, graph: bool = False) -> int:
            """Rows per request when the batch takes the uniform plan, else 0. Graphs also: EAGLE draft extend,
            captured with speculative_num_draft_tokens consecutive rows per request (its eager batches after
            a prefill are ragged: planned the general way)."""
            uniform_mode = mode.is_decode() or mode.is_target_verify() or (graph and mode.is_draft_extend_v2())
            if not uniform_mode or bs == 0 or t == 0 or t % bs:
                return 0
            q = t // bs
            return q if q <= indexer.PAGED_MAX_NEXT_N else 0

        def _eager_bound(self, fb) -> Optional[int]:
            """Eager plain decode (rows at seq_len - 1): the host int seq_lens_sum bounds every request's keys,
            so the indexer need not read the whole capacity (equal results: the extra columns are -inf).
            Verify / draft steps, whose rows sit past seq_len, and graphs read the capacity."""
            if not fb.forward_mode.is_decode() or self.step_offset or not isinstance(fb.seq_lens_sum, int):
                return None
            return min(-(-max(fb.seq_lens_sum, 1) // PAGE_SIZE), self.capacity_pages) * PAGE_SIZE

        def _fill_uniform(self, bufs, plan: dsa.DSAPlan, req_pool_indices, positions, out_cache_loc) -> None:
            fill_uniform(bufs, plan, self.req_to_token, req_pool_indices, positions, out_cache_loc, self.step_offset)
            self.row_req = torch.arange(plan.num_tokens, device=plan.positions.device) // plan.paged[0].q
            self.forward_metadata = plan

        # ---- graph capture hooks: SGLang's CUDA-graph runners and its CPUGraphRunner ----------------
        def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
            """Persistent metadata buffers; every captured batch size plans on views of them."""
            self._graph_bufs = uniform_buffers(max_bs, max_num_tokens, self.capacity_pages, self.topk, self.device)
            self._graph_plans = {}

        init_cpu_graph_state = init_cuda_graph_state

        def get_cuda_graph_seq_len_fill_value(self):
            # padded requests: SGLang's seq_lens filler (graph replays, DP attention); their rows sit on the
            # reserved request 0, which fill_uniform plans as no keys whatever this value
            return 1

        get_cpu_graph_seq_len_fill_value = get_cuda_graph_seq_len_fill_value

        def _capture_plan(self, mode, bs: int, t: int, out_cache_loc) -> dsa.DSAPlan:
            q = self._uniform_rows(mode, t, bs, graph=True)
            if not q:
                raise NotImplementedError(f"{BACKEND_NAME}: cannot capture a {mode} batch of {t} rows for {bs} "
                                          f"requests (graphs: uniform batches of <= {indexer.PAGED_MAX_NEXT_N} "
                                          "rows per request)")
            plan = self._graph_plans[(bs, q)] = self._graph_bufs.plan(bs, q)
            if self._graph_log:
                self._log_graph("capture", plan)
            return plan

        def _log_batch(self, mode, rows: int, planned: int, padding_reqs: int) -> None:
            with open(self._batch_log, "a") as f:
                f.write(json.dumps([os.getpid(), mode.name, rows, planned, padding_reqs]) + "\n")

        def _log_graph(self, event: str, plan: dsa.DSAPlan) -> None:
            g = plan.paged[0]
            ptrs = [t.data_ptr() for t in (plan.seq_lens, plan.block_table, plan.positions, plan.row_block_table)]
            with open(self._graph_log, "a") as f:
                f.write(json.dumps([event, g.req_hi, g.q, ptrs]) + "\n")

        def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
            """CUDA graphs, outside the graph: pick (capture: make) the persistent plan of this batch size."""
            fb = forward_batch
            if in_capture:
                self._capture_plan(fb.forward_mode, fb.batch_size, fb.positions.shape[0], fb.out_cache_loc)
            self.forward_metadata = self._graph_plan_of(fb)

        def init_forward_metadata_in_graph(self, forward_batch):
            """CUDA graphs, recorded into the graph: refill the plan from the runner's input buffers."""
            fb = forward_batch
            self._fill_uniform(self._graph_bufs, self._graph_plan_of(fb), fb.req_pool_indices, fb.positions,
                               fb.out_cache_loc)

        def _graph_plan_of(self, fb) -> dsa.DSAPlan:
            bs, t = fb.batch_size, fb.positions.shape[0]
            return self._graph_plans[(bs, self._uniform_rows(fb.forward_mode, t, bs, graph=True))]

        def init_forward_metadata_capture_cpu_graph(self, bs, num_tokens, req_pool_indices, seq_lens,
                                                    out_cache_loc, encoder_lens, forward_mode, spec_info):
            """CPUGraphRunner (decode only, one row per request): its replays call init_forward_metadata,
            which refills this plan in place for batches of a captured size."""
            plan = self._capture_plan(forward_mode, bs, num_tokens, out_cache_loc)
            # the runner passes no positions: a decode row sits at seq_len - 1 (SGLang's clamp_position)
            self._fill_uniform(self._graph_bufs, plan, req_pool_indices, (seq_lens[:bs].long() - 1).clamp_min(0),
                               out_cache_loc)

        @staticmethod
        def _rows_per_request(fb, t: int, bs: int) -> list:
            """Query rows of each request (rows are grouped by request, in batch order; any rows after them
            are padding). SGLang's DP attention (forward_batch_info.py prepare_mlp_sync_batch) pads an extend
            batch with rows of zero-length requests and makes an idle rank run a batch of padding rows."""
            mode = fb.forward_mode
            if mode.is_idle():
                return []
            if mode.is_decode():
                if t % max(bs, 1):
                    raise NotImplementedError(f"{BACKEND_NAME}: {t} decode rows for {bs} requests (a draft tree, "
                                              "speculative_eagle_topk > 1, is not supported)")
                return [t // bs] * bs if bs else []
            if not mode.is_target_verify():
                ext = fb.extend_seq_lens_cpu
                if ext is None and fb.extend_seq_lens is not None:
                    ext = fb.extend_seq_lens.tolist()
                if ext is not None:
                    if sum(ext) > t:
                        raise NotImplementedError(f"{BACKEND_NAME}: {t} query rows but extend_seq_lens sum to "
                                                  f"{sum(ext)} in a {mode} batch")
                    ext = list(ext)
                    while ext and not ext[-1] and sum(ext) < t:   # padding requests (zero rows) at the end
                        ext.pop()
                    return ext
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

        def dsa_forward(self, layer, forward_batch, q576, kv_c, k_pe, index_k, index_q_fp8, index_weights,
                        save_kv_cache: bool = True):
            """One layer's DSA step (model/dsa.py) for the batch planned in init_forward_metadata.
            layer: the RadixAttention (layer_id, scaling, v_head_dim = kv_lora_rank); q576 [T, h, 576],
            kv_c [T, 512], k_pe [T, 64], index_k [T, 128], index_q_fp8 [T, H_i, 128], index_weights [T, H_i]
            -> [T, h, kv_lora_rank]."""
            md = self.forward_metadata
            t = q576.shape[0]
            if t == 0 or md is None:   # empty or idle (padding rows only): no keys, no output
                return q576.new_zeros(t, layer.tp_q_head_num, layer.v_head_dim)
            n = md.num_tokens   # < t: padding rows after the requests' (DP attention), planned out
            slots_of_batch = forward_batch.out_cache_loc[:n] if n < t else forward_batch.out_cache_loc
            if n == t and md.slot_mapping is not slots_of_batch:
                # multi-step draft decode: planned once per round, the worker hands each step its own slots
                self.forward_metadata = md = dataclasses.replace(md, slot_mapping=slots_of_batch)
            kv_cache, idx_cache = self._caches(layer.layer_id)
            if self.check_slots:
                req = forward_batch.req_pool_indices.long()[self.row_req]
                want = self.req_to_token[req, forward_batch.positions[:n].long()]
                if not torch.equal(want.to(torch.int64), slots_of_batch.to(torch.int64)):
                    raise AssertionError(f"{BACKEND_NAME}: out_cache_loc != req_to_token[req, position] in "
                                         f"{forward_batch.forward_mode}")
            if n < t:
                cut = lambda x: None if x is None else x[:n]   # noqa: E731
                q576, kv_c, k_pe = q576[:n], kv_c[:n], k_pe[:n]
                index_k, index_q_fp8, index_weights = cut(index_k), cut(index_q_fp8), cut(index_weights)
            slots = dsa.select(md, index_k, index_q_fp8, index_weights, idx_cache, self.topk, write=save_kv_cache)
            out = dsa.attend(md, q576, kv_c, k_pe, kv_cache, slots, layer.scaling, layer.v_head_dim,
                             write=save_kv_cache)
            if n < t:
                out = torch.cat([out, out.new_zeros(t - n, *out.shape[1:])])
            return out

        def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
            raise NotImplementedError(f"{BACKEND_NAME}: the V3.2 model calls dsa_forward (engines/sglang/model.py)")

        forward_decode = forward_extend

    return DSV32SparseAttnBackend


# ---- the uniform plan (decode, draft decode, target verify), free of SGLang imports for unit tests ----------
def uniform_buffers(max_bs: int, max_rows: int, capacity_pages: int, topk: int, device
                    ) -> dsa_graph.UniformPlanBuffers:
    """Plan buffers for up to max_bs requests / max_rows rows (persistent when made once for graph capture),
    whose plans' indexer reads up to the cache capacity (req_to_token's width) unless given a tighter bound."""
    return dsa_graph.UniformPlanBuffers(max_bs, indexer.PAGED_MAX_NEXT_N, capacity_pages, capacity_pages * PAGE_SIZE,
                                        topk, device, max_rows=max_rows)


def fill_uniform(bufs: dsa_graph.UniformPlanBuffers, plan: dsa.DSAPlan, req_to_token, req_pool_indices, positions,
                 out_cache_loc, step_offset: int = 0) -> None:
    """Write a batch into a plan of bufs in place, by device ops only (graph-recordable, no host sync): its
    rows' positions (+ the draft step's offset) and each request's block table (its slots are page-aligned:
    page p = req_to_token[req, 64 p] // 64).
    SGLang pads a batch (DP attention; a graph replayed at a larger captured size) with requests on its reserved
    request row 0 (mem_cache/memory_pool.py ReqToTokenPool, never a real request's): they are planned out
    (position -1, seq_len 0 -> no keys selected, zero attention output); their key/latent writes go to slot 0,
    SGLang's padding slot, which no request reads."""
    bs, pages = plan.paged[0].req_hi, plan.block_table.shape[1]
    first_slots = req_to_token[:, ::PAGE_SIZE][req_pool_indices[:bs].long(), :pages]
    bufs.fill_positions(plan, positions, first_slots.div(PAGE_SIZE, rounding_mode="floor"), out_cache_loc,
                        step_offset, padding=req_pool_indices[:bs] == 0)


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

    # SGLang's EAGLE draft CUDA-graph runner: each step's backend keeps its own persistent plan
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        for backend in self.attn_backends:
            backend.init_cuda_graph_state(max_bs, max_num_tokens)

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        for backend in self.attn_backends:
            backend.init_forward_metadata_out_graph(forward_batch, in_capture)

    def init_forward_metadata_in_graph(self, forward_batch):
        for backend in self.attn_backends:
            backend.init_forward_metadata_in_graph(forward_batch)


_BACKEND_CLS = None


def create_backend(model_runner, step_offset: int = 0):
    """Factory registered with SGLang's attention registry (lazy: SGLang imported only when used)."""
    global _BACKEND_CLS
    if _BACKEND_CLS is None:
        _BACKEND_CLS = _make_backend_class()
    return _BACKEND_CLS(model_runner, step_offset)
