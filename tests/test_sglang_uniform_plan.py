"""The SGLang backend's uniform plan (engines/sglang/backend.py: decode, draft decode and target verify, eager
or graph-captured) against the context-sized plan of model/dsa.py that those batches took before:
  - select/attend give the same slots and the same output, bit for bit (capacity-wide indexer rows);
  - one plan refilled in place for new batch contents (what a graph replay does) keeps its buffers and
    equals a fresh context-sized plan of the new batch;
  - filling it runs no host-syncing aten op (a planted .item() is caught);
  - padding requests (SGLang's reserved request row 0: DP attention, graph replays at a larger size) select
    no keys and attend to nothing (zero output), and the real requests' results are unchanged by them."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from deepseek_v32_plugin.engines.sglang.backend import fill_uniform, uniform_buffers
from deepseek_v32_plugin.model import dsa
from deepseek_v32_plugin.ops import PAGE_SIZE, indexer, sparse_mla

TOPK, H_I, H = 16, 4, 2
POOL_REQS, CAPACITY_PAGES = 6, 4        # req_to_token [6, 256]: 4 pages of context per request
SYNCING = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2", "equal"}


class _NoSync(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING or (name == "index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))):
            raise AssertionError(f"host-syncing op {name}")
        return func(*args, **(kwargs or {}))


def _pool(g):
    """SGLang's req_to_token: each request's slots page-aligned, its pages scattered over the pool."""
    pages = torch.randperm(POOL_REQS * CAPACITY_PAGES, generator=g).view(POOL_REQS, CAPACITY_PAGES)
    pos = torch.arange(CAPACITY_PAGES * PAGE_SIZE)
    return (pages[:, pos // PAGE_SIZE] * PAGE_SIZE + pos % PAGE_SIZE).int(), POOL_REQS * CAPACITY_PAGES


def _batch(req_to_token, reqs, seqs, q):
    """Rows of each request: its last q tokens (context seqs incl. them)."""
    positions = torch.cat([torch.arange(s - q, s) for s in seqs])
    req = torch.tensor(reqs).repeat_interleave(q)
    return torch.tensor(reqs), positions, req_to_token[req, positions].long()


def _context_plan(req_to_token, reqs, seqs, q, slots):
    """What these batches planned on before: dsa.plan over context-sized block tables (host metadata)."""
    pages = -(-max(seqs) // PAGE_SIZE)
    table = (req_to_token[torch.tensor(reqs)][:, ::PAGE_SIZE][:, :pages] // PAGE_SIZE).int()
    qsl = [q * i for i in range(len(seqs) + 1)]
    return dsa.plan(qsl, seqs, table, slots, TOPK, indexer.PAGED_MAX_NEXT_N)


def _step(plan, caches, g, t):
    icache, mcache = (c.clone() for c in caches)
    k = torch.randn(t, 128, generator=g)
    q_fp8, q_scale = indexer.indexer_quant(torch.randn(t, H_I, 128, generator=g))
    w = (torch.randn(t, H_I, generator=g) * q_scale).float()
    slots = dsa.select(plan, k, q_fp8, w, icache, TOPK)
    q576 = torch.randn(t, H, sparse_mla.HEAD_576, generator=g).bfloat16()
    kv_c, k_pe = torch.randn(t, 512, generator=g).bfloat16(), torch.randn(t, 64, generator=g).bfloat16()
    out = dsa.attend(plan, q576, kv_c, k_pe, mcache, slots, 0.1, 512)
    return slots, out, icache, mcache


def _caches(g, pages):
    every = torch.arange(pages * PAGE_SIZE)
    icache = torch.zeros(pages, PAGE_SIZE, indexer.BYTES_PER_TOKEN, dtype=torch.uint8)
    indexer.indexer_k_quant_and_cache(torch.randn(len(every), 128, generator=g), icache, every)
    mcache = torch.zeros(pages, PAGE_SIZE, sparse_mla.HEAD_576, dtype=torch.bfloat16)
    sparse_mla.mla_cache_write(torch.randn(len(every), 512, generator=g).bfloat16(),
                               torch.randn(len(every), 64, generator=g).bfloat16(), mcache, every)
    return icache, mcache


@pytest.mark.parametrize("q", [1, 3], ids=["decode", "verify"])
def test_uniform_plan_equals_context_plan_and_refills_in_place(seed, q):
    g = torch.Generator().manual_seed(seed)
    req_to_token, pool_pages = _pool(g)
    caches = _caches(g, pool_pages)
    bs = 3
    bufs = uniform_buffers(bs, bs * q, CAPACITY_PAGES, TOPK, "cpu")   # as init_cuda/cpu_graph_state: once
    plan = None
    # contexts below and above top-k and across pages; then the same plan refilled with new contents
    # (request rows 1..5: SGLang reserves row 0 for padding, see test_padding_requests_select_nothing)
    for reqs, seqs in (([4, 1, 2], [9, 70, 150]), ([1, 5, 3], [200, 12, 65])):
        req_pool_indices, positions, slots = _batch(req_to_token, reqs, seqs, q)
        if plan is None:
            plan = bufs.plan(bs, q)
            ptrs = [t.data_ptr() for t in (plan.seq_lens, plan.block_table, plan.positions, plan.row_block_table)]
        with _NoSync():
            fill_uniform(bufs, plan, req_to_token, req_pool_indices, positions, slots)
        assert [t.data_ptr() for t in (plan.seq_lens, plan.block_table, plan.positions,
                                       plan.row_block_table)] == ptrs
        want = _context_plan(req_to_token, reqs, seqs, q, slots)
        if q == 1:   # an eager decode batch read up to a bound of its lengths (backend._eager_bound), tightest
            b_bufs = uniform_buffers(bs, bs * q, CAPACITY_PAGES, TOPK, "cpu")
            bounded = b_bufs.plan(bs, q, -(-max(seqs) // PAGE_SIZE) * PAGE_SIZE)
            fill_uniform(b_bufs, bounded, req_to_token, req_pool_indices, positions, slots)
            b_seed = int(torch.randint(1 << 30, (1,), generator=g))
            for a, b in zip(_step(bounded, caches, torch.Generator().manual_seed(b_seed), bs),
                            _step(want, caches, torch.Generator().manual_seed(b_seed), bs)):
                assert torch.equal(a, b)
        assert torch.equal(plan.positions, want.positions)
        step_seed = int(torch.randint(1 << 30, (1,), generator=g))
        got = _step(plan, caches, torch.Generator().manual_seed(step_seed), bs * q)
        ref = _step(want, caches, torch.Generator().manual_seed(step_seed), bs * q)
        for a, b in zip(got, ref):   # slots, attention output, both caches: bit for bit
            assert torch.equal(a, b)


def test_draft_step_offset_and_detector():
    g = torch.Generator().manual_seed(0)
    req_to_token, _ = _pool(g)
    req_pool_indices, positions, slots = _batch(req_to_token, [2, 3], [40, 100], 1)
    bufs = uniform_buffers(2, 2, CAPACITY_PAGES, TOPK, "cpu")
    plan = bufs.plan(2, 1)
    fill_uniform(bufs, plan, req_to_token, req_pool_indices, positions, slots, step_offset=2)
    assert plan.positions.tolist() == [41, 101] and plan.seq_lens.tolist() == [42, 102]
    with pytest.raises(AssertionError, match="host-syncing"):
        with _NoSync():
            plan.seq_lens.max().item()   # a planted sync is caught



@pytest.mark.parametrize("q", [1, 2], ids=["decode", "verify"])
def test_padding_requests_select_nothing(seed, q):
    """A batch padded as SGLang pads it (forward_batch_info.py _pad_inputs_to_size: request 0, position 0,
    slot 0 -- the pools' reserved padding row and slot): the padding rows get position -1 and seq_len 0, select
    no keys and give a zero output; the real requests' slots and outputs equal those of the unpadded batch."""
    g = torch.Generator().manual_seed(seed)
    req_to_token, pool_pages = _pool(g)
    req_to_token += PAGE_SIZE                             # page 0 is SGLang's padding page: no request owns it
    req_to_token[0] = 0                                   # its padding request row: every position at slot 0
    caches = _caches(g, pool_pages + 1)
    reqs, seqs, pad = [3, 5], [40, 150], 2
    req_pool_indices, positions, slots = _batch(req_to_token, reqs, seqs, q)
    n, bs = 2 * q, 2 + pad
    t = bs * q
    real_bufs = uniform_buffers(2, n, CAPACITY_PAGES, TOPK, "cpu")
    real = real_bufs.plan(2, q)
    fill_uniform(real_bufs, real, req_to_token, req_pool_indices, positions, slots)
    padded_slots = torch.cat([slots, slots.new_zeros(t - n)])
    padded_bufs = uniform_buffers(bs, t, CAPACITY_PAGES, TOPK, "cpu")
    padded = padded_bufs.plan(bs, q)
    with _NoSync():
        fill_uniform(padded_bufs, padded, req_to_token, torch.cat([req_pool_indices, req_pool_indices.new_zeros(pad)]),
                     torch.cat([positions, positions.new_zeros(t - n)]), padded_slots)
    assert padded.positions[n:].eq(-1).all() and padded.seq_lens[2:].eq(0).all() and padded.topk_length[n:].eq(0).all()
    k = torch.randn(t, 128, generator=g)
    q_fp8, q_scale = indexer.indexer_quant(torch.randn(t, H_I, 128, generator=g))
    w = (torch.randn(t, H_I, generator=g) * q_scale).float()
    q576 = torch.randn(t, H, sparse_mla.HEAD_576, generator=g).bfloat16()
    kv_c, k_pe = torch.randn(t, 512, generator=g).bfloat16(), torch.randn(t, 64, generator=g).bfloat16()
    outs = []
    for plan, rows in ((padded, t), (real, n)):
        icache, mcache = (c.clone() for c in caches)
        sel = dsa.select(plan, k[:rows], q_fp8[:rows], w[:rows], icache, TOPK)
        outs.append((sel, dsa.attend(plan, q576[:rows], kv_c[:rows], k_pe[:rows], mcache, sel, 0.1, 512)))
    (got_sel, got_out), (want_sel, want_out) = outs
    assert got_sel[n:].eq(-1).all(), "padding rows selected keys"
    assert got_out[n:].eq(0).all(), "padding rows attended to something"
    assert torch.equal(got_sel[:n], want_sel) and torch.equal(got_out[:n], want_out)
