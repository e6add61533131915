"""Triton sparse-MLA kernels (cache write/gather, decode, prefill) vs the naive references.

Under the interpreter (CPU) these run small shapes; every input is fresh random data. The sm_80 path
(FP8 bytes decoded with integer arithmetic) is exercised by patching `native_fp8` to False.
Every backend of the family is tested here: the Triton kernels first, then (section "CUDA backend", GPU
only) the CUDA extension's wrappers, ops/sparse_mla/cuda.py.
"""
import math

import pytest
import torch

pytest.importorskip("triton")

from deepseek_v32_plugin.ops import sparse_mla as ops  # noqa: E402
from deepseek_v32_plugin.ops.sparse_mla import naive  # noqa: E402
from deepseek_v32_plugin.triton_kernels import sparse_mla as tk  # noqa: E402  (must import: no silent skip)

PAGE = 64
SCALE = 576 ** -0.5


@pytest.fixture(params=["native", "sm80"])
def fp8_path(request, monkeypatch):
    if request.param == "sm80":
        monkeypatch.setattr(tk, "native_fp8", lambda dev: False)
    return request.param


@pytest.fixture(params=["sm90", "sm100", "sm80"])
def attn_arch(request, monkeypatch):
    """Run the attention kernel with each arch's shipped launch config (sm100 splits d_v over 2 programs)."""
    cap = {"sm90": (9, 0), "sm100": (10, 0), "sm80": (8, 0)}[request.param]
    monkeypatch.setattr(tk, "_device_cap", lambda dev: cap)
    if request.param == "sm80":
        monkeypatch.setattr(tk, "native_fp8", lambda dev: False)
    return request.param


def _latent(t, dev, big=False):
    kv_c = torch.randn(t, 512, device=dev) * torch.rand(t, 1, device=dev).add(0.2)
    if big:  # spread of magnitudes across groups: tiny (subnormal after scaling), zero and large groups
        kv_c[:, :128] *= 1e-3
        kv_c[0, 128:256] = 0.0
        kv_c[:, 384:] *= 300.0
    k_pe = torch.randn(t, 64, device=dev)
    return kv_c, k_pe


def _cache(fp8, pages, dev, dtype=torch.bfloat16):
    """A cache filled (by the reference writer) with random latent rows on every slot."""
    if fp8:
        cache = torch.zeros(pages, PAGE, 656, dtype=torch.uint8, device=dev)
    else:
        cache = torch.zeros(pages, PAGE, 576, dtype=dtype, device=dev)
    n = pages * PAGE
    kv_c, k_pe = _latent(n, dev)
    naive.naive_mla_cache_write(kv_c.bfloat16(), k_pe.bfloat16(), cache, torch.arange(n, device=dev))
    return cache


# ------------------------------------------------------------------ cache write / gather

@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32], ids=["in_bf16", "in_f32"])
def test_cache_write_matches_reference(triton_device, seed, fp8, in_dtype, fp8_path):
    if not fp8 and fp8_path == "sm80":
        pytest.skip("bf16 cache has no FP8 path")
    dev = triton_device
    pages, t = 3, 37
    kv_c, k_pe = _latent(t, dev, big=True)
    kv_c, k_pe = kv_c.to(in_dtype), k_pe.to(in_dtype)
    perm = torch.randperm(pages * PAGE, device=dev)
    perm = perm[(perm != PAGE - 1) & (perm != PAGE)]
    # distinct slots, with the two page-boundary neighbours PAGE-1 and PAGE at positions 5 and 6
    slots = torch.cat([perm[:5], torch.tensor([PAGE - 1, PAGE], device=dev), perm[5:t - 2]]).int()
    slots[3] = -1
    slots[10] = -1
    shape = (pages, PAGE, 656 if fp8 else 576)
    dt = torch.uint8 if fp8 else torch.bfloat16
    ref = torch.randint(0, 255, shape, dtype=torch.uint8, device=dev).view(dt) if fp8 else \
        torch.randn(shape, device=dev).to(dt)
    got = ref.clone()
    naive.naive_mla_cache_write(kv_c, k_pe, ref, slots)
    ops.mla_cache_write(kv_c, k_pe, got, slots, backend="triton")
    if fp8:
        assert torch.equal(got, ref), (got != ref).nonzero()[:10]
    else:
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_cache_gather_matches_reference(triton_device, seed, fp8, fp8_path):
    if not fp8 and fp8_path == "sm80":
        pytest.skip("bf16 cache has no FP8 path")
    cache = _cache(fp8, 2, triton_device)
    slots = torch.randint(-1, 2 * PAGE, (5, 7), device=triton_device, dtype=torch.int32)
    slots[0, 0] = -1
    got = ops.mla_cache_gather(cache, slots, backend="triton")
    want = naive.naive_mla_cache_gather(cache, slots)
    assert got.shape == (5, 7, 576)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------ decode

