"""The naive references against independent formulations and hand-checked cases.

Inputs are fresh random tensors every run (no fixed seed): a reference bug that only shows on some
inputs still gets a chance to show. Shapes are small: these run in the light unit venv on CPU.
"""
import math

import pytest
import torch

from deepseek_v32_plugin.ops import fp8_moe, fp8_quant, indexer, sparse_mla
from deepseek_v32_plugin.ops._dispatch import BackendUnavailable, resolve
from deepseek_v32_plugin.ops.fp8_quant.naive import FP8_MAX, fp8_saturate_cast, ue8m0_scale
from deepseek_v32_plugin.ops.indexer.naive import hadamard_matrix

I32 = torch.int32


# ---------------------------------------------------------------- fp8_quant
def test_ue8m0_scale_hand_values():
    amax = torch.tensor([448.0, 449.0, 3.5, 0.0, 1e-6, 896.0])
    want = torch.tensor([1.0, 2.0, 2.0 ** -7, 2.0 ** math.ceil(math.log2(1e-4 / 448)),
                         2.0 ** math.ceil(math.log2(1e-4 / 448)), 2.0])
    assert torch.equal(ue8m0_scale(amax), want)


def test_fp8_cast_saturates_and_keeps_subnormals():
    x = torch.tensor([1000.0, -1e6, 448.0, 2.0 ** -9, 2.0 ** -10 * 1.5, -2.0 ** -7])
    got = fp8_saturate_cast(x).float()
    assert got.tolist()[:3] == [448.0, -448.0, 448.0]
    assert got[3] == 2.0 ** -9                      # smallest e4m3 subnormal survives
    assert got[4] in (2.0 ** -9, 2.0 ** -10 * 2)    # rounds to nearest representable
    assert got[5] == -2.0 ** -7
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("shape", [(1, 128), (7, 384), (3, 5, 256)])
def test_fp8_quant_act_roundtrip(shape):
    x = torch.randn(shape) * torch.rand(shape[:-1] + (1,)) * 100
    q, s = fp8_quant.fp8_quant_act(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == shape[:-1] + (shape[-1] // 128,)
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)          # powers of two
    back = fp8_quant.fp8_dequant_act(q, s)
    g = x.reshape(*shape[:-1], -1, 128)
    # e4m3 has 3 mantissa bits: error <= half an ulp of the group's largest binade (amax/448 * 2^-... bound)
    bound = (s * 448 / 16).repeat_interleave(128, -1).reshape(shape)
    assert ((back - x).abs() <= bound + 1e-12).all()
    assert (q.float().abs().reshape(g.shape).amax(-1) >= 224).all()   # scales use the range


def test_fp8_quant_weight_blocks_and_ragged_edges():
    w = torch.randn(300, 200)
    w[5, 7] = 5000.0                                # one large block forces a large scale there only
    q, s = fp8_quant.fp8_quant_weight(w)
    assert s.shape == (3, 2) and q.shape == w.shape
    assert s[0, 0] >= 5000 / 448 and s[2, 1] < 1
    back = fp8_quant.fp8_dequant_weight(q, s)
    rel = (back - w).abs() / s.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    assert rel.max() <= 448 / 16 + 1e-6


def test_fp8_gemm_nt_matches_dequantized_matmul():
    a, b = torch.randn(5, 256), torch.randn(130, 256)
    aq, as_ = fp8_quant.fp8_quant_act(a)
    bq, bs = fp8_quant.fp8_quant_weight(b)
    got = fp8_quant.fp8_gemm_nt(aq, as_, bq, bs, out_dtype=torch.float32)
    ref = (aq.float().view(5, 2, 128) * as_[..., None]).view(5, 256) @ fp8_quant.fp8_dequant_weight(bq, bs).t()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def test_fp8_gemm_rejects_bad_scale_shape():
    a = torch.randn(4, 256).to(torch.float8_e4m3fn)
    b = torch.randn(128, 256).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="a_scale"):
        fp8_quant.fp8_gemm_nt(a, torch.ones(4, 3), b, torch.ones(1, 2))
    with pytest.raises(TypeError, match="b.dtype"):
        fp8_quant.fp8_gemm_nt(a, torch.ones(4, 2), b.float(), torch.ones(1, 2))


