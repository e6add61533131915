"""CUDA extension ops vs the plain-PyTorch references (deepseek_v32_plugin.ops.*.naive), on a GPU.

Skipped without CUDA. On a CUDA machine a failed JIT build fails these tests (it does not skip them).
Every test draws fresh random inputs (the `seed` fixture prints the seed). Covers: -1 indices, rows with
no valid index, topk > window, heads not a multiple of 16, N not a multiple of 128, unaligned expert rows,
masked_m = 0, CUDA-graph capture and torch.compile through the dispatcher ops.
"""
from __future__ import annotations

import os

import pytest
import torch

from deepseek_v32_plugin.ops.fp8_moe import naive as moe_ref
from deepseek_v32_plugin.ops.fp8_quant.naive import FP8_DTYPE, naive_fp8_quant_act, naive_fp8_quant_weight
from deepseek_v32_plugin.ops.indexer import naive as ix
from deepseek_v32_plugin.ops.sparse_mla import naive as mla

pytestmark = pytest.mark.gpu
DEV = "cuda"


@pytest.fixture(scope="module")
def cuda_ext():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from deepseek_v32_plugin.ops import _cuda
    assert _cuda.is_available(), f"CUDA extension unavailable on a CUDA machine: {_cuda.unavailable_reason()}"
    return _cuda


def _same_inf(a, b):
    assert torch.equal(torch.isinf(a), torch.isinf(b)), "-inf positions differ"


# ----------------------------------------------------------------- indexer ----

@pytest.fixture(params=["auto", "sm80"])
def indexer_path(request, monkeypatch):
    """auto = the sm_90a wgmma kernels on Hopper (when built), the mma.sync ones elsewhere; sm80 forces those."""
    if request.param == "sm80":
        monkeypatch.setenv("DSV32_CUDA_INDEXER", "sm80")
    return request.param


