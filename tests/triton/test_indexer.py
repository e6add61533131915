"""Triton indexer kernels vs the naive references (interpreter on CPU, compiled on a GPU).

Inputs are fresh random draws (never zeros); caches start as random bytes so unwritten or wrongly
written slots show. Both FP8 paths run: native fp8e4nv and the sm_80 byte path (DSV32_TRITON_FP8_BYTES=1).
Top-k: ties are implementation-defined, so selected *scores* are compared, and index sets where the
scores are distinct.
Every backend of the family is tested here: the Triton kernels first, then (section "CUDA backend", GPU
only) the CUDA extension's wrappers, ops/indexer/cuda.py.
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



@pytest.fixture
def split_topk(monkeypatch):
    """Forces the multi-CTA top-k (rows split over CTAs) on small shapes: 512-key chunks, 64 SMs assumed."""
    from deepseek_v32_plugin.triton_kernels import indexer as tk
    monkeypatch.setitem(tk.TOPK_SPLIT_CONFIG, "BLOCK", 512)
    monkeypatch.setattr(tk, "_num_sms", lambda dev: 64)
    return tk


def _split_logits(gen: str, r: int, n: int, seed: int) -> torch.Tensor:
    if gen == "normal":
        return torch.randn(r, n) * 10
    if gen == "concentrated":
        return concentrated_logits(r, n, seed)
    if gen == "concentrated_negative":
        return -concentrated_logits(r, n, seed)
    if gen == "tied":                    # 16 levels: threshold bin > CAP, shift > 8 (two tie passes)
        return torch.randint(0, 16, (r, n)).float()
    if gen == "tied_narrow":             # 16 levels 2^-20 apart: shift 0 (one tie pass)
        return 1.0 + torch.randint(0, 16, (r, n)).float() * 2.0 ** -20
    if gen == "masked":                  # negative values, 30% -inf inside the window, +-3e38
        x = -torch.rand(r, n) * 1e-3
        x[torch.rand(r, n) < 0.3] = float("-inf")
        x[:, 0], x[:, 1] = 3e38, -3e38
        return x
    raise ValueError(gen)


@pytest.mark.parametrize("topk", [300, 2048])
@pytest.mark.parametrize("gen", ["normal", "concentrated", "concentrated_negative", "tied", "tied_narrow", "masked"])
def test_indexer_topk_split_rows(triton_device, seed, split_topk, monkeypatch, gen, topk):
    """Multi-CTA top-k: each row's window split over S CTAs (per-chunk histograms merged by atomics), on
    windows longer / one longer / exactly as long / shorter than topk, empty, and offset by ks; the tie
    generators run with a small candidate buffer so the heavy-tie steps (4, 5) run too."""
    tk = split_topk
    if gen.startswith("tied"):
        monkeypatch.setitem(tk.TOPK_CONFIG, "CAP", 32)
    r, n = 6, 5000
    assert tk.topk_splits(r, n, 64) >= 4                  # the split path, not _topk_kernel
    logits = _split_logits(gen, r, n, seed)
    ks = torch.tensor([0, 37, 0, 100, 9, 4999], dtype=torch.int32)
    ke = torch.tensor([n, n - 11, topk + 1, 100 + topk, 9 + topk // 2, 4999], dtype=torch.int32)
    idx = ops.indexer_topk(logits.to(triton_device), topk, ks.to(triton_device), ke.to(triton_device),
                           backend="triton")
    check_topk(idx, logits, topk, ks, ke)


def test_indexer_topk_split_plan():
    """Few long rows take the split path (>= 64 CTAs at 4 x 128K on 132 SMs); many rows, or rows shorter
    than MIN_SPLITS chunks, keep the one-launch kernel; the grid depends on host-known shapes only."""
    from deepseek_v32_plugin.triton_kernels import indexer as tk
    assert tk.topk_splits(4, 131072, 132) * 4 >= 64
    assert tk.topk_splits(1, 131072, 132) == 32
    assert tk.topk_splits(64, 9295, 132) == 1 and tk.topk_splits(256, 131072, 132) == 1
    assert tk.topk_splits(4, 8192, 132) == 1
    launches = tk.topk_launches(4, 131072, 132)
    assert [g for _, g in launches] == [(4, 32)] * 5 + [(4,)]


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

# ====================================================================== CUDA backend
# ops/indexer/cuda.py (csrc/indexer/) vs the naive references, on a GPU only (marked gpu: skipped on CPU); a failed
# JIT build fails these tests, it does not skip them. The cuda_ext fixture (tests/conftest.py) returns
# ops/indexer/cuda.py.
CUDA_FAMILY = "indexer"
DEV = "cuda"


def _same_inf(a, b):
    assert torch.equal(torch.isinf(a), torch.isinf(b)), "-inf positions differ"


@pytest.fixture(params=["auto", "sm80"])
def indexer_path(request, monkeypatch):
    """auto = the sm_90a wgmma kernels on Hopper (when built), the mma.sync ones elsewhere; sm80 forces those."""
    if request.param == "sm80":
        monkeypatch.setenv("DSV32_CUDA_INDEXER", "sm80")
    return request.param


def _paged_cache(lens, pages_per_seq, heads_dim=128):
    b = len(lens)
    n_pages = b * pages_per_seq + 3
    cache = torch.zeros(n_pages, naive.PAGE, naive.BYTES_PER_TOKEN, dtype=torch.uint8, device=DEV)
    table = torch.randperm(n_pages, device=DEV)[: b * pages_per_seq].view(b, pages_per_seq).int()
    for i, n in enumerate(lens):
        if n == 0:
            continue
        pos = torch.arange(n, device=DEV)
        slots = table[i, pos // naive.PAGE].long() * naive.PAGE + pos % naive.PAGE
        k_fp8, k_scale = naive.naive_indexer_quant(torch.randn(n, heads_dim, device=DEV))
        naive.naive_indexer_cache_write(k_fp8, k_scale, cache, slots)
    return cache, table


@pytest.mark.gpu
@pytest.mark.parametrize("next_n,heads", [(1, 64), (2, 64), (4, 32), (1, 128), (2, 20)], ids=lambda v: str(v))
def test_cuda_paged_indexer_logits(cuda_ext, seed, indexer_path, next_n, heads):
    lens = [0, 1, 63, 64, 65, 700, 2049][:5] + [int(torch.randint(next_n, 3000, ()).item())]
    lens = [max(n, next_n) if n else 0 for n in lens]
    pps = -(-max(lens) // naive.PAGE) + 1
    cache, table = _paged_cache(lens, pps)
    b = len(lens)
    q_fp8, q_scale = naive.naive_indexer_quant(torch.randn(b, next_n, heads, 128, device=DEV))
    w = torch.randn(b * next_n, heads, device=DEV) * q_scale.view(b * next_n, heads)
    ctx = torch.tensor(lens, dtype=torch.int32, device=DEV)
    max_len = pps * naive.PAGE - 5
    ref = naive.naive_fp8_paged_indexer_logits(q_fp8, cache, w, ctx, table, max_len)
    got = cuda_ext.fp8_paged_indexer_logits(q_fp8, cache, w, ctx, table, max_len)
    _same_inf(got, ref)
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("h", [64, 20, 128])
def test_cuda_ragged_indexer_logits(cuda_ext, seed, indexer_path, h):
    s, n = 37, 333
    q_fp8, q_scale = naive.naive_indexer_quant(torch.randn(s, h, 128, device=DEV))
    k_fp8, k_scale = naive.naive_indexer_quant(torch.randn(n, 128, device=DEV))
    w = torch.randn(s, h, device=DEV) * q_scale
    ks = torch.randint(0, n // 2, (s,), device=DEV, dtype=torch.int32)
    ke = (ks + torch.randint(0, n // 2, (s,), device=DEV, dtype=torch.int32)).clamp_max(n)
    ke[0] = ks[0]  # empty window
    ref = naive.naive_fp8_indexer_logits(q_fp8, k_fp8, k_scale, w, ks, ke)
    got = cuda_ext.fp8_indexer_logits(q_fp8, k_fp8, k_scale, w, ks, ke)
    _same_inf(got, ref)
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("n,topk", [(100, 2048), (4096, 2048), (163840, 2048), (5000, 512), (70000, 1000)],
                         ids=lambda v: str(v))
def test_cuda_indexer_topk(cuda_ext, seed, n, topk):
    r = 6
    logits = torch.randn(r, n, device=DEV)
    logits[1] = torch.randint(-4, 4, (n,), device=DEV).float()    # heavy ties
    logits[2, : n // 3] = float("-inf")
    logits[5] = 1.0 + torch.rand(n, device=DEV)                      # one top byte: candidate overflow path
    ks = torch.randint(0, max(1, n // 4), (r,), device=DEV, dtype=torch.int32)
    ke = torch.full((r,), n, device=DEV, dtype=torch.int32)
    ke[3] = ks[3] + min(topk // 2, n - int(ks[3]))                   # window shorter than topk
    ke[4] = ks[4]                                                    # empty window
    ref = naive.naive_indexer_topk(logits, topk, ks, ke)
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


def _check_topk_values(got, ref, logits, ks, ke):
    assert got.shape == ref.shape and torch.equal(got < 0, ref < 0), "different counts of valid indices"
    valid = got >= 0
    take = lambda idx: torch.where(valid, torch.gather(logits, 1, idx.long().clamp_min(0) + ks[:, None].long()),
                                   torch.zeros_like(logits[:, :1]))
    torch.testing.assert_close(take(got), take(ref), rtol=0, atol=0)   # same values, same descending order
    for i in range(got.shape[0]):
        row = got[i][valid[i]]
        assert row.unique().numel() == row.numel() and (row < (ke[i] - ks[i])).all(), f"row {i}"


@pytest.mark.gpu
@pytest.mark.parametrize("gen", ["normal", "concentrated", "tied", "tied_narrow"])
def test_cuda_indexer_topk_split_rows(cuda_ext, seed, gen):
    """4 x 128K (the issue's shape): each row split over several CTAs (topk::split_count), incl. the
    named 'concentrated' generator (fast path) and heavy ties with wide / narrow key ranges (steps 4, 5)."""
    r, n = 4, 131072
    if gen == "normal":
        logits = torch.randn(r, n, device=DEV)
    elif gen == "concentrated":
        logits = 1.0 + torch.rand(r, n, device=DEV) * 2.0 ** -9
    elif gen == "tied":
        logits = torch.randint(0, 16, (r, n), device=DEV).float()
    else:
        logits = 1.0 + torch.randint(0, 16, (r, n), device=DEV).float() * 2.0 ** -20
    ks = torch.tensor([0, 5, 0, 1000], dtype=torch.int32, device=DEV)
    ke = torch.tensor([n, n - 7, 2049, 100000], dtype=torch.int32, device=DEV)
    _check_topk_values(cuda_ext.indexer_topk(logits, 2048, ks, ke), naive.naive_indexer_topk(logits, 2048, ks, ke),
                       logits, ks, ke)


@pytest.mark.gpu
def test_cuda_indexer_topk_split_graph_capture(cuda_ext, seed):
    """The split path (workspace memset + 6 launches) replays in a CUDA graph on new logits."""
    logits = torch.randn(2, 131072, device=DEV)
    ks = torch.zeros(2, dtype=torch.int32, device=DEV)
    ke = torch.full((2,), 131072, dtype=torch.int32, device=DEV)
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.ops.dsv32.indexer_topk(logits, 2048, ks, ke)
        with torch.cuda.graph(graph, stream=s):
            captured = torch.ops.dsv32.indexer_topk(logits, 2048, ks, ke)
    torch.cuda.current_stream().wait_stream(s)
    logits.copy_(torch.randn_like(logits))
    graph.replay()
    torch.cuda.synchronize()
    _check_topk_values(captured, naive.naive_indexer_topk(logits, 2048, ks, ke), logits, ks, ke)


@pytest.mark.gpu
def test_dispatch_reaches_cuda(cuda_ext, seed):
    from deepseek_v32_plugin.ops import indexer
    logits = torch.randn(4, 5000, device=DEV)
    got = indexer.indexer_topk(logits, 2048, backend="cuda")
    ref = indexer.indexer_topk(logits, 2048, backend="torch")
    torch.testing.assert_close(torch.gather(logits, 1, got.long()), torch.gather(logits, 1, ref.long()))


@pytest.mark.gpu
def test_cuda_torch_compile_fullgraph(cuda_ext, seed):
    logits = torch.randn(3, 3000, device=DEV)
    ks = torch.zeros(3, dtype=torch.int32, device=DEV)
    ke = torch.full((3,), 3000, dtype=torch.int32, device=DEV)

    @torch.compile(fullgraph=True)
    def f(x):
        return torch.ops.dsv32.indexer_topk(x * 2.0, 256, ks, ke)

    got = f(logits)
    ref = torch.ops.dsv32.indexer_topk(logits * 2.0, 256, ks, ke)
    torch.testing.assert_close(torch.gather(logits, 1, got.long()), torch.gather(logits, 1, ref.long()))


@pytest.mark.gpu
def test_cuda_indexer_quant_and_cache(cuda_ext, seed):
    t = 300
    k = torch.randn(t, 128, device=DEV)
    q, s = cuda_ext.indexer_quant(k, True)
    rq, rs = naive.naive_indexer_quant(k, True)
    # FWHT vs matmul summation order: scales agree, codes at most one step apart, rarely
    assert (s == rs).float().mean() > 0.99
    same_scale = (s == rs)
    qa, ra = q[same_scale].float(), rq[same_scale].float()
    assert ((qa - ra).abs() <= ra.abs() * 0.13 + 2.0 ** -9).all()
    assert (q.view(torch.uint8) != rq.view(torch.uint8)).float().mean() < 0.01
    q0, s0 = cuda_ext.indexer_quant(k, False)
    r0, rs0 = naive.naive_indexer_quant(k, False)
    assert torch.equal(s0, rs0) and torch.equal(q0.view(torch.uint8), r0.view(torch.uint8))

    pages = 8
    slots = torch.randperm(pages * 64, device=DEV)[:t]
    slots[::17] = -1
    cache = torch.zeros(pages, 64, 132, dtype=torch.uint8, device=DEV)
    cuda_ext.indexer_k_quant_and_cache(k, cache, slots)
    keep = slots >= 0
    gk, gs = naive.naive_indexer_cache_gather(cache, slots[keep])
    assert torch.equal(gk.view(torch.uint8), q[keep].view(torch.uint8)) and torch.equal(gs, s[keep])
    cache2 = torch.zeros_like(cache)
    cuda_ext.indexer_cache_write(rq, rs, cache2, slots.int())
    ref = torch.zeros_like(cache)
    naive.naive_indexer_cache_write(rq, rs, ref, slots)
    assert torch.equal(cache2, ref)


@pytest.mark.gpu
def test_cuda_indices_to_slots(cuda_ext, seed):
    r, kk, mp = 9, 300, 40
    table = torch.randint(0, 1000, (r, mp), dtype=torch.int32, device=DEV)
    idx = torch.randint(-1, mp * 64, (r, kk), dtype=torch.int32, device=DEV)
    assert torch.equal(cuda_ext.indices_to_slots(idx, table, 64), naive.naive_indices_to_slots(idx, table, 64))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_cuda_indexer_cache_gather(cuda_ext, seed, dtype):
    pages, t = 5, 200
    cache = torch.randint(0, 256, (pages, 64, 132), dtype=torch.uint8, device=DEV)
    slots = torch.randperm(pages * 64, device=DEV)[:t].to(dtype)
    k, s = cuda_ext.indexer_cache_gather(cache, slots)
    rk, rs = naive.naive_indexer_cache_gather(cache, slots)
    assert torch.equal(k.view(torch.uint8), rk.view(torch.uint8)) and torch.equal(s.view(torch.int32),
                                                                                   rs.view(torch.int32))
    k0, s0 = cuda_ext.indexer_cache_gather(cache, slots[:0])
    assert k0.shape == (0, 128) and s0.shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["k_quant_and_cache", "cache_write", "gather", "to_slots", "paged_logits"])
def test_cuda_bound_checks_raise_in_debug_mode(cuda_ext, cuda_bounds_checked, op):
    """Out-of-range values never reach memory (masked like -1); with DSV32_CUDA_CHECK_BOUNDS=1 they raise
    an IndexError naming the tensor."""
    pages = 2
    icache = torch.zeros(pages, 64, 132, dtype=torch.uint8, device=DEV)
    bad = torch.tensor([3, pages * 64 + 5], dtype=torch.int32, device=DEV)
    k = torch.randn(2, 128, device=DEV)
    calls = {
        "k_quant_and_cache": ("slot_mapping", lambda: cuda_ext.indexer_k_quant_and_cache(k, icache, bad)),
        "cache_write": ("slot_mapping", lambda: cuda_ext.indexer_cache_write(
            *naive.naive_indexer_quant(k), icache, bad)),
        "gather": ("slots", lambda: cuda_ext.indexer_cache_gather(icache, bad)),
        "to_slots": ("indices", lambda: cuda_ext.indices_to_slots(
            torch.tensor([[5, 64 * 3]], dtype=torch.int32, device=DEV), torch.zeros(1, 2, dtype=torch.int32,
                                                                                      device=DEV), 64)),
        "paged_logits": ("block_table", lambda: cuda_ext.fp8_paged_indexer_logits(
            naive.naive_indexer_quant(torch.randn(1, 1, 64, 128, device=DEV))[0], icache,
            torch.randn(1, 64, device=DEV), torch.tensor([100], dtype=torch.int32, device=DEV),
            torch.tensor([[0, pages + 7]], dtype=torch.int32, device=DEV), 128)),
    }
    cuda_bounds_checked(*calls[op])