# ---------------------------------------------------------------- indexer
def test_hadamard_is_sylvester_and_orthonormal():
    h = hadamard_matrix(128)
    i = torch.arange(128)
    popcount = torch.tensor([bin(int(v)).count("1") for v in (i[:, None] & i[None, :]).flatten()]).view(128, 128)
    torch.testing.assert_close(h * math.sqrt(128), torch.where(popcount % 2 == 0, 1.0, -1.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(h @ h.t(), torch.eye(128), atol=1e-6, rtol=0)


def test_indexer_quant_preserves_dot_products():
    q, k = torch.randn(6, 128), torch.randn(9, 128)
    qf, qs = indexer.indexer_quant(q)
    kf, ks = indexer.indexer_quant(k)
    approx = (qf.float() * qs[:, None]) @ (kf.float() * ks[:, None]).t()
    exact = q @ k.t()
    assert (approx - exact).abs().max() < 0.1 * exact.abs().max()


def _fill_indexer_cache(n_tok, n_pages=None):
    n_pages = n_pages or -(-n_tok // 64) + 2
    cache = torch.randint(0, 255, (n_pages, 64, 132), dtype=torch.uint8)     # garbage, not zeros
    perm = torch.randperm(n_pages)[: -(-n_tok // 64)].int()                  # scattered pages
    pos = torch.arange(n_tok)
    slots = perm[pos // 64].long() * 64 + pos % 64
    k = torch.randn(n_tok, 128)
    indexer.indexer_k_quant_and_cache(k, cache, slots)
    return cache, perm, slots, k


def test_indexer_cache_byte_layout_by_hand():
    cache = torch.zeros(2, 64, 132, dtype=torch.uint8)
    kf, ks = indexer.indexer_quant(torch.randn(2, 128))
    indexer.indexer_cache_write(kf, ks, cache, torch.tensor([70, -1]))       # page 1, offset 6; second skipped
    page = cache.view(2, 64 * 132)[1]
    assert torch.equal(page[6 * 128: 7 * 128], kf[0].view(torch.uint8))
    assert torch.equal(page[8192 + 24: 8192 + 28].view(torch.float32), ks[:1])
    assert cache.view(2, -1)[0].count_nonzero() == 0
    assert page.count_nonzero() <= 132


def test_indexer_logits_loop_formulation():
    s, h, n = 5, 4, 37
    q_fp8, _ = indexer.indexer_quant(torch.randn(s, h, 128))
    k_fp8, k_scale = indexer.indexer_quant(torch.randn(n, 128))
    w = torch.randn(s, h)
    ks = torch.randint(0, 10, (s,), dtype=I32)
    ke = torch.randint(20, n + 1, (s,), dtype=I32)
    got = indexer.fp8_indexer_logits(q_fp8, k_fp8, k_scale, w, ks, ke)
    for i in range(s):
        for j in range(n):
            if ks[i] <= j < ke[i]:
                want = sum(float(w[i, hh]) * max(0.0, float(q_fp8[i, hh].float() @ k_fp8[j].float()))
                           for hh in range(h)) * float(k_scale[j])
                assert abs(float(got[i, j]) - want) <= 1e-4 * max(1.0, abs(want))
            else:
                assert got[i, j] == float("-inf")


@pytest.mark.parametrize("next_n", [1, 2, 4])
def test_paged_logits_equal_ragged_logits(next_n):
    ctx = [1 + next_n, 64, 65, 150][:4]
    ctx = [max(c, next_n) for c in ctx]
    h = 8
    caches = []
    cache = torch.randint(0, 255, (16, 64, 132), dtype=torch.uint8)
    pages = torch.randperm(16).int()
    tables, off = [], 0
    for c in ctx:
        need = -(-c // 64)
        tables.append(torch.cat([pages[off:off + need], torch.zeros(3 - need, dtype=I32)]))
        pos = torch.arange(c)
        indexer.indexer_k_quant_and_cache(torch.randn(c, 128), cache,
                                          pages[off:off + need][pos // 64].long() * 64 + pos % 64)
        off += need
    table = torch.stack(tables)
    q_fp8, _ = indexer.indexer_quant(torch.randn(len(ctx), next_n, h, 128))
    w = torch.randn(len(ctx) * next_n, h)
    lens = torch.tensor(ctx, dtype=I32)
    got = indexer.fp8_paged_indexer_logits(q_fp8, cache, w, lens, table, max(ctx))
    for b, c in enumerate(ctx):
        pos = torch.arange(c)
        k_fp8, k_s = indexer.indexer_cache_gather(cache, table[b, pos // 64].long() * 64 + pos % 64)
        ke = torch.arange(c - next_n + 1, c + 1, dtype=I32)
        ref = indexer.fp8_indexer_logits(q_fp8[b], k_fp8, k_s, w[b * next_n:(b + 1) * next_n],
                                         torch.zeros(next_n, dtype=I32), ke)
        torch.testing.assert_close(got[b * next_n:(b + 1) * next_n, :c], ref)
        assert torch.isinf(got[b * next_n:(b + 1) * next_n, c:]).all()


def test_topk_hand_case_with_padding():
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0, 9.0, 7.0],
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    got = indexer.indexer_topk(logits, 4, ks=torch.tensor([1, 0], dtype=I32), ke=torch.tensor([4, 2], dtype=I32))
    assert got[0].tolist() == [0, 2, 1, -1]       # columns 1,3,2 relative to ks=1, one pad
    assert got[1].tolist() == [1, 0, -1, -1]


def test_topk_above_and_below_k():
    r, n, k = 6, 300, 32
    logits = torch.randn(r, n)
    ke = torch.tensor([1, 20, 31, 32, 33, 300], dtype=I32)
    got = indexer.indexer_topk(logits, k, ke=ke)
    for i in range(r):
        m = min(k, int(ke[i]))
        sel = got[i, :m].long()
        assert (got[i, m:] == -1).all() and (sel >= 0).all() and (sel < ke[i]).all()
        assert torch.equal(torch.sort(logits[i, sel]).values, torch.sort(logits[i, :ke[i]].topk(m).values).values)



def test_topk_takes_window_minus_inf_not_outside():
    """A window that must take some of its own -inf keys takes positions inside [ks, ke), never the -inf
    columns outside it (which the masked row also holds)."""
    logits = torch.tensor([[5.0, float("-inf"), 1.0, float("-inf"), 7.0, 8.0, 9.0, 10.0]])
    got = indexer.indexer_topk(logits, 4, ks=torch.tensor([1], dtype=I32), ke=torch.tensor([5], dtype=I32))
    assert got[0, :2].tolist() == [3, 1] and sorted(got[0, 2:].tolist()) == [0, 2]

def test_indices_to_slots_keeps_minus_one():
    table = torch.tensor([[5, 2, 9]], dtype=I32).expand(2, -1)
    idx = torch.tensor([[0, 63, 64, 130, -1], [-1, -1, 1, 2, 128]], dtype=I32)
    got = indexer.indices_to_slots(idx, table)
    assert got[0].tolist() == [320, 383, 128, 578, -1]
    assert got[1].tolist() == [-1, -1, 321, 322, 576]


def test_indexer_rejects_bad_cache():
    with pytest.raises(ValueError, match="indexer kv_cache"):
        indexer.indexer_k_quant_and_cache(torch.randn(2, 128), torch.zeros(1, 64, 128, dtype=torch.uint8),
                                          torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="head dim"):
        indexer.indexer_quant(torch.randn(2, 64))


# ---------------------------------------------------------------- sparse MLA
@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_mla_cache_roundtrip_and_layout(fmt):
    pages = 3
    cache = (torch.zeros(pages, 64, 576, dtype=torch.bfloat16) if fmt == "bf16"
             else torch.zeros(pages, 64, 656, dtype=torch.uint8))
    kv_c, k_pe = torch.randn(5, 512) * 3, torch.randn(5, 64)
    slots = torch.tensor([0, 63, 64, 191, -1])
    sparse_mla.mla_cache_write(kv_c, k_pe, cache, slots)
    back = sparse_mla.mla_cache_gather(cache, slots)
    assert (back[4] == 0).all()
    torch.testing.assert_close(back[:4, 512:], k_pe[:4].bfloat16().float())
    tol = 0.01 if fmt == "bf16" else 3 * 0.07
    assert ((back[:4, :512] - kv_c[:4]).abs() <= tol * kv_c[:4].abs().amax(-1, keepdim=True)).all()
    if fmt == "fp8":
        row = cache.view(-1, 656)[191]
        scales = row[512:528].view(torch.float32)
        assert torch.equal(torch.exp2(torch.log2(scales).round()), scales)
        assert torch.equal(row[528:].view(torch.bfloat16), k_pe[3].bfloat16())
        assert torch.equal(row[:128].view(torch.float8_e4m3fn).float() * scales[0], back[3, :128])


def _dense_attention(q, rows, valid, scale):
    """Loop formulation: q [h, 576], rows [k, 576], valid [k] -> out [h, 512], lse [h]."""
    h = q.shape[0]
    out, lse = torch.zeros(h, 512), torch.full((h,), float("-inf"))
    idx = valid.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return out, lse
    for i in range(h):
        s = torch.stack([q[i].float() @ rows[j] for j in idx]) * scale
        m = s.max()
        p = torch.exp(s - m)
        out[i] = (p[:, None] * rows[idx, :512]).sum(0) / p.sum()
        lse[i] = m + torch.log(p.sum())
    return out, lse


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_sparse_mla_decode_loop_formulation(fmt):
    b, s_q, h, topk, pages = 2, 2, 3, 10, 4
    cache = (torch.randn(pages, 64, 576).bfloat16() if fmt == "bf16" else torch.zeros(pages, 64, 656, dtype=torch.uint8))
    if fmt == "fp8":
        sparse_mla.mla_cache_write(torch.randn(pages * 64, 512), torch.randn(pages * 64, 64), cache,
                                   torch.arange(pages * 64))
    idx = torch.randint(0, pages * 64, (b, s_q, topk), dtype=I32)
    idx[0, 0, 3:] = -1
    idx[1, 1, :] = -1                         # a row with nothing valid
    q = torch.randn(b, s_q, h, 576).bfloat16()
    out, lse = sparse_mla.sparse_mla_decode(q, cache, idx, 0.07)
    rows_all = sparse_mla.mla_cache_gather(cache, torch.arange(pages * 64))
    for bi in range(b):
        for si in range(s_q):
            valid = idx[bi, si] >= 0
            rows = rows_all[idx[bi, si].clamp_min(0).long()]
            o, l = _dense_attention(q[bi, si], rows, valid, 0.07)
            torch.testing.assert_close(out[bi, si].float(), o, atol=2e-2, rtol=2e-2)
            torch.testing.assert_close(lse[bi, si], l, atol=1e-3, rtol=1e-4)
    assert (out[1, 1] == 0).all() and torch.isinf(lse[1, 1]).all()


def test_sparse_mla_prefill_equals_decode_on_same_rows():
    s_kv, s_q, h, topk = 80, 6, 4, 16
    kv = torch.randn(s_kv, 1, 576).bfloat16()
    idx = torch.randint(-1, s_kv, (s_q, 1, topk), dtype=I32)
    q = torch.randn(s_q, h, 576).bfloat16()
    out, lse = sparse_mla.sparse_mla_prefill(q, kv, idx, 0.1)
    cache = torch.zeros(2, 64, 576, dtype=torch.bfloat16)
    cache.view(-1, 576)[:s_kv] = kv[:, 0]
    out2, lse2 = sparse_mla.sparse_mla_decode(q[None], cache, idx[:, 0][None], 0.1)
    torch.testing.assert_close(out, out2[0])
    torch.testing.assert_close(lse, lse2[0])


def test_sparse_mla_rejects_bad_inputs():
    cache = torch.zeros(1, 64, 576, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="q last dim"):
        sparse_mla.sparse_mla_decode(torch.randn(1, 1, 2, 512), cache, torch.zeros(1, 1, 4, dtype=I32), 0.1)
    with pytest.raises(TypeError, match="indices.dtype"):
        sparse_mla.sparse_mla_decode(torch.randn(1, 1, 2, 576), cache, torch.zeros(1, 1, 4, dtype=torch.long), 0.1)


# ---------------------------------------------------------------- fp8 MoE
def _expert_weights(e, n, k):
    w = torch.randn(e, n, k) / math.sqrt(k)
    qs = [fp8_quant.fp8_quant_weight(w[i]) for i in range(e)]
    return torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])


def test_grouped_gemm_contiguous_and_masked_match_per_row():
    g, n, k, m = 3, 256, 256, 11
    b, bs = _expert_weights(g, n, k)
    a, as_ = fp8_quant.fp8_quant_act(torch.randn(m, k))
    m_idx = torch.tensor([0, 0, 2, -1, 1, 2, 2, -1, 0, 1, 2], dtype=I32)
    got = fp8_moe.fp8_grouped_gemm_nt_contiguous(a, as_, b, bs, m_idx, torch.float32)
    for r in range(m):
        if m_idx[r] < 0:
            assert (got[r] == 0).all()
        else:
            want = fp8_quant.fp8_dequant_act(a[r:r + 1], as_[r:r + 1]) @ \
                fp8_quant.fp8_dequant_weight(b[m_idx[r]], bs[m_idx[r]]).t()
            torch.testing.assert_close(got[r:r + 1], want, rtol=1e-5, atol=1e-4)
    am, ams = fp8_quant.fp8_quant_act(torch.randn(g, 5, k))
    masked_m = torch.tensor([5, 0, 2], dtype=I32)
    got = fp8_moe.fp8_grouped_gemm_nt_masked(am, ams, b, bs, masked_m, torch.float32)
    for gi in range(g):
        mm = int(masked_m[gi])
        assert (got[gi, mm:] == 0).all()
        if mm:
            want = fp8_moe.fp8_grouped_gemm_nt_contiguous(am[gi, :mm], ams[gi, :mm], b, bs,
                                                          torch.full((mm,), gi, dtype=I32), torch.float32)
            torch.testing.assert_close(got[gi, :mm], want)


def test_silu_and_mul_quant():
    x = torch.randn(4, 512) * 4
    q, s = fp8_moe.silu_and_mul_fp8_quant(x)
    want = torch.nn.functional.silu(x[:, :256]) * x[:, 256:]
    back = fp8_quant.fp8_dequant_act(q, s)
    assert ((back - want).abs() <= s.repeat_interleave(128, 1) * 448 / 16).all()


def test_moe_experts_orchestration_equals_per_expert_loop():
    e, d, inter, t, k = 6, 256, 256, 9, 3
    w13, s13 = _expert_weights(e, 2 * inter, d)
    w2, s2 = _expert_weights(e, d, inter)
    x = torch.randn(t, d)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).int()
    ids[2, 1] = -1                                  # an expert owned by another EP rank
    wts = torch.rand(t, k)
    got = fp8_moe.fp8_moe_experts(x, w13, s13, w2, s2, wts, ids)
    from deepseek_v32_plugin.ops.fp8_moe.naive import naive_fp8_moe_experts
    want = naive_fp8_moe_experts(x, w13, s13, w2, s2, wts, ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("align", [1, 4, 128])
def test_moe_padded_layout(align, seed):
    """The per-expert padded layout (ops.fp8_moe docstring): static size, each expert's pairs contiguous in
    pair order from an aligned start, -1 padding, ids outside [0, E) dropped, counts on the device."""
    e, t, k = 7, 11, 3
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).int()
    ids[0, 0], ids[3, 2] = -1, e + 2
    mi, rp, counts = fp8_moe.moe_padded_layout(ids, e, align)
    assert mi.numel() == rp.numel() == fp8_moe.moe_capacity(t * k, e, align)
    flat = ids.reshape(-1).long()
    assert counts.tolist() == [int((flat == x).sum()) for x in range(e)]
    start = 0
    for x in range(e):
        pairs = (flat == x).nonzero().squeeze(-1)
        n = pairs.numel()
        assert mi[start:start + n].tolist() == [x] * n and rp[start:start + n].tolist() == pairs.tolist()
        pad = -(-n // align) * align
        assert (mi[start + n:start + pad] == -1).all() and (rp[start + n:start + pad] == t * k).all()
        start += pad
    assert (mi[start:] == -1).all() and (rp[start:] == t * k).all()
    assert fp8_moe.moe_capacity(8, 256, 128) == 1024 and fp8_moe.moe_capacity(2048, 256, 128) == 34560

# ---------------------------------------------------------------- dispatch
def test_dispatch_forced_backend_errors_and_env(monkeypatch):
    with pytest.raises(ValueError, match="backend='nope'"):
        fp8_quant.fp8_quant_act(torch.randn(1, 128), backend="nope")
    monkeypatch.setenv("DSV32_BACKEND_FP8_QUANT_ACT", "cuda")
    with pytest.raises(BackendUnavailable):
        fp8_quant.fp8_quant_act(torch.randn(1, 128))
    monkeypatch.delenv("DSV32_BACKEND_FP8_QUANT_ACT")
    assert resolve("fp8_quant_act", torch.device("cpu")).__name__ == "naive_fp8_quant_act"


def test_dispatch_auto_on_cpu_tries_triton_only_when_asked(monkeypatch):
    from deepseek_v32_plugin.ops import _dispatch
    monkeypatch.delenv("DSV32_BACKEND", raising=False)
    monkeypatch.delenv("DSV32_CPU_TRITON", raising=False)
    monkeypatch.setattr(_dispatch, "_cache", {})
    from deepseek_v32_plugin.ops.indexer import blocked
    assert resolve("indexer_topk", torch.device("cpu")) is blocked.indexer_topk   # the torch backend's blocked op
    monkeypatch.setattr(_dispatch, "_cache", {})
    monkeypatch.setenv("DSV32_CPU_TRITON", "1")   # (TRITON_INTERPRET=1 is set by conftest on CPU)
    fn = resolve("indexer_topk", torch.device("cpu"))
    assert fn.__name__ == "indexer_topk_with_fallback"   # triton first, the reference behind it
    monkeypatch.setenv("TRITON_INTERPRET", "0")   # no interpreter: one clear error, not a crash at launch
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        resolve("indexer_topk", torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    logits = torch.randn(3, 50)
    ke = torch.tensor([10, 50, 33], dtype=torch.int32)
    assert torch.equal(indexer.indexer_topk(logits, 8, ke=ke), indexer.indexer_topk(logits, 8, ke=ke, backend="torch"))


def test_ue8m0_scale_exact_at_binade_edges():
    """amax one ulp above 448 * 2^k needs 2^(k+1): a float log2 gets this wrong."""
    k = torch.arange(-20, 20, dtype=torch.float32)
    edge = 448.0 * torch.exp2(k)
    above = torch.nextafter(edge, torch.full_like(edge, float("inf")))
    below = torch.nextafter(edge, torch.zeros_like(edge))
    assert torch.equal(ue8m0_scale(edge), torch.exp2(k))
    assert torch.equal(ue8m0_scale(above), torch.exp2(k + 1))
    assert torch.equal(ue8m0_scale(below), torch.exp2(k))
    x = torch.randn(4096).abs() * torch.exp2(torch.randint(-30, 30, (4096,)).float())
    s = ue8m0_scale(x)
    assert (x <= 448 * s).all() and ((x > 224 * s) | (s == ue8m0_scale(torch.tensor(0.0)))).all()


def test_dispatch_falls_back_on_unsupported_with_one_warning():
    import warnings

    from deepseek_v32_plugin.ops import _dispatch

    def kernel(x):
        if x > 10:
            raise _dispatch.Unsupported(f"x={x} > 10")
        return ("kernel", x)

    call = _dispatch._with_fallback("demo_op", [("triton", kernel), ("torch", lambda x: ("ref", x))])
    assert call(3) == ("kernel", 3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert call(11) == ("ref", 11) and call(12) == ("ref", 12)
    assert len(w) == 1 and "demo_op" in str(w[0].message) and "x=11 > 10" in str(w[0].message)
    last = _dispatch._with_fallback("demo_op2", [("triton", kernel)])
    with pytest.raises(_dispatch.Unsupported, match="x=11"):
        last(11)


def test_silu_and_mul_quant_row_hint_on_the_reference():
    """The torch reference has no row mask: with m_indices it computes every row (padding rows defined)."""
    x = torch.randn(5, 512)
    rows = torch.tensor([0, -1, 3, -1, 2], dtype=torch.int32)
    q, s = fp8_moe.silu_and_mul_fp8_quant(x, rows, backend="torch")
    rq, rs = fp8_moe.silu_and_mul_fp8_quant(x, backend="torch")
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)
    with pytest.raises(ValueError, match="m_indices"):
        fp8_moe.silu_and_mul_fp8_quant(x, rows[:4], backend="torch")