def _indices(b, s_q, topk, n_slots, n_valid, dev):
    """Random distinct slots, n_valid per row (the rest -1), shuffled positions."""
    idx = torch.full((b, s_q, topk), -1, dtype=torch.int32, device=dev)
    for i in range(b):
        for j in range(s_q):
            nv = min(n_valid, topk)
            sel = torch.randperm(n_slots, device=dev)[:nv].int()
            pos = torch.randperm(topk, device=dev)[:nv]
            idx[i, j, pos] = sel
    return idx


def _check(out, lse, ref_out, ref_lse, same_dtype=True):
    assert out.shape == ref_out.shape
    assert out.dtype == ref_out.dtype or not same_dtype
    assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert (lse[~fin] == float("-inf")).all()
    torch.testing.assert_close(lse[fin], ref_lse[fin], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("b,s_q,h,topk,n_valid", [
    (2, 1, 16, 64, 40),      # topk > valid keys
    (1, 2, 20, 96, 96),      # h not a multiple of 16, topk not a multiple of the block
    (1, 1, 128, 64, 64),     # two head blocks
    (1, 1, 3, 128, 5),       # tiny h, mostly -1
    (1, 1, 64, 96, 7),       # 64 heads: the sm_90a config splits S over warpgroups (ISOLATE_P); mostly -1
], ids=lambda v: str(v))
def test_decode_matches_reference(triton_device, seed, fp8, b, s_q, h, topk, n_valid, attn_arch):
    dev = triton_device
    pages = 3
    cache = _cache(fp8, pages, dev)
    q = torch.randn(b, s_q, h, 576, device=dev).bfloat16()
    idx = _indices(b, s_q, topk, pages * PAGE, n_valid, dev)
    out, lse = ops.sparse_mla_decode(q, cache, idx, SCALE, backend="triton")
    ref_out, ref_lse = naive.naive_sparse_mla_decode(q, cache, idx, SCALE)
    _check(out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("h", [16, 64], ids=lambda v: f"h{v}")
def test_decode_all_invalid_rows_and_oob(triton_device, seed, fp8, h):
    """h=64 takes the sm_90a config's branch that skips blocks with no valid key (ISOLATE_P)."""
    dev = triton_device
    cache = _cache(fp8, 2, dev)
    q = torch.randn(2, 2, h, 576, device=dev).bfloat16()
    idx = _indices(2, 2, 64, 2 * PAGE, 30, dev)
    idx[0, 1] = -1                    # a whole row of -1
    idx[1, 0, :] = -1
    idx[1, 0, 7] = PAGE               # single valid key at a page start
    out, lse = ops.sparse_mla_decode(q, cache, idx, SCALE, backend="triton")
    ref_out, ref_lse = naive.naive_sparse_mla_decode(q, cache, idx, SCALE)
    _check(out, lse, ref_out, ref_lse)
    assert (out[0, 1] == 0).all() and (lse[0, 1] == float("-inf")).all()
    # a single key: out is exactly that key's latent (softmax weight 1)
    row = naive.naive_mla_cache_gather(cache, torch.tensor([PAGE], device=dev))[0, :512]
    torch.testing.assert_close(out[1, 0].float(), row.expand(h, 512).bfloat16().float(), rtol=0, atol=0)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_decode_split_topk_combine(triton_device, seed, fp8, monkeypatch, attn_arch):
    """Force the split-K path (several programs per row + the combine kernel), including a split with no valid key."""
    monkeypatch.setattr(tk, "plan_splits", lambda *a: 3)
    dev = triton_device
    cache = _cache(fp8, 4, dev)
    q = torch.randn(1, 2, 16, 576, device=dev).bfloat16()
    idx = _indices(1, 2, 192, 4 * PAGE, 192, dev)
    idx[0, 0, 64:128] = -1            # second split of row 0 empty
    idx[0, 1, :] = -1                 # row 1 empty in all splits
    out, lse = ops.sparse_mla_decode(q, cache, idx, SCALE, backend="triton")
    ref_out, ref_lse = naive.naive_sparse_mla_decode(q, cache, idx, SCALE)
    _check(out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_decode_topk_length(triton_device, seed, fp8, monkeypatch):
    """Per-row lengths below / at / above a page and a block, 0, = topk and > topk; the entries past each
    row's length are garbage slots the kernel must never read (a -1 inside the length is still skipped).
    Three splits of 64: rows ending inside, at and before a split (splits past the length exit at once)."""
    monkeypatch.setattr(tk, "plan_splits", lambda *a: 3)
    dev = triton_device
    pages, topk = 4, 192
    cache = _cache(fp8, pages, dev)
    lens = torch.tensor([[0, 1, 63, 64], [65, 130, 192, 500]], dtype=torch.int32, device=dev)
    q = torch.randn(2, 4, 16, 576, device=dev).bfloat16()
    idx = torch.randint(0, pages * PAGE, (2, 4, topk), dtype=torch.int32, device=dev)
    idx[1, 1, 10] = -1
    out, lse = ops.sparse_mla_decode(q, cache, idx, SCALE, topk_length=lens, backend="triton")
    masked = torch.where(torch.arange(topk, device=dev)[None, None, :] < lens[..., None], idx, -1)
    ref_out, ref_lse = naive.naive_sparse_mla_decode(q, cache, masked, SCALE)
    _check(out, lse, ref_out, ref_lse)
    assert (out[0, 0] == 0).all() and (lse[0, 0] == float("-inf")).all()


def test_prefill_topk_length(triton_device, seed):
    dev = triton_device
    s_kv, topk = 100, 96
    q = torch.randn(5, 16, 576, device=dev).bfloat16()
    kv = torch.randn(s_kv, 1, 576, device=dev).bfloat16()
    idx = torch.randint(0, s_kv, (5, 1, topk), dtype=torch.int32, device=dev)
    lens = torch.tensor([0, 1, 64, 95, 96], dtype=torch.int32, device=dev)
    out, lse = ops.sparse_mla_prefill(q, kv, idx, SCALE, topk_length=lens, backend="triton")
    masked = torch.where(torch.arange(topk, device=dev)[None, None, :] < lens[:, None, None], idx, -1)
    ref_out, ref_lse = naive.naive_sparse_mla_prefill(q, kv, masked, SCALE)
    _check(out, lse, ref_out, ref_lse)


def test_plan_splits():
    dev = torch.device("cpu")
    assert tk.plan_splits(256, 2, 2048, 64, dev) == 1            # b=128, s_q=2, h=128: enough programs
    s = tk.plan_splits(1, 1, 2048, 64, dev)
    assert 1 < s <= 2048 // tk.MIN_KEYS_PER_SPLIT
    assert tk.plan_splits(1, 1, 128, 64, dev) == 1               # too few keys to split


# ------------------------------------------------------------------ prefill

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16], ids=["bf16", "f32", "f16"])
@pytest.mark.parametrize("s_q,h,topk,s_kv", [(3, 16, 64, 50), (1, 24, 100, 300), (2, 64, 32, 20)],
                         ids=lambda v: str(v))
def test_prefill_matches_reference(triton_device, seed, dtype, s_q, h, topk, s_kv):
    dev = triton_device
    q = torch.randn(s_q, h, 576, device=dev).to(dtype)
    kv = torch.randn(s_kv, 1, 576, device=dev).to(dtype)
    idx = _indices(s_q, 1, topk, s_kv, min(topk, s_kv), dev).reshape(s_q, 1, topk)
    idx[0, 0, :3] = -1
    out, lse = ops.sparse_mla_prefill(q, kv, idx, SCALE, backend="triton")
    # reference on the kernel's dot operands: bf16 (fp16 when q and kv are both fp16)
    rd = torch.float16 if dtype == torch.float16 else torch.bfloat16
    ref_out, ref_lse = naive.naive_sparse_mla_prefill(q.to(rd).float(), kv.to(rd).float(), idx, SCALE)
    assert out.dtype == dtype
    _check(out, lse, ref_out, ref_lse, same_dtype=False)


def test_prefill_causal_window_equals_dense(triton_device, seed):
    """Each query attends to keys 0..i (selected in shuffled order): equals dense causal attention."""
    dev = triton_device
    s, h = 9, 16
    q = torch.randn(s, h, 576, device=dev).bfloat16()
    kv = torch.randn(s, 1, 576, device=dev).bfloat16()
    idx = torch.full((s, 1, 16), -1, dtype=torch.int32, device=dev)
    for i in range(s):
        idx[i, 0, torch.randperm(16)[: i + 1]] = torch.randperm(i + 1).int().to(dev)
    out, lse = ops.sparse_mla_prefill(q, kv, idx, SCALE, backend="triton")
    sc = torch.einsum("qhd,kd->qhk", q.float(), kv[:, 0].float()) * SCALE
    sc = sc.masked_fill(torch.ones(s, s, dtype=torch.bool, device=dev).triu(1)[:, None], float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(sc, -1), rtol=1e-4, atol=1e-4)
    dense = torch.softmax(sc, -1) @ kv[:, 0, :512].float()
    torch.testing.assert_close(out.float(), dense, rtol=2e-2, atol=2e-2)
    assert math.isfinite(lse.min().item())


def test_launcher_rejects_bad_input(triton_device):
    dev = triton_device
    cache = _cache(False, 1, dev)
    q = torch.randn(1, 1, 16, 576, device=dev).bfloat16()
    idx = torch.zeros(1, 1, 8, dtype=torch.int64, device=dev)
    with pytest.raises(TypeError, match="indices"):
        tk.sparse_mla_decode(q, cache, idx, SCALE)
    with pytest.raises(ValueError, match="d_v"):
        tk.sparse_mla_decode(q, cache, idx.int(), SCALE, 256)
    with pytest.raises(ValueError, match="kv_cache"):
        tk.sparse_mla_decode(q, cache[:, :32], idx.int(), SCALE)
    with pytest.raises(ValueError, match="indices"):
        tk.sparse_mla_decode(q, cache, idx.int()[:, :, None], SCALE)
    with pytest.raises(ValueError, match="kv_c"):
        tk.mla_cache_write(torch.randn(3, 500, device=dev), torch.randn(3, 64, device=dev), cache,
                           torch.zeros(3, dtype=torch.int32, device=dev))


# ------------------------------------------------------------------ full size (GPU suite only)

@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("b,s_q,h", [(8, 2, 128), (2, 1, 16), (1, 1, 128)], ids=lambda v: str(v))
def test_decode_full_size(triton_device, seed, fp8, b, s_q, h):
    """Real shapes (topk 2048, 576-wide latent, 64-token pages) on the GPU, incl. the split-K path (small b)."""
    dev = triton_device
    ctx, topk = 4096, 2048
    cache = _cache(fp8, b * ctx // PAGE, dev)
    q = torch.randn(b, s_q, h, 576, device=dev).bfloat16()
    idx = _indices(b, s_q, topk, b * ctx, topk - 100, dev)
    out, lse = ops.sparse_mla_decode(q, cache, idx, SCALE, backend="triton")
    ref_out, ref_lse = naive.naive_sparse_mla_decode(q, cache, idx, SCALE)
    _check(out, lse, ref_out, ref_lse)


@pytest.mark.gpu
def test_prefill_full_size(triton_device, seed):
    dev = triton_device
    s_q, h, topk, s_kv = 256, 128, 2048, 4096
    q = torch.randn(s_q, h, 576, device=dev).bfloat16()
    kv = torch.randn(s_kv, 1, 576, device=dev).bfloat16()
    idx = torch.rand(s_q, s_kv, device=dev).topk(topk, dim=-1).indices.int().view(s_q, 1, topk)
    idx[:, :, -300:] = -1
    out, lse = ops.sparse_mla_prefill(q, kv, idx, SCALE, backend="triton")
    ref_out, ref_lse = naive.naive_sparse_mla_prefill(q, kv, idx, SCALE)
    _check(out, lse, ref_out, ref_lse)

# ====================================================================== CUDA backend
# ops/sparse_mla/cuda.py (csrc/sparse_mla/) vs the naive references, on a GPU only (marked gpu: skipped on CPU); a failed
# JIT build fails these tests, it does not skip them. The cuda_ext fixture (tests/conftest.py) returns
# ops/sparse_mla/cuda.py.
CUDA_FAMILY = "sparse_mla"
DEV = "cuda"


def _same_inf(a, b):
    assert torch.equal(torch.isinf(a), torch.isinf(b)), "-inf positions differ"


def _mla_cache(fp8: bool, n_tokens: int):
    pages = -(-n_tokens // naive.PAGE) + 1
    if fp8:
        cache = torch.zeros(pages, naive.PAGE, naive.FP8_BYTES, dtype=torch.uint8, device=DEV)
    else:
        cache = torch.zeros(pages, naive.PAGE, naive.HEAD_576, dtype=torch.bfloat16, device=DEV)
    slots = torch.randperm(pages * naive.PAGE, device=DEV)[:n_tokens]
    naive.naive_mla_cache_write(torch.randn(n_tokens, 512, device=DEV), torch.randn(n_tokens, 64, device=DEV),
                              cache, slots)
    return cache, slots


@pytest.fixture(params=["auto", "sm80"])
def mla_path(request, monkeypatch):
    if request.param == "sm80":
        monkeypatch.setenv("DSV32_CUDA_MLA", "sm80")
    return request.param


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "bf16"])
@pytest.mark.parametrize("b,s_q,h,topk", [(2, 1, 16, 64), (1, 2, 128, 2048), (3, 1, 20, 100), (1, 1, 64, 31)],
                         ids=lambda v: str(v))
def test_cuda_sparse_mla_decode(cuda_ext, seed, mla_path, fp8, b, s_q, h, topk):
    n_tok = max(topk * 2, 300)
    cache, slots = _mla_cache(fp8, n_tok)
    q = (torch.randn(b, s_q, h, 576, device=DEV) * 0.5).to(torch.bfloat16)
    idx = slots[torch.randint(0, n_tok, (b, s_q, topk), device=DEV)].int()
    idx[torch.rand(idx.shape, device=DEV) < 0.2] = -1
    idx[0, 0] = -1                                   # a row with no valid key: out 0, lse -inf
    scale = 576 ** -0.5
    out, lse = cuda_ext.sparse_mla_decode(q, cache, idx, scale)
    ref_out, ref_lse = naive.naive_sparse_mla_decode(q, cache, idx, scale)
    assert out.dtype == torch.bfloat16 and out.shape == (b, s_q, h, 512)
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=2e-2, atol=2e-2)
    _same_inf(lse, ref_lse)
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], rtol=1e-3, atol=1e-3)
    assert (out[0, 0] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("s_q,h,topk,s_kv", [(5, 16, 64, 300), (3, 24, 100, 500), (4, 64, 2048, 4096),
                                             (2, 128, 2048, 5000), (3, 128, 31, 40), (4, 16, 130, 700),
                                             (3, 64, 2000, 3000)], ids=lambda v: str(v))
@pytest.mark.parametrize("lens", [False, True], ids=["all", "topk_length"])
def test_cuda_sparse_mla_prefill(cuda_ext, seed, mla_path, s_q, h, topk, s_kv, lens):
    """Both prefill kernels (auto: the sm_90a wgmma one on Hopper, 64 heads per CTA; sm80: 16 / 32 / 64
    heads per CTA) vs naive_sparse_mla_prefill: topk below / above multiples of 64, -1 indices, a row with
    none, a causal-like row whose valid indices are few (all-invalid chunks skipped), per-row topk_length
    (entries past it hold valid-looking indices that must not be read), an index past kv (masked like -1)."""
    if mla_path == "auto" and torch.cuda.get_device_capability() == (9, 0):
        assert torch.ops.dsv32.has_sm90_mla_prefill(), "built without the sm_90a prefill (CuTe or 9.0a missing)"
    q = (torch.randn(s_q, h, 576, device=DEV) * 0.5).to(torch.bfloat16)
    kv = torch.randn(s_kv, 1, 576, device=DEV).to(torch.bfloat16)
    idx = torch.randint(0, s_kv, (s_q, 1, topk), device=DEV, dtype=torch.int32)
    idx[torch.rand(idx.shape, device=DEV) < 0.2] = -1
    idx[0] = -1                                          # no valid key: out 0, lse -inf
    idx[1, 0, 3:] = -1                                   # 3 valid keys in the first chunk only
    length = None
    if lens:  # 0, a partial first chunk, past a chunk boundary, and more than topk (clamped)
        length = torch.tensor([0, topk, 5, topk + 9, max(topk - 70, 1), topk // 2, 65][:s_q], device=DEV,
                              dtype=torch.int32)
    scale = 576 ** -0.5
    out, lse = cuda_ext.sparse_mla_prefill(q, kv, idx, scale, topk_length=length)
    ref_out, ref_lse = naive.naive_sparse_mla_prefill(q, kv, idx, scale, topk_length=length)
    assert out.dtype == torch.bfloat16 and out.shape == (s_q, h, 512) and lse.shape == (s_q, h)
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=2e-2, atol=2e-2)
    _same_inf(lse, ref_lse)
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], rtol=1e-3, atol=1e-3)
    assert (out[0] == 0).all()
    bad = idx.clone()
    bad[1, 0, 1] = s_kv + 7                              # past kv: masked like -1, never dereferenced
    out_b, _ = cuda_ext.sparse_mla_prefill(q, kv, bad, scale, topk_length=length)
    ref_b, _ = naive.naive_sparse_mla_prefill(q, kv, torch.where(bad >= s_kv, -1, bad), scale, topk_length=length)
    torch.testing.assert_close(out_b.float(), ref_b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_cuda_sparse_mla_prefill_bounds_flag(cuda_ext, seed, monkeypatch):
    monkeypatch.setenv("DSV32_CUDA_CHECK_BOUNDS", "1")
    q = torch.randn(2, 16, 576, device=DEV).to(torch.bfloat16)
    kv = torch.randn(50, 1, 576, device=DEV).to(torch.bfloat16)
    idx = torch.zeros(2, 1, 8, dtype=torch.int32, device=DEV)
    idx[1, 0, 5] = 50
    with pytest.raises(IndexError, match="sparse_mla_prefill: indices"):
        cuda_ext.sparse_mla_prefill(q, kv, idx, 0.1)


@pytest.mark.gpu
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


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_mla_cache_write_bit_exact(cuda_ext, seed, fp8, dtype):
    t, pages = 150, 4
    kv_c = (torch.randn(t, 512, device=DEV) * 3).to(dtype)
    k_pe = torch.randn(t, 64, device=DEV).to(dtype)
    slots = torch.randperm(pages * 64, device=DEV)[:t]
    slots[::7] = -1
    shape = (pages, 64, 656 if fp8 else 576)
    dt = torch.uint8 if fp8 else torch.bfloat16
    got, ref = torch.zeros(shape, dtype=dt, device=DEV), torch.zeros(shape, dtype=dt, device=DEV)
    cuda_ext.mla_cache_write(kv_c, k_pe, got, slots)
    naive.naive_mla_cache_write(kv_c, k_pe, ref, slots)
    assert torch.equal(got.view(torch.uint8) if not fp8 else got, ref.view(torch.uint8) if not fp8 else ref)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["mla_write", "mla_decode"])