def _paged_cache(lens, pages_per_seq, heads_dim=128):
    b = len(lens)
    n_pages = b * pages_per_seq + 3
    cache = torch.zeros(n_pages, ix.PAGE, ix.BYTES_PER_TOKEN, dtype=torch.uint8, device=DEV)
    table = torch.randperm(n_pages, device=DEV)[: b * pages_per_seq].view(b, pages_per_seq).int()
    for i, n in enumerate(lens):
        if n == 0:
            continue
        pos = torch.arange(n, device=DEV)
        slots = table[i, pos // ix.PAGE].long() * ix.PAGE + pos % ix.PAGE
        k_fp8, k_scale = ix.naive_indexer_quant(torch.randn(n, heads_dim, device=DEV))
        ix.naive_indexer_cache_write(k_fp8, k_scale, cache, slots)
    return cache, table


@pytest.mark.parametrize("next_n,heads", [(1, 64), (2, 64), (4, 32), (1, 128), (2, 20)], ids=lambda v: str(v))
def test_paged_indexer_logits(cuda_ext, seed, indexer_path, next_n, heads):
    lens = [0, 1, 63, 64, 65, 700, 2049][:5] + [int(torch.randint(next_n, 3000, ()).item())]
    lens = [max(n, next_n) if n else 0 for n in lens]
    pps = -(-max(lens) // ix.PAGE) + 1
    cache, table = _paged_cache(lens, pps)
    b = len(lens)
    q_fp8, q_scale = ix.naive_indexer_quant(torch.randn(b, next_n, heads, 128, device=DEV))
    w = torch.randn(b * next_n, heads, device=DEV) * q_scale.view(b * next_n, heads)
    ctx = torch.tensor(lens, dtype=torch.int32, device=DEV)
    max_len = pps * ix.PAGE - 5
    ref = ix.naive_fp8_paged_indexer_logits(q_fp8, cache, w, ctx, table, max_len)
    got = cuda_ext.fp8_paged_indexer_logits(q_fp8, cache, w, ctx, table, max_len)
    _same_inf(got, ref)
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("h", [64, 20, 128])
def test_ragged_indexer_logits(cuda_ext, seed, indexer_path, h):
    s, n = 37, 333
    q_fp8, q_scale = ix.naive_indexer_quant(torch.randn(s, h, 128, device=DEV))
    k_fp8, k_scale = ix.naive_indexer_quant(torch.randn(n, 128, device=DEV))
    w = torch.randn(s, h, device=DEV) * q_scale
    ks = torch.randint(0, n // 2, (s,), device=DEV, dtype=torch.int32)
    ke = (ks + torch.randint(0, n // 2, (s,), device=DEV, dtype=torch.int32)).clamp_max(n)
    ke[0] = ks[0]  # empty window
    ref = ix.naive_fp8_indexer_logits(q_fp8, k_fp8, k_scale, w, ks, ke)
    got = cuda_ext.fp8_indexer_logits(q_fp8, k_fp8, k_scale, w, ks, ke)
    _same_inf(got, ref)
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n,topk", [(100, 2048), (4096, 2048), (163840, 2048), (5000, 512), (70000, 1000)],
                         ids=lambda v: str(v))
def test_indexer_topk(cuda_ext, seed, n, topk):
    r = 6
    logits = torch.randn(r, n, device=DEV)
    logits[1] = torch.randint(-4, 4, (n,), device=DEV).float()    # heavy ties
    logits[2, : n // 3] = float("-inf")
    logits[5] = 1.0 + torch.rand(n, device=DEV)                      # one top byte: candidate overflow path
    ks = torch.randint(0, max(1, n // 4), (r,), device=DEV, dtype=torch.int32)
    ke = torch.full((r,), n, device=DEV, dtype=torch.int32)
    ke[3] = ks[3] + min(topk // 2, n - int(ks[3]))                   # window shorter than topk
    ke[4] = ks[4]                                                    # empty window
    ref = ix.naive_indexer_topk(logits, topk, ks, ke)
    got = cuda_ext.indexer_topk(logits, topk, ks, ke)
    assert got.shape == ref.shape and got.dtype == torch.int32
    assert torch.equal(got < 0, ref < 0), "different counts of valid indices"
    valid = got >= 0
    pos = got.long().clamp_min(0) + ks[:, None].long()
    vals = torch.where(valid, torch.gather(logits, 1, pos), torch.zeros_like(logits[:, :1]))
    refv = torch.where(valid, torch.gather(logits, 1, ref.long().clamp_min(0) + ks[:, None].long()),
                       torch.zeros_like(logits[:, :1]))
    torch.testing.assert_close(vals, refv, rtol=0, atol=0)   # same values, same descending order
    for i in range(r):
        row = got[i][valid[i]]
        assert row.unique().numel() == row.numel(), f"row {i}: duplicate indices"
        assert (row < (ke[i] - ks[i])).all()


# -------------------------------------------------------------- sparse MLA ----

def _mla_cache(fp8: bool, n_tokens: int):
    pages = -(-n_tokens // mla.PAGE) + 1
    if fp8:
        cache = torch.zeros(pages, mla.PAGE, mla.FP8_BYTES, dtype=torch.uint8, device=DEV)
    else:
        cache = torch.zeros(pages, mla.PAGE, mla.HEAD_576, dtype=torch.bfloat16, device=DEV)
    slots = torch.randperm(pages * mla.PAGE, device=DEV)[:n_tokens]
    mla.naive_mla_cache_write(torch.randn(n_tokens, 512, device=DEV), torch.randn(n_tokens, 64, device=DEV),
                              cache, slots)
    return cache, slots


@pytest.fixture(params=["auto", "sm80"])
def mla_path(request, monkeypatch):
    if request.param == "sm80":
        monkeypatch.setenv("DSV32_CUDA_MLA", "sm80")
    return request.param


@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "bf16"])
@pytest.mark.parametrize("b,s_q,h,topk", [(2, 1, 16, 64), (1, 2, 128, 2048), (3, 1, 20, 100), (1, 1, 64, 31)],
                         ids=lambda v: str(v))
def test_sparse_mla_decode(cuda_ext, seed, mla_path, fp8, b, s_q, h, topk):
    n_tok = max(topk * 2, 300)
    cache, slots = _mla_cache(fp8, n_tok)
    q = (torch.randn(b, s_q, h, 576, device=DEV) * 0.5).to(torch.bfloat16)
    idx = slots[torch.randint(0, n_tok, (b, s_q, topk), device=DEV)].int()
    idx[torch.rand(idx.shape, device=DEV) < 0.2] = -1
    idx[0, 0] = -1                                   # a row with no valid key: out 0, lse -inf
    scale = 576 ** -0.5
    out, lse = cuda_ext.sparse_mla_decode(q, cache, idx, scale)
    ref_out, ref_lse = mla.naive_sparse_mla_decode(q, cache, idx, scale)
    assert out.dtype == torch.bfloat16 and out.shape == (b, s_q, h, 512)
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=2e-2, atol=2e-2)
    _same_inf(lse, ref_lse)
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], rtol=1e-3, atol=1e-3)
    assert (out[0, 0] == 0).all()


# ---------------------------------------------------------- grouped GEMM ----

def _weights(g, n, k):
    w = torch.randn(g, n, k, device=DEV) * 0.05
    qs = [naive_fp8_quant_weight(w[i]) for i in range(g)]
    return torch.stack([a for a, _ in qs]), torch.stack([s for _, s in qs])


@pytest.fixture(params=["auto", "sm80"])
def gemm_path(request, monkeypatch):
    if request.param == "sm80":
        monkeypatch.setenv("DSV32_CUDA_GEMM", "sm80")
    return request.param


@pytest.mark.parametrize("layout", ["aligned", "unaligned"])
@pytest.mark.parametrize("g,n,k", [(4, 256, 512), (3, 320, 384), (8, 4096, 7168)], ids=lambda v: str(v))
def test_grouped_gemm_contiguous(cuda_ext, seed, gemm_path, layout, g, n, k):
    b, b_scale = _weights(g, n, k)
    if layout == "aligned":  # each expert's rows contiguous, padded to 128 with -1
        counts = torch.randint(0, 300, (g,)).tolist()
        ids = []
        for e, c in enumerate(counts):
            ids += [e] * c + [-1] * ((-c) % 128)
        m_indices = torch.tensor(ids or [-1], dtype=torch.int32, device=DEV)
    else:
        m_indices = torch.randint(-1, g, (517,), dtype=torch.int32, device=DEV)
    m = m_indices.numel()
    a, a_scale = naive_fp8_quant_act(torch.randn(m, k, device=DEV))
    ref = moe_ref.naive_fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, torch.float32)
    got = cuda_ext.fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, torch.float32)
    ok = m_indices >= 0                       # padding rows are not written (no zero-fill)
    torch.testing.assert_close(got[ok], ref[ok], rtol=1e-4, atol=1e-4)
    got16 = cuda_ext.fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, torch.bfloat16)
    torch.testing.assert_close(got16.float()[ok], ref[ok], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("g,m,n,k", [(3, 200, 256, 512), (4, 64, 384, 256), (2, 1000, 2048, 7168)],
                         ids=lambda v: str(v))
def test_grouped_gemm_masked(cuda_ext, seed, gemm_path, g, m, n, k):
    b, b_scale = _weights(g, n, k)
    a, a_scale = naive_fp8_quant_act(torch.randn(g, m, k, device=DEV))
    masked_m = torch.randint(0, m + 1, (g,), dtype=torch.int32, device=DEV)
    masked_m[0] = 0
    ref = moe_ref.naive_fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, torch.float32)
    got = cuda_ext.fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, torch.float32)
    for gi in range(g):                       # rows past masked_m are not written (no zero-fill)
        torch.testing.assert_close(got[gi, :masked_m[gi]], ref[gi, :masked_m[gi]], rtol=1e-4, atol=1e-4)


