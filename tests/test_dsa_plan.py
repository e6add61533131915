"""model/dsa.py (the engines' shared DSA step) against a plain per-request formulation over the same caches:
decode groups, MTP-verify groups, prefill chunks with earlier context, short prompts, all in one batch."""
import pytest
import torch

from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla

TOPK, H_I, H = 16, 4, 2


def _per_request(qlens, seqs, table, slot_mapping, k, q_fp8, w, icache, positions):
    """Each row: scores over its own request's keys 0..position (one request at a time), top-k, slots;
    also each row's {slot: score} (ties may be broken differently by a batched top-k: equal scores agree)."""
    indexer.indexer_k_quant_and_cache(k, icache, slot_mapping)
    out, scores, lo = [], [], 0
    for r, (q, s) in enumerate(zip(qlens, seqs)):
        rows = slice(lo, lo + q)
        ctx = torch.arange(s)
        kf, ksc = indexer.indexer_cache_gather(icache, table[r, ctx // PAGE_SIZE].long() * PAGE_SIZE + ctx % PAGE_SIZE)
        ke = (positions[rows] + 1).int()
        logits = indexer.fp8_indexer_logits(q_fp8[rows].contiguous(), kf, ksc, w[rows].contiguous(),
                                            torch.zeros(q, dtype=torch.int32), ke)
        idx = dsa.all_positions(positions[rows], TOPK) if s <= TOPK else indexer.indexer_topk(logits, TOPK, ke=ke)
        slot_of = (table[r, ctx // PAGE_SIZE].long() * PAGE_SIZE + ctx % PAGE_SIZE).tolist()
        scores += [dict(zip(slot_of, row.tolist())) for row in logits]
        out.append(indexer.indices_to_slots(idx, table[r][None].expand(q, -1).contiguous()))
        lo += q
    return torch.cat(out), scores


def test_plan_select_attend_equal_per_request_formulation():
    g = torch.Generator().manual_seed(0)
    qlens = [1, 1, 3, 3, 20, 5, 40]           # decode x2, verify x2 (threshold 3), prefill chunks
    seqs = [70, 9, 90, 130, 20, 75, 100]       # short and long contexts, chunks with earlier context
    pages_per = 3
    table = torch.randperm(len(seqs) * pages_per, generator=g).int().view(len(seqs), pages_per)
    pages = len(seqs) * pages_per
    qsl = [0]
    for q in qlens:
        qsl.append(qsl[-1] + q)
    t = qsl[-1]
    positions = torch.cat([torch.arange(s - q, s) for q, s in zip(qlens, seqs)])
    req = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(qlens))
    slot_mapping = table[req, positions // PAGE_SIZE].long() * PAGE_SIZE + positions % PAGE_SIZE
    icache0 = torch.zeros(pages, PAGE_SIZE, indexer.BYTES_PER_TOKEN, dtype=torch.uint8)
    every = torch.arange(pages * PAGE_SIZE)
    indexer.indexer_k_quant_and_cache(torch.randn(len(every), 128, generator=g), icache0, every)
    k = torch.randn(t, 128, generator=g)
    q_fp8, q_scale = indexer.indexer_quant(torch.randn(t, H_I, 128, generator=g))
    w = (torch.randn(t, H_I, generator=g) * q_scale).float()

    p = dsa.plan(qsl, seqs, table, slot_mapping, TOPK, decode_threshold=3)
    assert [(gr.q, gr.req_hi - gr.req_lo) for gr in p.paged] == [(1, 2), (3, 2)]
    assert p.needs_scores
    with pytest.raises(ValueError, match="q_fp8 and weights are required"):
        dsa.select(p, torch.zeros(qsl[-1], 128), None, None, torch.zeros(1, PAGE_SIZE, 132, dtype=torch.uint8), TOPK)
    # prefill rows whose own context fits in top-k take the identity selection, in longer requests too
    assert set(p.dense_rows.tolist()) == {qsl[4] + i for i in range(16)}
    assert torch.equal(p.positions, positions)
    ic1, ic2 = icache0.clone(), icache0.clone()
    got = dsa.select(p, k, q_fp8, w, ic1, TOPK)
    want, scores = _per_request(qlens, seqs, table, slot_mapping, k, q_fp8, w, ic2, positions)
    assert torch.equal(ic1, ic2)
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = set(a.tolist()) - {-1}, set(b.tolist()) - {-1}
        assert len(a) == len(b) and (a == b or sorted(scores[i][x] for x in a) == sorted(scores[i][x] for x in b)), i

    mcache = torch.zeros(pages, PAGE_SIZE, sparse_mla.HEAD_576, dtype=torch.bfloat16)
    sparse_mla.mla_cache_write(torch.randn(len(every), 512, generator=g), torch.randn(len(every), 64, generator=g),
                               mcache, every)
    q576 = torch.randn(t, H, sparse_mla.HEAD_576, generator=g)
    kv_c, k_pe = torch.randn(t, 512, generator=g), torch.randn(t, 64, generator=g)
    m2 = mcache.clone()
    out = dsa.attend(p, q576, kv_c, k_pe, mcache, got, 0.1, 512)
    sparse_mla.mla_cache_write(kv_c, k_pe, m2, slot_mapping)
    ref, _ = sparse_mla.sparse_mla_decode(q576[:, None].contiguous(), m2, got[:, None].contiguous(), 0.1, 512)
    assert torch.equal(mcache, m2)
    torch.testing.assert_close(out, ref[:, 0], rtol=1e-5, atol=1e-5)

    moved = p.map_tensors(lambda x: x.clone())
    assert torch.equal(dsa.select(moved, k, q_fp8, w, icache0.clone(), TOPK), got)


def test_short_contexts_attend_over_their_real_length():
    """Issue 15: a batch whose contexts all fit in top-k gets slots as wide as its longest context (not
    index_topk), topk_length = position + 1 per row, and the same attention as the full-width plan
    (fixed shapes for CUDA graphs) and as the reference over index_topk-wide -1-padded rows."""
    g = torch.Generator().manual_seed(1)
    topk = 256
    qlens, seqs = [1, 1, 30], [9, 64, 65]     # two decodes and a prefill, all <= topk; page edge at 64
    table = torch.arange(6).int().view(3, 2)
    qsl = [0, 1, 2, 32]
    positions = torch.cat([torch.arange(s - q, s) for q, s in zip(qlens, seqs)])
    req = torch.repeat_interleave(torch.arange(3), torch.tensor(qlens))
    slot_mapping = table[req, positions // PAGE_SIZE].long() * PAGE_SIZE + positions % PAGE_SIZE
    p = dsa.plan(qsl, seqs, table, slot_mapping, topk, decode_threshold=4)
    pf = dsa.plan(qsl, seqs, table, slot_mapping, topk, decode_threshold=4, full_width=True)
    assert p.width == 65 and pf.width == topk
    assert not p.needs_scores and not pf.needs_scores   # adapters skip the indexer's q / weights projections
    assert torch.equal(p.topk_length, (positions + 1).int())
    icache = torch.zeros(6, PAGE_SIZE, indexer.BYTES_PER_TOKEN, dtype=torch.uint8)
    k = torch.randn(32, 128, generator=g)
    q_fp8, q_scale = indexer.indexer_quant(torch.randn(32, 4, 128, generator=g))
    w = q_scale.float()
    slots = dsa.select(p, k, None, None, icache, topk)
    slots_full = dsa.select(pf, k, q_fp8, w, icache.clone(), topk)
    assert slots.shape == (32, 65) and slots_full.shape == (32, topk)
    assert torch.equal(slots, slots_full[:, :65]) and (slots_full[:, 65:] == -1).all()
    assert icache.view(-1)[: 6 * PAGE_SIZE * 128].any()          # the index keys are still written
    for r in range(32):
        n = int(p.topk_length[r])
        assert (slots[r, :n] >= 0).all() and (slots[r, n:] == -1).all()

    mcache = torch.randn(6, PAGE_SIZE, sparse_mla.HEAD_576, generator=g).bfloat16()
    q576 = torch.randn(32, 2, sparse_mla.HEAD_576, generator=g)
    kv_c, k_pe = torch.randn(32, 512, generator=g), torch.randn(32, 64, generator=g)
    m_full = mcache.clone()
    out = dsa.attend(p, q576, kv_c, k_pe, mcache, slots, 0.1, 512)
    out_full = dsa.attend(pf, q576, kv_c, k_pe, m_full, slots_full, 0.1, 512)
    ref, _ = sparse_mla.naive.naive_sparse_mla_decode(q576[None], m_full, slots_full[None], 0.1)
    torch.testing.assert_close(out, out_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref[0], rtol=1e-5, atol=1e-5)
