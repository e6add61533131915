"""The torch backend the engines run on CPU (ops/<family>/blocked.py) against the naive references, with
blocks forced small so every op runs over many blocks, and topk_length semantics (issue 15: attend over
what is really there). Small shapes; the seed comes from the test id (conftest)."""
import pytest
import torch

from deepseek_v32_plugin.model.indexer import ascending
from deepseek_v32_plugin.ops import indexer, sparse_mla
from deepseek_v32_plugin.ops.indexer import blocked as ix_blocked
from deepseek_v32_plugin.ops.indexer import naive as ix_naive
from deepseek_v32_plugin.ops.sparse_mla import blocked as mla_blocked
from deepseek_v32_plugin.ops.sparse_mla import naive as mla_naive

I32 = torch.int32


@pytest.fixture(params=["one_block", "tiny_blocks"])
def blocks(request, monkeypatch):
    if request.param == "tiny_blocks":   # a few rows / keys per block: block edges everywhere
        monkeypatch.setattr(mla_blocked, "BLOCK_BYTES", 40_000)
        monkeypatch.setattr(ix_blocked, "BLOCK_BYTES", 60_000)
        monkeypatch.setattr(ix_blocked, "KEY_BLOCK", 48)
    return request.param


def _mla_cache(fmt, pages):
    if fmt == "bf16":
        return torch.randn(pages, 64, 576).bfloat16()
    cache = torch.zeros(pages, 64, 656, dtype=torch.uint8)
    mla_naive.naive_mla_cache_write(torch.randn(pages * 64, 512), torch.randn(pages * 64, 64), cache,
                                    torch.arange(pages * 64))
    return cache


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_sparse_mla_decode_topk_length(seed, blocks, fmt):
    """Rows of length 0, below / at / above a page, = topk and > topk (clamped); the entries past each row's
    length hold garbage slots (never read) and -1 inside the length is still skipped."""
    pages, topk, h = 4, 80, 3
    cache = _mla_cache(fmt, pages)
    lens = torch.tensor([[0, 1, 63, 64], [65, 80, 200, 17]], dtype=I32)
    b, s_q = lens.shape
    idx = torch.randint(0, pages * 64, (b, s_q, topk), dtype=I32)
    idx[1, 3, 5] = -1
    q = torch.randn(b, s_q, h, 576).bfloat16()
    masked = torch.where(torch.arange(topk)[None, None, :] < lens[..., None], idx, -1)
    want = mla_naive.naive_sparse_mla_decode(q, cache, masked, 0.07)
    ref = mla_naive.naive_sparse_mla_decode(q, cache, idx, 0.07, topk_length=lens)
    got = sparse_mla.sparse_mla_decode(q, cache, idx, 0.07, topk_length=lens, backend="torch")
    for a, w in ((ref, want), (got, want)):   # same math, sums in another order: fp32 ulps (bf16 out: 1 ulp)
        torch.testing.assert_close(a[0], w[0])
        torch.testing.assert_close(a[1], w[1], rtol=1e-6, atol=1e-6)
    assert (got[0][0, 0] == 0).all() and torch.isinf(got[1][0, 0]).all()


def test_sparse_mla_decode_blocked_equals_naive_without_lengths(seed, blocks):
    cache = _mla_cache("bf16", 3)
    idx = torch.randint(-1, 3 * 64, (2, 5, 33), dtype=I32)
    q = torch.randn(2, 5, 4, 576).bfloat16()
    got = sparse_mla.sparse_mla_decode(q, cache, idx, 0.1, backend="torch")
    want = mla_naive.naive_sparse_mla_decode(q, cache, idx, 0.1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sparse_mla_prefill_topk_length(seed, blocks):
    s_kv, s_q, h, topk = 150, 9, 4, 70
    kv = torch.randn(s_kv, 1, 576).bfloat16()
    idx = torch.randint(-1, s_kv, (s_q, 1, topk), dtype=I32)
    lens = torch.tensor([0, 1, 5, 64, 65, 69, 70, 90, 33], dtype=I32)
    q = torch.randn(s_q, h, 576).bfloat16()
    masked = torch.where(torch.arange(topk)[None, None, :] < lens[:, None, None], idx, -1)
    want = mla_naive.naive_sparse_mla_prefill(q, kv, masked, 0.1)
    for be in ("torch", None):
        got = (sparse_mla.sparse_mla_prefill(q, kv, idx, 0.1, topk_length=lens, backend=be) if be else
               mla_naive.naive_sparse_mla_prefill(q, kv, idx, 0.1, topk_length=lens))
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)