def test_sm90_gemm_is_used_on_hopper(cuda_ext):
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("Hopper only")
    assert torch.ops.dsv32.has_sm90_gemm(), "built without the sm_90a wgmma GEMM (CuTe headers or 9.0a arch missing)"
    assert torch.ops.dsv32.has_sm90_indexer() and torch.ops.dsv32.has_sm90_mla()


# ------------------------------------------------ dispatcher integration ----

def test_dispatch_reaches_cuda(cuda_ext, seed):
    from deepseek_v32_plugin.ops import indexer
    logits = torch.randn(4, 5000, device=DEV)
    got = indexer.indexer_topk(logits, 2048, backend="cuda")
    ref = indexer.indexer_topk(logits, 2048, backend="torch")
    torch.testing.assert_close(torch.gather(logits, 1, got.long()), torch.gather(logits, 1, ref.long()))


def test_cuda_graph_capture(cuda_ext, seed):
    cache, slots = _mla_cache(True, 4096)
    q = torch.randn(2, 1, 64, 576, device=DEV).to(torch.bfloat16)
    logits = torch.randn(2, 4096, device=DEV)
    ks = torch.zeros(2, dtype=torch.int32, device=DEV)
    ke = torch.full((2,), 4096, dtype=torch.int32, device=DEV)
    def step():
        pos = torch.ops.dsv32.indexer_topk(logits, 2048, ks, ke)
        idx = torch.where(pos >= 0, slots[pos.long().clamp_min(0)].int(), pos).view(2, 1, 2048)
        return torch.ops.dsv32.sparse_mla_decode(q, cache, idx, 0.04)
    eager = step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up on the capture stream
        with torch.cuda.graph(graph, stream=s):
            captured = step()
    torch.cuda.current_stream().wait_stream(s)
    logits.copy_(torch.randn_like(logits))
    graph.replay()
    fresh = step()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured[0], fresh[0])
    assert not torch.equal(captured[0], eager[0])