def test_cuda_bound_checks_raise_in_debug_mode(cuda_ext, cuda_bounds_checked, op):
    """Out-of-range values never reach memory (masked like -1); with DSV32_CUDA_CHECK_BOUNDS=1 they raise
    an IndexError naming the tensor."""
    pages = 2
    mcache = torch.zeros(pages, 64, 656, dtype=torch.uint8, device=DEV)
    bad = torch.tensor([3, pages * 64 + 5], dtype=torch.int32, device=DEV)
    calls = {
        "mla_write": ("slot_mapping", lambda: cuda_ext.mla_cache_write(
            torch.randn(2, 512, device=DEV), torch.randn(2, 64, device=DEV), mcache, bad)),
        "mla_decode": ("indices", lambda: cuda_ext.sparse_mla_decode(
            torch.randn(1, 1, 16, 576, device=DEV).bfloat16(), mcache, bad.view(1, 1, 2), 0.1)),
    }
    cuda_bounds_checked(*calls[op])


@pytest.mark.gpu
def test_cuda_sparse_mla_decode_rows_past_65535(cuda_ext, seed, mla_path):
    """b * s_q > 65535 query rows: the 1-D grid serves them (a rows grid axis would stop at 65535)."""
    rows, h, topk = 65536 + 300, 16, 8
    cache, slots = _mla_cache(False, 256)
    q = (torch.randn(rows, 1, h, 576, device=DEV) * 0.5).to(torch.bfloat16)
    idx = slots[torch.randint(0, 256, (rows, 1, topk), device=DEV)].int()
    out, lse = cuda_ext.sparse_mla_decode(q, cache, idx, 576 ** -0.5)
    tail = slice(rows - 400, rows)  # check the rows past the old limit against the reference
    ref_out, ref_lse = naive.naive_sparse_mla_decode(q[tail], cache, idx[tail], 576 ** -0.5)
    torch.testing.assert_close(out[tail].float(), ref_out.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse[tail], ref_lse, rtol=1e-3, atol=1e-3)