def test_topk_length_is_checked():
    cache = torch.zeros(1, 64, 576, dtype=torch.bfloat16)
    q, idx = torch.randn(1, 2, 2, 576), torch.zeros(1, 2, 4, dtype=I32)
    with pytest.raises(ValueError, match="topk_length has shape"):
        sparse_mla.sparse_mla_decode(q, cache, idx, 0.1, topk_length=torch.zeros(2, dtype=I32))
    with pytest.raises(TypeError, match="topk_length.dtype"):
        sparse_mla.sparse_mla_decode(q, cache, idx, 0.1, topk_length=torch.zeros(1, 2, dtype=torch.long))


def _index_cache(pages):
    cache = torch.zeros(pages, 64, indexer.BYTES_PER_TOKEN, dtype=torch.uint8)
    ix_naive.naive_indexer_k_quant_and_cache(torch.randn(pages * 64, 128), cache, torch.arange(pages * 64))
    return cache


def test_ragged_logits_blocked_equal_naive(seed, blocks):
    s, h, n = 11, 8, 200
    q_fp8, _ = ix_naive.naive_indexer_quant(torch.randn(s, h, 128))
    k_fp8, k_scale = ix_naive.naive_indexer_quant(torch.randn(n, 128))
    w = torch.randn(s, h)
    ks = torch.tensor([0, 0, 5, 64, 100, 100, 100, 150, 0, 199, 7], dtype=I32)
    ke = torch.tensor([1, 64, 70, 65, 200, 101, 100, 200, 200, 200, 7], dtype=I32)
    got = indexer.fp8_indexer_logits(q_fp8, k_fp8, k_scale, w, ks, ke, backend="torch")
    want = ix_naive.naive_fp8_indexer_logits(q_fp8, k_fp8, k_scale, w, ks, ke)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("next_n", [1, 2])