def test_torch_compile_fullgraph(cuda_ext, seed):
    logits = torch.randn(3, 3000, device=DEV)
    ks = torch.zeros(3, dtype=torch.int32, device=DEV)
    ke = torch.full((3,), 3000, dtype=torch.int32, device=DEV)

    @torch.compile(fullgraph=True)
    def f(x):
        return torch.ops.dsv32.indexer_topk(x * 2.0, 256, ks, ke)

    got = f(logits)
    ref = torch.ops.dsv32.indexer_topk(logits * 2.0, 256, ks, ke)
    torch.testing.assert_close(torch.gather(logits, 1, got.long()), torch.gather(logits, 1, ref.long()))


# ------------------------------------------------- quantization + cache writes ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("ue8m0", [True, False])
def test_fp8_quant_act_bit_exact(cuda_ext, seed, dtype, ue8m0):
    x = (torch.randn(3, 37, 512, device=DEV) * torch.exp2(torch.randint(-6, 6, (3, 37, 1), device=DEV).float())).to(dtype)
    q, s = cuda_ext.fp8_quant_act(x, 128, ue8m0)
    rq, rs = naive_fp8_quant_act(x, 128, ue8m0)
    assert torch.equal(s, rs)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


def test_silu_and_mul_fp8_quant(cuda_ext, seed):
    x = torch.randn(45, 2 * 384, device=DEV).to(torch.bfloat16)
    q, s = cuda_ext.silu_and_mul_fp8_quant(x)
    rq, rs = moe_ref.naive_silu_and_mul_fp8_quant(x)
    assert torch.equal(s, rs)
    # expf vs torch's silu may differ by an ulp: a rare neighbouring fp8 code, never more
    diff = (q.float() - rq.float()).abs() / rq.float().abs().clamp_min(2.0 ** -6)
    assert (q.view(torch.uint8) != rq.view(torch.uint8)).float().mean() < 0.01
    assert diff.max() <= 0.13


