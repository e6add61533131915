"""Triton indexer kernels vs the naive references (interpreter on CPU, compiled on a GPU).

Inputs are fresh random draws (never zeros); caches start as random bytes so unwritten or wrongly
written slots show. Both FP8 paths run: native fp8e4nv and the sm_80 byte path (DSV32_TRITON_FP8_BYTES=1).
Top-k: ties are implementation-defined, so selected *scores* are compared, and index sets where the
scores are distinct.
"""
from __future__ import annotations

import pytest
import torch

from deepseek_v32_plugin.ops import indexer as ops
from deepseek_v32_plugin.ops.indexer import naive

FP8 = torch.float8_e4m3fn
D, PAGE = 128, 64


@pytest.fixture(params=["native", "bytes"])
def fp8_path(request, monkeypatch):
    monkeypatch.setenv("DSV32_TRITON_FP8_BYTES", "1" if request.param == "bytes" else "0")
    return request.param


def rand_fp8(*shape):
    return (torch.randn(*shape) * 40).clamp(-448, 448).to(FP8)


def rand_cache(pages):
    return torch.randint(0, 256, (pages, PAGE, naive.BYTES_PER_TOKEN), dtype=torch.uint8)


def fp8_close(a, b, max_frac=2e-3):
    """FP8 tensors equal up to rare one-step rounding differences (different fp32 summation order)."""
    a, b = a.cpu().float(), b.cpu().float()
    diff = a != b
    if diff.any():   # a fraction, but at least one value may differ (a 1 x 128 row has no 2e-3 of a value)
        assert diff.sum().item() <= max(1, max_frac * diff.numel()), \
            f"{diff.sum().item()} of {diff.numel()} fp8 values differ"
        assert ((a - b).abs()[diff] <= b.abs()[diff] / 8 + 2 ** -9).all(), "fp8 values differ by more than one step"


# ----------------------------------------------------------------------------- quant + cache