def test_paged_logits_blocked_equal_naive(seed, blocks, next_n):
    pages, b, h = 9, 3, 4
    cache = _index_cache(pages)
    table = torch.randperm(pages).int().view(b, 3)
    table[0, 2] = -1                        # past request 0's context: never read
    ctx = torch.tensor([64 + next_n, 3 * 64, next_n], dtype=I32)
    q_fp8, _ = ix_naive.naive_indexer_quant(torch.randn(b, next_n, h, 128))
    w = torch.randn(b * next_n, h)
    got = indexer.fp8_paged_indexer_logits(q_fp8, cache, w, ctx, table, 3 * 64, backend="torch")
    want = ix_naive.naive_fp8_paged_indexer_logits(q_fp8, cache, w, ctx, table.clamp_min(0), 3 * 64)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_topk_blocked_selects_what_naive_selects(seed, blocks):
    r, n, topk = 7, 130, 32
    logits = torch.randn(r, n)
    logits[2, 40:50] = float("-inf")        # -inf inside a window that must take some of them
    ks = torch.tensor([0, 0, 40, 10, 0, 100, 5], dtype=I32)
    ke = torch.tensor([130, 20, 60, 42, 0, 130, 5 + 32], dtype=I32)
    got = indexer.indexer_topk(logits, topk, ks, ke, backend="torch")
    want = ix_naive.naive_indexer_topk(logits, topk, ks, ke)
    # distinct finite scores: one answer (the -inf ties of row 2 are all taken, in any order)
    assert torch.equal(ascending(got), ascending(want))
    assert torch.equal(got[[0, 1, 3, 4, 5, 6]], want[[0, 1, 3, 4, 5, 6]])


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_sparse_mla_shared_key_blocks(seed, blocks, fmt, monkeypatch):
    """What the engines send: a prefill chunk whose rows select all of a short context (ascending positions,
    topk_length = position + 1) and rows above top-k selecting distinct subsets of the same context; the
    blocks take the shared-key path (checked) and equal the per-row reference."""
    pages, topk, h, t = 3, 96, 4, 40
    cache = _mla_cache(fmt, pages)
    table = torch.tensor([2, 0, 1])
    pos = torch.arange(150, 150 + t) - 110 * (torch.arange(t) < 20)      # 20 rows at 40..59, 20 at 170..189
    lens = (pos + 1).clamp(max=topk).int()
    idx = torch.full((t, topk), -1, dtype=I32)
    for r in range(t):
        chosen = torch.arange(int(pos[r]) + 1) if pos[r] < topk else torch.randperm(int(pos[r]) + 1)[:topk].sort().values
        idx[r, : len(chosen)] = (table[chosen // 64] * 64 + chosen % 64).int()
    q = torch.randn(1, t, h, 576).bfloat16()
    monkeypatch.setattr(mla_blocked, "SHARED_MAX", 2)   # the opt-in path (DSV32_TORCH_SHARED_KEYS=1)
    calls = []
    real = mla_blocked._shared
    monkeypatch.setattr(mla_blocked, "_shared", lambda *a: calls.append(real(*a) is not None) or real(*a))
    got = sparse_mla.sparse_mla_decode(q, cache, idx[None], 0.07, topk_length=lens[None], backend="torch")
    want = mla_naive.naive_sparse_mla_decode(q, cache, idx[None], 0.07)
    assert calls and all(calls)
    # fp32 sums in another order: lse to fp32 ulps; out (bf16) may round a few elements the other way (1 ulp)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_sparse_mla_rows_do_not_depend_on_their_batch(seed, blocks, fmt, monkeypatch):
    """Bit-level: a row's output and lse do not depend on which rows share its call (engines batch rows of
    many requests, the reference model runs one sequence; bf16 engine checks compare them bit for bit).
    A prefill chunk below top-k (positions 0..p of one request: the shared-gather path), its rows above top-k,
    decode rows of other requests and an MTP-verify pair, in one call vs each request alone vs each row alone."""
    pages, topk, h = 8, 150, 4
    cache = _mla_cache(fmt, pages)
    perm = torch.randperm(pages)
    reqs = [(perm[:4], torch.arange(0, 200)), (perm[4:6], torch.tensor([97])),
            (perm[6:8], torch.tensor([63, 64])), (perm[4:6], torch.tensor([5]))]
    rows_idx, rows_len, owner = [], [], []
    for i, (table, pos) in enumerate(reqs):
        for p in pos.tolist():
            chosen = (torch.arange(p + 1) if p < topk else
                      torch.randperm(p + 1)[:topk].sort().values)
            row = torch.full((topk,), -1, dtype=I32)
            row[: len(chosen)] = (table[chosen // 64] * 64 + chosen % 64).int()
            rows_idx.append(row), rows_len.append(min(p + 1, topk)), owner.append(i)
    idx, lens, owner = torch.stack(rows_idx), torch.tensor(rows_len, dtype=I32), torch.tensor(owner)
    q = torch.randn(1, len(owner), h, 576).bfloat16()
    calls = []
    real = mla_blocked._attend_common
    monkeypatch.setattr(mla_blocked, "_attend_common", lambda *a: calls.append(a[0].shape[0]) or real(*a))

    def run(sel):
        return sparse_mla.sparse_mla_decode(q[:, sel], cache, idx[None, sel], 0.07,
                                            topk_length=lens[None, sel], backend="torch")
    every = run(torch.arange(len(owner)))
    assert calls and max(calls) > 1            # the prefill rows below top-k took the shared gather
    want = mla_naive.naive_sparse_mla_decode(q, cache, idx[None], 0.07, topk_length=lens[None])
    torch.testing.assert_close(every[0], want[0])
    torch.testing.assert_close(every[1], want[1], rtol=1e-6, atol=1e-5)
    for i in range(len(reqs)):
        sel = (owner == i).nonzero().squeeze(1)
        alone = run(sel)
        assert torch.equal(alone[0], every[0][:, sel]) and torch.equal(alone[1], every[1][:, sel]), f"request {i}"
    for r in (0, 1, 63, 64, 127, 160, 199, 200, 201, 202):
        one = run(torch.tensor([r]))
        assert torch.equal(one[0][0, 0], every[0][0, r]) and torch.equal(one[1][0, 0], every[1][0, r]), f"row {r}"


def test_fp8_moe_kept_expert_weights(seed, monkeypatch):
    """The torch backend keeps each routed expert's dequantized weight between calls: bit for bit naive.py's
    output on the first and later calls, a copy dropped when the weight changes in place, none past the budget."""
    from deepseek_v32_plugin.ops.fp8_moe import blocked as moe_blocked
    from deepseek_v32_plugin.ops.fp8_moe import naive as moe_naive
    from deepseek_v32_plugin.ops.fp8_quant import naive as q_naive
    g, n, k, m = 4, 256, 256, 10
    b, bs = q_naive.naive_fp8_quant_weight(torch.randn(g * n, k))
    b, bs = b.view(g, n, k), bs.view(g, n // 128, k // 128)
    a, a_s = q_naive.naive_fp8_quant_act(torch.randn(m, k))
    m_idx = torch.tensor([2, 2, 0, -1, 3, 2, 0, -1, 3, 3], dtype=I32)
    monkeypatch.setattr(moe_blocked, "_cache", {})
    monkeypatch.setattr(moe_blocked, "_used", [0])

    def check():
        got = moe_blocked.fp8_grouped_gemm_nt_contiguous(a, a_s, b, bs, m_idx, torch.float32)
        want = moe_naive.naive_fp8_grouped_gemm_nt_contiguous(a, a_s, b, bs, m_idx, torch.float32)
        assert torch.equal(got[m_idx >= 0], want[m_idx >= 0])
    check()
    assert sorted(moe_blocked._cache[id(b)][3]) == [0, 2, 3] and moe_blocked._used[0] == 3 * n * k * 4
    check()                                             # from the kept copies
    b[2].copy_(q_naive.naive_fp8_quant_weight(torch.randn(n, k))[0])   # in place: the copies are stale
    check()
    bs.mul_(2)
    check()
    masked = torch.tensor([3, 0, 1, 2], dtype=I32)
    got = moe_blocked.fp8_grouped_gemm_nt_masked(a[:8].view(4, 2, k), a_s[:8].view(4, 2, -1), b, bs,
                                                 masked.clamp(max=2), torch.float32)
    want = moe_naive.naive_fp8_grouped_gemm_nt_masked(a[:8].view(4, 2, k), a_s[:8].view(4, 2, -1), b, bs,
                                                      masked.clamp(max=2), torch.float32)
    assert torch.equal(got, want)
    monkeypatch.setattr(moe_blocked, "_cache", {})
    monkeypatch.setattr(moe_blocked, "_used", [0])
    monkeypatch.setattr(moe_blocked, "CACHE_BYTES", 2 * n * k * 4)      # room for two experts' copies
    check()
    assert len(moe_blocked._cache[id(b)][3]) == 2 and moe_blocked._used[0] == 2 * n * k * 4


def test_indexer_cache_gather_rows_equal_naive(seed):
    """The torch backend reads each key's bytes as rows of the pages: the same bytes as the naive gather."""
    cache = _index_cache(3)
    slots = torch.tensor([5, 0, 191, 64, 65, 5, 130], dtype=torch.int64)
    got = ix_blocked.indexer_cache_gather(cache, slots)
    want = ix_naive.naive_indexer_cache_gather(cache, slots)
    assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(got[1], want[1])
    assert got[1].shape == (7,) and got[0].shape == (7, 128)
    wide = torch.zeros(*cache.shape[:2], cache.shape[2] + 8, dtype=torch.uint8)
    wide[..., :cache.shape[2]] = cache                  # a strided cache view: the page-view fallback
    strided = ix_blocked.indexer_cache_gather(wide[..., :cache.shape[2]], slots)
    assert torch.equal(strided[0].view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(strided[1], want[1])
    k_fp8 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    assert torch.equal(ix_blocked._f32(k_fp8), k_fp8.float(), ) or torch.allclose(
        ix_blocked._f32(k_fp8), k_fp8.float(), equal_nan=True, rtol=0, atol=0)   # every e4m3 code, NaNs too


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_mla_cache_rows_equal_naive_gather(seed, fmt):
    cache = _mla_cache(fmt, 2)
    slots = torch.tensor([[3, -1, 127], [-1, -1, 64]], dtype=I32)
    got, want = mla_blocked._cache_rows(cache, slots), mla_naive.naive_mla_cache_gather(cache, slots)
    assert torch.equal(got, want) and got.shape == (2, 3, 576) and (got[slots < 0] == 0).all()