def test_indexer_quant_and_cache(cuda_ext, seed):
    t = 300
    k = torch.randn(t, 128, device=DEV)
    q, s = cuda_ext.indexer_quant(k, True)
    rq, rs = ix.naive_indexer_quant(k, True)
    # FWHT vs matmul summation order: scales agree, codes at most one step apart, rarely
    assert (s == rs).float().mean() > 0.99
    same_scale = (s == rs)
    qa, ra = q[same_scale].float(), rq[same_scale].float()
    assert ((qa - ra).abs() <= ra.abs() * 0.13 + 2.0 ** -9).all()
    assert (q.view(torch.uint8) != rq.view(torch.uint8)).float().mean() < 0.01
    q0, s0 = cuda_ext.indexer_quant(k, False)
    r0, rs0 = ix.naive_indexer_quant(k, False)
    assert torch.equal(s0, rs0) and torch.equal(q0.view(torch.uint8), r0.view(torch.uint8))

    pages = 8
    slots = torch.randperm(pages * 64, device=DEV)[:t]
    slots[::17] = -1
    cache = torch.zeros(pages, 64, 132, dtype=torch.uint8, device=DEV)
    cuda_ext.indexer_k_quant_and_cache(k, cache, slots)
    keep = slots >= 0
    gk, gs = ix.naive_indexer_cache_gather(cache, slots[keep])
    assert torch.equal(gk.view(torch.uint8), q[keep].view(torch.uint8)) and torch.equal(gs, s[keep])
    cache2 = torch.zeros_like(cache)
    cuda_ext.indexer_cache_write(rq, rs, cache2, slots.int())
    ref = torch.zeros_like(cache)
    ix.naive_indexer_cache_write(rq, rs, ref, slots)
    assert torch.equal(cache2, ref)


def test_indices_to_slots(cuda_ext, seed):
    r, kk, mp = 9, 300, 40
    table = torch.randint(0, 1000, (r, mp), dtype=torch.int32, device=DEV)
    idx = torch.randint(-1, mp * 64, (r, kk), dtype=torch.int32, device=DEV)
    assert torch.equal(cuda_ext.indices_to_slots(idx, table, 64), ix.naive_indices_to_slots(idx, table, 64))


@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mla_cache_write_bit_exact(cuda_ext, seed, fp8, dtype):
    t, pages = 150, 4
    kv_c = (torch.randn(t, 512, device=DEV) * 3).to(dtype)
    k_pe = torch.randn(t, 64, device=DEV).to(dtype)
    slots = torch.randperm(pages * 64, device=DEV)[:t]
    slots[::7] = -1
    shape = (pages, 64, 656 if fp8 else 576)
    dt = torch.uint8 if fp8 else torch.bfloat16
    got, ref = torch.zeros(shape, dtype=dt, device=DEV), torch.zeros(shape, dtype=dt, device=DEV)
    cuda_ext.mla_cache_write(kv_c, k_pe, got, slots)
    mla.naive_mla_cache_write(kv_c, k_pe, ref, slots)
    assert torch.equal(got.view(torch.uint8) if not fp8 else got, ref.view(torch.uint8) if not fp8 else ref)


def test_dense_fp8_gemm(cuda_ext, seed):
    from deepseek_v32_plugin.ops.fp8_quant.naive import naive_fp8_gemm_nt
    a, a_s = naive_fp8_quant_act(torch.randn(77, 512, device=DEV))
    b, b_s = naive_fp8_quant_weight(torch.randn(300, 512, device=DEV) * 0.05)
    got = cuda_ext.fp8_gemm_nt(a, a_s, b, b_s, torch.float32)
    torch.testing.assert_close(got, naive_fp8_gemm_nt(a, a_s, b, b_s, torch.float32), rtol=1e-4, atol=1e-4)


# ------------------------------------------- gather, bound checks, big grids ----

@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_indexer_cache_gather(cuda_ext, seed, dtype):
    pages, t = 5, 200
    cache = torch.randint(0, 256, (pages, 64, 132), dtype=torch.uint8, device=DEV)
    slots = torch.randperm(pages * 64, device=DEV)[:t].to(dtype)
    k, s = cuda_ext.indexer_cache_gather(cache, slots)
    rk, rs = ix.naive_indexer_cache_gather(cache, slots)
    assert torch.equal(k.view(torch.uint8), rk.view(torch.uint8)) and torch.equal(s.view(torch.int32),
                                                                                   rs.view(torch.int32))
    k0, s0 = cuda_ext.indexer_cache_gather(cache, slots[:0])
    assert k0.shape == (0, 128) and s0.shape == (0,)


