"""One engine-neutral DSA step (DeepSeek Sparse Attention over paged caches) for a batch of requests:

  plan(...)    once per batch, from host-side metadata only: positions, each row's block table, which rows
               take the paged indexer kernel (decode / MTP verify: equal short query lengths), which the
               ragged one (prefill chunks, prefix hits: all of them batched into one call over their
               requests' keys, concatenated), and which need no scoring (a prefill row whose own context,
               position + 1, is <= index_topk: every past token is selected, even in a longer request);
  select(...)  per layer: write the new index keys, score, top-k, map positions to latent-cache slots;
  attend(...)  per layer: write the new latent rows, sparse MLA over the selected slots.

Attending over what is really there: a row at position p selects min(p + 1, index_topk) keys (all of its
context when that fits in top-k, else exactly index_topk), so the plan carries that count per row
(`topk_length`, on the device) and sparse MLA reads only those entries (ops.sparse_mla: topk_length). The
slot tensors are `width` = min(index_topk, longest context in the batch) wide (a host int from host
metadata): a batch of short contexts never builds, gathers or scores index_topk-wide rows. An engine that
replays captured CUDA graphs needs fixed shapes: plan(full_width=True) keeps width = index_topk, and the
kernels still stop at each row's topk_length (no host sync either way).

Engine adapters only translate their own batch metadata into plan()'s arguments and call select/attend
with their caches (vLLM: engines/vllm/backend.py + model.py; the vLLM-free GPU replay of captured plans:
integration_tests/vllm/replay_metadata.py). The reference model (model/reference.py) does not call this:
it stays the independent oracle the engine suites compare with. Only deepseek_v32_plugin.ops is called,
so on a GPU every step dispatches to our CUDA / Triton kernels.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..ops import PAGE_SIZE, indexer, sparse_mla
from .indexer import ascending


@dataclass
class PagedGroup:
    """Requests [req_lo, req_hi) with the same short query length q (<= decode threshold), rows
    [tok_lo, tok_hi); their keys are read by the paged indexer kernel up to max_context."""
    req_lo: int
    req_hi: int
    tok_lo: int
    tok_hi: int
    q: int
    max_context: int


@dataclass
class RaggedBatch:
    """Every prefill row that needs scoring, all requests at once: keys of those requests concatenated."""
    rows: torch.Tensor       # [Tr] int64: the batch rows scored here (position >= index_topk)
    kv_slots: torch.Tensor   # [N] int64: index-cache slots of the requests' keys 0..seq_len-1, concatenated
    ks: torch.Tensor         # [Tr] int32: first key of the row's request in kv_slots
    ke: torch.Tensor         # [Tr] int32: ks + position + 1 (causal)


@dataclass
class DSAPlan:
    num_tokens: int                   # T rows (vLLM: num_actual_tokens; padding after them is ignored)
    seq_lens: torch.Tensor            # [R] int32, context incl. this step's rows
    block_table: torch.Tensor         # [R, max_pages] int32
    slot_mapping: torch.Tensor        # [T] int64 latent/index-cache slot of each new row (-1: skip)
    positions: torch.Tensor           # [T] int64
    row_block_table: torch.Tensor     # [T, max_pages] int32: block table of each row's request
    paged: list = field(default_factory=list)        # list[PagedGroup]
    ragged: Optional[RaggedBatch] = None             # the prefill rows that are scored, batched
    dense_rows: Optional[torch.Tensor] = None        # [Td] int64: prefill rows whose own context (position + 1)
                                                     # fits in index_topk, also in requests longer than it
    ragged_spans: list = field(default_factory=list)  # [(tok_lo, tok_hi, seq_len)] of every prefill request
    width: Optional[int] = None       # columns of select()'s slots: min(topk, max seq_len); None: topk
    needs_scores: bool = True         # some row is scored by the indexer; False: select() needs only the keys
    topk_length: Optional[torch.Tensor] = None       # [T] int32 keys each row selects: min(position + 1, topk)

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "DSAPlan":
        """The same plan with fn applied to every tensor (e.g. moved to another device)."""
        ragged = None if self.ragged is None else dataclasses.replace(
            self.ragged, rows=fn(self.ragged.rows), kv_slots=fn(self.ragged.kv_slots), ks=fn(self.ragged.ks),
            ke=fn(self.ragged.ke))
        return dataclasses.replace(
            self, seq_lens=fn(self.seq_lens), block_table=fn(self.block_table), slot_mapping=fn(self.slot_mapping),
            positions=fn(self.positions), row_block_table=fn(self.row_block_table), ragged=ragged,
            dense_rows=None if self.dense_rows is None else fn(self.dense_rows),
            topk_length=None if self.topk_length is None else fn(self.topk_length))


def plan(query_start_loc: Sequence[int], seq_lens: Sequence[int], block_table: torch.Tensor,
         slot_mapping: torch.Tensor, topk: int, decode_threshold: int,
         positions: Optional[torch.Tensor] = None, full_width: bool = False) -> DSAPlan:
    """Host-side plan of one batch. query_start_loc [R+1] and seq_lens [R] (context incl. this step) are host
    ints; block_table [>=R, P] int32 and slot_mapping [>=T] are on the device. Rows of request r are its last
    query tokens: position = seq_len - query_len + i (prefill, chunks, prefix hits, decode, MTP verify).
    Consecutive requests with the same query length q in (0, decode_threshold] form one paged group.
    positions [T]: rows that are not their requests' last tokens (an engine mode that says so); each row
    still sees keys 0..position of its request; pass decode_threshold=0 (the paged kernel assumes last tokens).
    full_width: slots stay index_topk wide (fixed shapes for CUDA-graph replay; see the module docstring)."""
    qsl = [int(v) for v in query_start_loc]
    seq = [int(v) for v in seq_lens]
    r = len(seq)
    t = qsl[r]
    device = block_table.device
    qlens = [qsl[i + 1] - qsl[i] for i in range(r)]
    pos = torch.empty(t, dtype=torch.int64) if positions is None else positions[:t].to("cpu", torch.int64)
    req_of = torch.empty(t, dtype=torch.int64)
    for i in range(r):
        if positions is None:
            pos[qsl[i]: qsl[i + 1]] = torch.arange(seq[i] - qlens[i], seq[i])
        req_of[qsl[i]: qsl[i + 1]] = i
    block_table = block_table[:r]
    paged, dense, ragged_reqs, spans = [], [], [], []
    i = 0
    while i < r:
        q = qlens[i]
        if 0 < q <= decode_threshold:
            j = i
            while j < r and qlens[j] == q:
                j += 1
            paged.append(PagedGroup(i, j, qsl[i], qsl[j], q, max(seq[i:j])))
            i = j
            continue
        if q > 0:
            spans.append((qsl[i], qsl[i + 1], seq[i]))
            rows = torch.arange(qsl[i], qsl[i + 1])
            fits = pos[rows] < topk          # rows whose own context fits in top-k need no scoring
            dense.append(rows[fits])
            if not bool(fits.all()):
                ragged_reqs.append((i, rows[~fits]))
        i += 1
    to_dev = lambda x: x.to(device)  # noqa: E731
    ragged = None
    if ragged_reqs:
        rows, ks, ke, kv_req, kv_pos, off = [], [], [], [], [], 0
        for i, scored in ragged_reqs:
            rows.append(scored)
            ks.append(torch.full((len(scored),), off, dtype=torch.int64))
            ke.append(off + pos[scored] + 1)
            kv_req.append(torch.full((seq[i],), i, dtype=torch.int64))
            kv_pos.append(torch.arange(seq[i]))
            off += seq[i]
        kv_req, kv_pos = to_dev(torch.cat(kv_req)), to_dev(torch.cat(kv_pos))
        kv_slots = block_table[kv_req, kv_pos // PAGE_SIZE].long() * PAGE_SIZE + kv_pos % PAGE_SIZE
        ragged = RaggedBatch(to_dev(torch.cat(rows)), kv_slots, to_dev(torch.cat(ks).int()),
                             to_dev(torch.cat(ke).int()))
    dense = torch.cat(dense) if dense else torch.empty(0, dtype=torch.int64)
    dense_rows = to_dev(dense) if len(dense) else None
    width = topk if full_width else min(topk, max(seq, default=0))
    needs_scores = ragged is not None or any(g.max_context > topk for g in paged)
    topk_length = to_dev((pos + 1).clamp(max=topk).to(torch.int32))
    return DSAPlan(num_tokens=t, seq_lens=to_dev(torch.tensor(seq, dtype=torch.int32)), block_table=block_table,
                   slot_mapping=slot_mapping[:t], positions=to_dev(pos), row_block_table=block_table[to_dev(req_of)],
                   paged=paged, ragged=ragged, dense_rows=dense_rows, ragged_spans=spans, width=width,
                   topk_length=topk_length, needs_scores=needs_scores)


def select(p: DSAPlan, k: torch.Tensor, q_fp8: torch.Tensor, weights: torch.Tensor, index_cache: torch.Tensor,
           topk: int, write: bool = True) -> torch.Tensor:
    """Lightning indexer over the paged key cache: write the new keys, score, top-k, map to cache slots.
    k [T, 128] (normed, roped), q_fp8 [T, H, 128] e4m3, weights [T, H] fp32 (q scale folded in),
    index_cache [pages, 64, 132] uint8 -> slots [T, p.width] int32 in the latent cache (-1 = none; row r's
    first p.topk_length[r] entries are its selection, ascending positions).
    write=False: the new keys are already in the cache (an engine that saved them itself).
    When not p.needs_scores (every row's context fits in top-k) q_fp8 and weights may be None: adapters skip
    the indexer's query and head-weight projections then (only the keys are written)."""
    t = p.num_tokens
    if p.needs_scores and (q_fp8 is None or weights is None):
        raise ValueError("dsa.select: this batch has rows the indexer scores; q_fp8 and weights are required")
    if write:
        indexer.indexer_k_quant_and_cache(k, index_cache, p.slot_mapping)
    width = topk if p.width is None else p.width
    pos_idx = torch.full((t, width), -1, dtype=torch.int32, device=k.device)
    if p.dense_rows is not None:   # every past token is selected: top-k is the identity
        pos_idx[p.dense_rows] = all_positions(p.positions[p.dense_rows], width)
    ke = (p.positions + 1).to(torch.int32)
    for g in p.paged:
        rows = slice(g.tok_lo, g.tok_hi)
        if g.max_context <= topk:   # every past token is selected
            pos_idx[rows] = all_positions(p.positions[rows], width)
            continue
        b = g.req_hi - g.req_lo
        logits = indexer.fp8_paged_indexer_logits(
            q_fp8[rows].reshape(b, g.q, *q_fp8.shape[1:]), index_cache, weights[rows].contiguous(),
            p.seq_lens[g.req_lo:g.req_hi], p.block_table[g.req_lo:g.req_hi], g.max_context)
        pos_idx[rows] = ascending(indexer.indexer_topk(logits, topk, ke=ke[rows]))
    rg = p.ragged
    if rg is not None:
        k_fp8, k_scale = indexer.indexer_cache_gather(index_cache, rg.kv_slots)
        logits = indexer.fp8_indexer_logits(q_fp8[rg.rows], k_fp8, k_scale, weights[rg.rows], rg.ks, rg.ke)
        pos_idx[rg.rows] = ascending(indexer.indexer_topk(logits, topk, rg.ks, rg.ke))
    return indexer.indices_to_slots(pos_idx, p.row_block_table[:t])


def all_positions(positions: torch.Tensor, topk: int) -> torch.Tensor:
    """Rows whose context fits in top-k: positions 0..p, -1 after (what top-k selects, in the canonical
    ascending order of model.indexer.ascending)."""
    ar = torch.arange(topk, device=positions.device)
    return torch.where(ar[None, :] <= positions[:, None], ar[None, :], -1).to(torch.int32)


def attend(p: DSAPlan, q576: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor, latent_cache: torch.Tensor,
           slots: torch.Tensor, scale: float, kv_lora_rank: int, write: bool = True) -> torch.Tensor:
    """Write each new row's latent (kv_c [T, 512] | k_pe [T, 64]; unless write=False), then sparse MLA of
    q576 [T, h, 576] (absorbed nope | roped pe) over slots [T, width], each row over its first topk_length
    entries -> [T, h, kv_lora_rank]."""
    if write:
        sparse_mla.mla_cache_write(kv_c, k_pe, latent_cache, p.slot_mapping)
    lens = None if p.topk_length is None else p.topk_length[None]
    out, _ = sparse_mla.sparse_mla_decode(q576[None].contiguous(), latent_cache, slots[None].contiguous(), scale,
                                          kv_lora_rank, lens)
    return out[0]
