"""The vLLM adapter's engine-independent half: batch metadata -> our ops (no vLLM import), so the same code
runs inside vLLM (backend.py) and in GPU replays of metadata captured from real CPU engine runs
(integration_tests/vllm/replay_metadata.py), where vLLM cannot be installed.

`build_metadata` turns a scheduler batch (query_start_loc, seq_lens, block_table, slot_mapping) into
`DSV32Metadata`; `indexer_select` and `sparse_mla_attend` are the two per-layer kernel sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla


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




def build_metadata(query_start_loc_cpu: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
                   slot_mapping: torch.Tensor, num_reqs: int, num_actual_tokens: int,
                   decode_threshold: int) -> DSV32Metadata:
    """positions[t] = seq_len - query_len + i for the i-th scheduled token of its request; requests whose
    query length is in (0, decode_threshold] are grouped (consecutive, equal length) for the paged indexer
    kernel, the others (prefill chunks) go one by one through the ragged path."""
    r, t = num_reqs, num_actual_tokens
    qsl = query_start_loc_cpu[: r + 1].tolist()
    seq_lens_cpu = seq_lens[:r].to("cpu", torch.int32)
    seq_list = seq_lens_cpu.tolist()
    device = block_table.device
    qlens = [qsl[i + 1] - qsl[i] for i in range(r)]
    pos = torch.empty(t, dtype=torch.int64)
    req_of = torch.empty(t, dtype=torch.int64)
    for i in range(r):
        pos[qsl[i]: qsl[i + 1]] = torch.arange(seq_list[i] - qlens[i], seq_list[i])
        req_of[qsl[i]: qsl[i + 1]] = i
    block_table = block_table[:r]
    paged, ragged = [], []
    i = 0
    while i < r:
        q = qlens[i]
        if 0 < q <= decode_threshold:
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
        slot_mapping=slot_mapping[:t], positions=pos.to(device), token_block_table=block_table[req_of.to(device)],
        paged=paged, ragged=ragged, max_seq_len=max(seq_list) if seq_list else 0)


def indexer_select(k: torch.Tensor, q_fp8: torch.Tensor, weights: torch.Tensor, kv_cache: torch.Tensor,
                   md: DSV32Metadata, topk: int) -> torch.Tensor:
    """Lightning indexer over the paged key cache: write the new keys, score, top-k, map to cache slots.
    k [T, 128] (normed, roped), q_fp8 [T, H, 128] e4m3, weights [T, H] fp32 (q scale folded in)
    -> slots [T, topk] int32 in the latent cache (-1 = none)."""
    t = md.num_actual_tokens
    indexer.indexer_k_quant_and_cache(k, kv_cache, md.slot_mapping)
    pos_idx = torch.full((t, topk), -1, dtype=torch.int32, device=k.device)
    ke = (md.positions + 1).to(torch.int32)
    for g in md.paged:
        rows = slice(g.tok_lo, g.tok_hi)
        if g.max_context <= topk:   # every past token is selected: top-k is the identity
            pos_idx[rows] = all_positions(md.positions[rows], topk)
            continue
        b = g.req_hi - g.req_lo
        logits = indexer.fp8_paged_indexer_logits(
            q_fp8[rows].reshape(b, g.q, *q_fp8.shape[1:]), kv_cache, weights[rows].contiguous(),
            md.seq_lens[g.req_lo:g.req_hi], md.block_table[g.req_lo:g.req_hi], g.max_context)
        pos_idx[rows] = indexer.indexer_topk(logits, topk, ke=ke[rows])
    for rq in md.ragged:
        rows = slice(rq.tok_lo, rq.tok_hi)
        if rq.seq_len <= topk:
            pos_idx[rows] = all_positions(md.positions[rows], topk)
            continue
        ctx = torch.arange(rq.seq_len, device=k.device)
        table = md.block_table[rq.req]
        ctx_slots = table[ctx // PAGE_SIZE].long() * PAGE_SIZE + ctx % PAGE_SIZE
        k_fp8, k_scale = indexer.indexer_cache_gather(kv_cache, ctx_slots)
        n = rq.tok_hi - rq.tok_lo
        logits = indexer.fp8_indexer_logits(q_fp8[rows].contiguous(), k_fp8, k_scale, weights[rows].contiguous(),
                                            torch.zeros(n, dtype=torch.int32, device=k.device), ke[rows])
        pos_idx[rows] = indexer.indexer_topk(logits, topk, ke=ke[rows])
    return indexer.indices_to_slots(pos_idx, md.token_block_table[:t])


def all_positions(positions: torch.Tensor, topk: int) -> torch.Tensor:
    """Rows whose context fits in top-k: positions 0..p, -1 after (what top-k selects, in ascending order)."""
    ar = torch.arange(topk, device=positions.device)
    return torch.where(ar[None, :] <= positions[:, None], ar[None, :], -1).to(torch.int32)


def sparse_mla_attend(q576: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                      slots: torch.Tensor, md: DSV32Metadata, scale: float, kv_lora_rank: int) -> torch.Tensor:
    """Write each new token's latent row, then attend over the selected slots.
    q576 [T, h, 576] (absorbed nope | roped pe), kv_c [T, 512], k_pe [T, 64], slots [T, topk] -> [T, h, 512]."""
    sparse_mla.mla_cache_write(kv_c, k_pe, kv_cache, md.slot_mapping)
    out, _ = sparse_mla.sparse_mla_decode(q576[None].contiguous(), kv_cache, slots[None].contiguous(), scale,
                                          kv_lora_rank)
    return out[0]