@pytest.mark.parametrize("shape", [(1, D), (3, 5, D), (70, D)], ids=["1", "3x5", "70"])
@pytest.mark.parametrize("rotate", [True, False], ids=["hadamard", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_indexer_quant(triton_device, fp8_path, seed, shape, rotate, dtype):
    x = (torch.randn(shape) * torch.exp(torch.empty(*shape[:-1], 1).uniform_(-6, 6))).to(dtype)
    q, s = ops.indexer_quant(x.to(triton_device), rotate, backend="triton")
    rq, rs = naive.naive_indexer_quant(x, rotate)
    assert q.dtype == FP8 and q.shape == x.shape and s.shape == shape[:-1]
    torch.testing.assert_close(s.cpu(), rs, rtol=0, atol=0)
    if rotate:
        fp8_close(q, rq)
    else:
        assert torch.equal(q.cpu().view(torch.uint8), rq.view(torch.uint8))


def test_indexer_quant_saturation(triton_device, fp8_path, seed):
    """Rows whose amax sits just above a power of two * 448 and huge outliers: no NaN, max 448."""
    x = torch.randn(40, D)
    x[:, 0] = 448 * 2.0 ** torch.randint(-8, 8, (40,)).float() * (1 + 2 ** -20)
    x[::3, 5] = 1e30
    q, s = ops.indexer_quant(x.to(triton_device), False, backend="triton")
    rq, rs = naive.naive_indexer_quant(x, False)
    assert torch.equal(s.cpu(), rs)
    assert torch.equal(q.cpu().view(torch.uint8), rq.view(torch.uint8))
    assert q.cpu().float().abs().max() <= 448


@pytest.mark.parametrize("t,pages", [(1, 1), (100, 3), (130, 4)], ids=["T1", "T100", "T130"])
def test_k_quant_and_cache(triton_device, fp8_path, seed, t, pages):
    k = torch.randn(t, D) * 3
    slots = torch.randperm(pages * PAGE)[:t].to(torch.int32)
    if t > 1:
        slots[torch.rand(t) < 0.2] = -1          # padding tokens are skipped
    cache = rand_cache(pages)
    ref = cache.clone()
    naive.naive_indexer_k_quant_and_cache(k, ref, slots)
    out = cache.to(triton_device)
    ops.indexer_k_quant_and_cache(k.to(triton_device), out, slots.to(triton_device), backend="triton")
    out = out.cpu()
    keep = slots[slots >= 0].long()
    untouched = torch.ones(pages * PAGE, dtype=torch.bool)
    untouched[keep] = False
    # slots not written keep their bytes (values and scales)
    assert torch.equal(naive.naive_indexer_cache_gather(out, torch.nonzero(untouched)[:, 0])[0].view(torch.uint8),
                       naive.naive_indexer_cache_gather(ref, torch.nonzero(untouched)[:, 0])[0].view(torch.uint8))
    kq, ks = naive.naive_indexer_cache_gather(out, keep)
    rkq, rks = naive.naive_indexer_cache_gather(ref, keep)
    assert torch.equal(ks, rks)
    fp8_close(kq, rkq)


@pytest.mark.parametrize("t,pages", [(1, 1), (77, 2), (200, 5)], ids=["T1", "T77", "T200"])
def test_cache_write_and_gather(triton_device, seed, t, pages):
    k_fp8, k_scale = rand_fp8(t, D), torch.rand(t) + 0.5
    slots = torch.randperm(pages * PAGE)[:t].to(torch.int64)
    if t > 1:
        slots[torch.rand(t) < 0.25] = -1
    cache = rand_cache(pages)
    ref = cache.clone()
    naive.naive_indexer_cache_write(k_fp8, k_scale, ref, slots)
    out = cache.to(triton_device)
    ops.indexer_cache_write(k_fp8.to(triton_device), k_scale.to(triton_device), out, slots.to(triton_device),
                            backend="triton")
    assert torch.equal(out.cpu(), ref)
    read = torch.randint(0, pages * PAGE, (t + 3,), dtype=torch.int32)
    g, gs = ops.indexer_cache_gather(out, read.to(triton_device), backend="triton")
    rg, rgs = naive.naive_indexer_cache_gather(ref, read)
    assert torch.equal(g.cpu().view(torch.uint8), rg.view(torch.uint8))
    assert torch.equal(gs.cpu().view(torch.int32), rgs.view(torch.int32))


# ----------------------------------------------------------------------------- logits

def check_logits(out, ref):
    out = out.cpu()
    assert out.shape == ref.shape
    inf_r, inf_o = torch.isneginf(ref), torch.isneginf(out)
    assert torch.equal(inf_r, inf_o), f"-inf mask differs at {torch.nonzero(inf_r != inf_o)[:5].tolist()}"
    assert not torch.isnan(out).any()
    fin = ~inf_r
    if not fin.any():
        return
    torch.testing.assert_close(out[fin], ref[fin], rtol=2e-5, atol=1e-5 * ref[fin].abs().max().item() + 1e-30)


@pytest.mark.parametrize("s,n,h", [(1, 1, 64), (7, 300, 4), (19, 520, 64), (5, 130, 20)], ids=lambda v: str(v))
def test_fp8_indexer_logits(triton_device, fp8_path, seed, s, n, h):
    q, k = rand_fp8(s, h, D), rand_fp8(n, D)
    k_scale = torch.rand(n) * 0.01 + 1e-3
    w = torch.randn(s, h)
    ks = torch.randint(0, max(n // 2, 1), (s,), dtype=torch.int32)
    ke = torch.minimum(ks + torch.randint(0, n + 1, (s,), dtype=torch.int32), torch.tensor(n, dtype=torch.int32))
    ke[0] = ks[0] if s > 2 else ke[0]                 # an empty row
    dev = triton_device
    out = ops.fp8_indexer_logits(q.to(dev), k.to(dev), k_scale.to(dev), w.to(dev), ks.to(dev), ke.to(dev),
                                 backend="triton")
    check_logits(out, naive.naive_fp8_indexer_logits(q, k, k_scale, w, ks, ke))


def build_paged(ctx_lens, pages_extra=3):
    """Key cache with every context position written; block tables are a random permutation of pages."""
    b = len(ctx_lens)
    max_pages = max(1, max(-(-c // PAGE) for c in ctx_lens))
    total = b * max_pages + pages_extra
    perm = torch.randperm(total)[: b * max_pages].reshape(b, max_pages).to(torch.int32)
    cache = rand_cache(total)
    for i, c in enumerate(ctx_lens):
        pos = torch.arange(c)
        slots = perm[i, pos // PAGE].long() * PAGE + pos % PAGE
        naive.naive_indexer_cache_write(rand_fp8(c, D), torch.rand(c) * 0.01 + 1e-3, cache, slots)
    return cache, perm


@pytest.mark.parametrize("next_n", [1, 2, 3, 4])
@pytest.mark.parametrize("h", [8, 64])
def test_fp8_paged_indexer_logits(triton_device, fp8_path, seed, next_n, h):
    ctx = [next_n, 64, 65, 200][: 4 if h == 8 else 3]
    b = len(ctx)
    cache, bt = build_paged(ctx)
    q = rand_fp8(b, next_n, h, D)
    w = torch.randn(b * next_n, h)
    cl = torch.tensor(ctx, dtype=torch.int32)
    max_len = max(ctx) + 7                                # columns past every context stay -inf
    dev = triton_device
    out = ops.fp8_paged_indexer_logits(q.to(dev), cache.to(dev), w.to(dev), cl.to(dev), bt.to(dev), max_len,
                                       backend="triton")
    check_logits(out, naive.naive_fp8_paged_indexer_logits(q, cache, w, cl, bt, max_len))


# ----------------------------------------------------------------------------- top-k

def check_topk(idx, logits, topk, ks, ke):
    idx = idx.cpu()
    ref = naive.naive_indexer_topk(logits, topk, ks, ke)
    assert idx.shape == ref.shape and idx.dtype == torch.int32
    for r in range(logits.shape[0]):
        cnt = int((ref[r] >= 0).sum())
        assert int((idx[r] >= 0).sum()) == cnt, f"row {r}: {int((idx[r] >= 0).sum())} selected, want {cnt}"
        assert (idx[r, cnt:] == -1).all() and (idx[r, :cnt] >= 0).all(), f"row {r}: -1 padding not at the end"
        sel = idx[r, :cnt].long()
        assert sel.unique().numel() == cnt, f"row {r}: duplicate indices"
        assert (sel < int(ke[r] - ks[r])).all()
        got = logits[r, ks[r] + sel]
        want = logits[r, ks[r] + ref[r, :cnt].long()]
        assert torch.equal(got, want), f"row {r}: selected scores differ (or are not in descending order)"
        # index sets agree on scores strictly above the smallest selected one (distinct from the tie level)
        if cnt:
            cut = want[-1]
            assert set(sel[got > cut].tolist()) == set(ref[r, :cnt][want > cut].tolist())


@pytest.mark.parametrize("r,n,topk", [(3, 50, 64), (4, 300, 64), (1, 2600, 2048), (5, 9000, 100), (1, 1, 1)],
                         ids=lambda v: str(v))
def test_indexer_topk(triton_device, seed, r, n, topk):
    logits = torch.randn(r, n) * 10
    ks = torch.randint(0, max(n // 4, 1), (r,), dtype=torch.int32)
    ke = torch.minimum(ks + torch.randint(1, n + 1, (r,), dtype=torch.int32), torch.tensor(n, dtype=torch.int32))
    if r > 2:
        ke[1] = ks[1]                                      # empty range
        ke[2] = torch.clamp(ks[2] + topk, max=n)           # len == topk (when it fits)
    idx = ops.indexer_topk(logits.to(triton_device), topk, ks.to(triton_device), ke.to(triton_device),
                           backend="triton")
    check_topk(idx, logits, topk, ks, ke)


@pytest.mark.parametrize("cap", [4096, 32], ids=["cand4096", "cand32"])
def test_indexer_topk_ties_and_special_values(triton_device, seed, monkeypatch, cap):
    """Few distinct levels (heavy ties at the threshold), negative values, -inf inside the range.
    cand32: a tiny candidate buffer forces the full-row radix passes (the heavy-tie path)."""
    from deepseek_v32_plugin.triton_kernels import indexer as tk
    monkeypatch.setitem(tk.TOPK_CONFIG, "CAP", cap)
    r, n, topk = 3, 3000, 256
    logits = torch.randint(-6, 6, (r, n)).float() * 0.5
    logits[0, torch.rand(n) < 0.3] = float("-inf")
    logits[1] = -torch.rand(n) * 1e-3                       # all negative, tiny spread
    logits[1, :5] = torch.tensor([3e38, -3e38, 1e-38, -1e-38, 0.0])
    ks = torch.zeros(r, dtype=torch.int32)
    ke = torch.full((r,), n, dtype=torch.int32)
    idx = ops.indexer_topk(logits.to(triton_device), topk, ks.to(triton_device), ke.to(triton_device),
                           backend="triton")
    check_topk(idx, logits, topk, ks, ke)


def concentrated_logits(r: int, n: int, seed: int = 0) -> torch.Tensor:
    """Named generator (also benchmarks/work_model.py): every score within 2^-9 relative of 1.0, so a
    fixed 16-bit key prefix holds the whole row; the kernel's adaptive first histogram must split it."""
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.rand(r, n, generator=g) * 2.0 ** -9


@pytest.mark.parametrize("gen", ["concentrated", "concentrated_negative", "wide_range"])
def test_indexer_topk_concentrated(triton_device, seed, gen):
    """The fast path (<= CAP candidates after the fine histogram) on narrow-band and very wide key ranges."""
    r, n, topk = 2, 5000, 2048
    logits = concentrated_logits(r, n, seed)
    if gen == "concentrated_negative":
        logits = -logits
    elif gen == "wide_range":            # key range > 2^31: +-3e38 with ordinary values between
        logits = torch.randn(r, n) * 10
        logits[:, 0], logits[:, 1] = 3e38, -3e38
    ks = torch.tensor([0, 7], dtype=torch.int32)
    ke = torch.tensor([n, n - 3], dtype=torch.int32)
    idx = ops.indexer_topk(logits.to(triton_device), topk, ks.to(triton_device), ke.to(triton_device),
                           backend="triton")
    check_topk(idx, logits, topk, ks, ke)


def test_indices_to_slots(triton_device, seed):
    r, k, max_pages = 6, 300, 9
    bt = torch.randint(0, 1000, (r, max_pages), dtype=torch.int32)
    idx = torch.randint(0, max_pages * PAGE, (r, k), dtype=torch.int32)
    idx[torch.rand(r, k) < 0.3] = -1
    idx[0] = -1
    out = ops.indices_to_slots(idx.to(triton_device), bt.to(triton_device), backend="triton")
    assert torch.equal(out.cpu(), naive.naive_indices_to_slots(idx, bt))


def test_topk_then_slots_pipeline(triton_device, seed):
    """logits -> top-k -> slots as the model uses them (positions relative to ks)."""
    n, topk = 700, 128
    logits = torch.randn(3, n)
    ks = torch.tensor([0, 100, 650], dtype=torch.int32)
    ke = torch.tensor([700, 400, 700], dtype=torch.int32)
    bt = torch.randperm(40)[:33].reshape(3, 11).to(torch.int32)
    dev = triton_device
    idx = ops.indexer_topk(logits.to(dev), topk, ks.to(dev), ke.to(dev), backend="triton")
    check_topk(idx, logits, topk, ks, ke)
    slots = ops.indices_to_slots(idx, bt.to(dev), backend="triton")
    assert torch.equal(slots.cpu(), naive.naive_indices_to_slots(idx.cpu(), bt))


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs(triton_device):
    from deepseek_v32_plugin.triton_kernels import indexer as tk
    dev = triton_device
    logits = torch.randn(2, 100, device=dev)
    z = torch.zeros(2, dtype=torch.int32, device=dev)
    e = torch.full((2,), 100, dtype=torch.int32, device=dev)
    with pytest.raises(ValueError, match="topk"):
        tk.indexer_topk(logits, tk.MAX_TOPK + 1, z, e)
    with pytest.raises(ValueError, match="stride"):
        tk.indexer_topk(logits.t().contiguous().t(), 8, z, e)
    q = rand_fp8(1, 5, 8, D).to(dev)
    cache = rand_cache(2).to(dev)
    with pytest.raises(ValueError, match="next_n"):
        tk.fp8_paged_indexer_logits(q, cache, torch.randn(5, 8, device=dev), torch.ones(1, dtype=torch.int32, device=dev),
                                    torch.zeros(1, 2, dtype=torch.int32, device=dev), 64)
    with pytest.raises(ValueError, match="kv_cache"):
        tk.indexer_cache_gather(cache[:, :32], torch.zeros(1, dtype=torch.int32, device=dev))
    with pytest.raises(ValueError, match="contiguous"):
        tk.indexer_quant(torch.randn(D, 4, device=dev).t(), True)


# ----------------------------------------------------------------------------- full size (GPU only)

@pytest.mark.gpu
@pytest.mark.parametrize("r,n", [(64, 131072), (4, 163840), (128, 9295)])
def test_topk_full_size(seed, r, n):
    logits = torch.randn(r, n, device="cuda")
    ks = torch.zeros(r, dtype=torch.int32, device="cuda")
    ke = torch.randint(n // 2, n + 1, (r,), dtype=torch.int32, device="cuda")
    idx = ops.indexer_topk(logits, 2048, ks, ke, backend="triton")
    check_topk(idx, logits.cpu(), 2048, ks.cpu(), ke.cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("next_n", [1, 2, 4])
def test_paged_logits_full_size(seed, next_n):
    ctx = [32768, 1, 4097, 20000]
    cache, bt = build_paged(ctx)
    q = rand_fp8(len(ctx), next_n, 64, D)
    w = torch.randn(len(ctx) * next_n, 64)
    cl = torch.tensor(ctx, dtype=torch.int32)
    out = ops.fp8_paged_indexer_logits(q.cuda(), cache.cuda(), w.cuda(), cl.cuda(), bt.cuda(), max(ctx),
                                       backend="triton")
    check_logits(out, naive.naive_fp8_paged_indexer_logits(q, cache, w, cl, bt, max(ctx)))


@pytest.mark.gpu
def test_logits_full_size(seed):
    s, n, h = 1024, 4096, 64
    q, k = rand_fp8(s, h, D), rand_fp8(n, D)
    k_scale, w = torch.rand(n) * 0.01, torch.randn(s, h)
    ks = torch.zeros(s, dtype=torch.int32)
    ke = torch.arange(n - s + 1, n + 1, dtype=torch.int32)
    out = ops.fp8_indexer_logits(q.cuda(), k.cuda(), k_scale.cuda(), w.cuda(), ks.cuda(), ke.cuda(),
                                 backend="triton")
    check_logits(out, naive.naive_fp8_indexer_logits(q, k, k_scale, w, ks, ke))


@pytest.mark.interp
def test_cpu_tensors_need_interpreter(monkeypatch):
    """Outside the interpreter, CPU tensors get a clear error instead of a Triton launch failure."""
    from deepseek_v32_plugin.triton_kernels import fp8_quant as fq
    from deepseek_v32_plugin.triton_kernels import indexer as tk
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        tk.indexer_quant(torch.randn(2, D), True)
    with pytest.raises(ValueError, match="CUDA"):
        fq.fp8_quant_act(torch.randn(2, D), 128, True)