@pytest.mark.parametrize("op", ["k_quant_and_cache", "cache_write", "gather", "to_slots", "mla_write", "mla_decode",
                                "paged_logits"])
def test_bound_checks_raise_in_debug_mode(cuda_ext, monkeypatch, op):
    """Out-of-range values never reach memory (masked like -1); with DSV32_CUDA_CHECK_BOUNDS=1 they raise
    an IndexError naming the tensor."""
    pages = 2
    icache = torch.zeros(pages, 64, 132, dtype=torch.uint8, device=DEV)
    mcache = torch.zeros(pages, 64, 656, dtype=torch.uint8, device=DEV)
    bad = torch.tensor([3, pages * 64 + 5], dtype=torch.int32, device=DEV)
    k = torch.randn(2, 128, device=DEV)
    calls = {
        "k_quant_and_cache": ("slot_mapping", lambda: cuda_ext.indexer_k_quant_and_cache(k, icache, bad)),
        "cache_write": ("slot_mapping", lambda: cuda_ext.indexer_cache_write(
            *ix.naive_indexer_quant(k), icache, bad)),
        "gather": ("slots", lambda: cuda_ext.indexer_cache_gather(icache, bad)),
        "to_slots": ("indices", lambda: cuda_ext.indices_to_slots(
            torch.tensor([[5, 64 * 3]], dtype=torch.int32, device=DEV), torch.zeros(1, 2, dtype=torch.int32,
                                                                                      device=DEV), 64)),
        "mla_write": ("slot_mapping", lambda: cuda_ext.mla_cache_write(
            torch.randn(2, 512, device=DEV), torch.randn(2, 64, device=DEV), mcache, bad)),
        "mla_decode": ("indices", lambda: cuda_ext.sparse_mla_decode(
            torch.randn(1, 1, 16, 576, device=DEV).bfloat16(), mcache, bad.view(1, 1, 2), 0.1)),
        "paged_logits": ("block_table", lambda: cuda_ext.fp8_paged_indexer_logits(
            ix.naive_indexer_quant(torch.randn(1, 1, 64, 128, device=DEV))[0], icache,
            torch.randn(1, 64, device=DEV), torch.tensor([100], dtype=torch.int32, device=DEV),
            torch.tensor([[0, pages + 7]], dtype=torch.int32, device=DEV), 128)),
    }
    name, call = calls[op]
    monkeypatch.delenv("DSV32_CUDA_CHECK_BOUNDS", raising=False)
    call()                      # masked, no error, no illegal address
    torch.cuda.synchronize()
    monkeypatch.setenv("DSV32_CUDA_CHECK_BOUNDS", "1")
    with pytest.raises(IndexError, match=name):
        call()
    torch.cuda.synchronize()    # the context is still usable


def test_sparse_mla_decode_rows_past_65535(cuda_ext, seed, mla_path):
    """b * s_q > 65535 query rows: the 1-D grid serves them (a rows grid axis would stop at 65535)."""
    rows, h, topk = 65536 + 300, 16, 8
    cache, slots = _mla_cache(False, 256)
    q = (torch.randn(rows, 1, h, 576, device=DEV) * 0.5).to(torch.bfloat16)
    idx = slots[torch.randint(0, 256, (rows, 1, topk), device=DEV)].int()
    out, lse = cuda_ext.sparse_mla_decode(q, cache, idx, 576 ** -0.5)
    tail = slice(rows - 400, rows)  # check the rows past the old limit against the reference
    ref_out, ref_lse = mla.naive_sparse_mla_decode(q[tail], cache, idx[tail], 576 ** -0.5)
    torch.testing.assert_close(out[tail].float(), ref_out.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse[tail], ref_lse, rtol=1e-3, atol=1e-3)
