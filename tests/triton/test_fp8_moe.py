"""Triton grouped FP8 GEMMs, SiLU-and-mul + FP8 quant, and the FP8 byte codecs vs the naive references.

Interpreter-sized shapes with fresh random inputs. `fp8_path` runs each kernel twice: native fp8e4nv
(sm_89+) and the sm_80 path that decodes/encodes e4m3 bytes with integer arithmetic.
Every backend of the family is tested here: the Triton kernels first, then (section "CUDA backend", GPU
only) the CUDA extension's wrappers, ops/fp8_moe/cuda.py.
"""
import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

from deepseek_v32_plugin.ops import fp8_moe as ops  # noqa: E402
from deepseek_v32_plugin.ops.fp8_moe import naive  # noqa: E402
from deepseek_v32_plugin.ops.fp8_quant.naive import (fp8_saturate_cast, naive_fp8_dequant_act,  # noqa: E402
                                                      naive_fp8_quant_act, naive_fp8_quant_weight)
from deepseek_v32_plugin.triton_kernels import _fp8_util as fu  # noqa: E402  (must import: no silent skip)
from deepseek_v32_plugin.triton_kernels import fp8_moe as tk  # noqa: E402


@pytest.fixture(params=["native", "sm80"])
def fp8_path(request, monkeypatch):
    if request.param == "sm80":
        monkeypatch.setattr(tk, "native_fp8", lambda dev: False)
    return request.param


def _weights(g, n, k, dev):
    ws, ss = [], []
    for _ in range(g):
        w = torch.randn(n, k, device=dev) * torch.rand(1, device=dev).add(0.05)
        w[: n // 2, : k // 2] *= 20.0                       # blocks with different scales
        q, s = naive_fp8_quant_weight(w)
        ws.append(q)
        ss.append(s)
    return torch.stack(ws), torch.stack(ss)


def _acts(shape, dev):
    x = torch.randn(shape, device=dev) * torch.rand(shape[:-1] + (1,), device=dev).add(0.01) * 10
    x[..., :128] *= 1e-3                                     # tiny group: subnormal fp8 values
    return naive_fp8_quant_act(x)


@pytest.fixture
def nan_out(monkeypatch):
    """Outputs the launchers allocate start as NaN: rows a kernel must not write (padding, rows past
    masked_m: no zero-fill) stay NaN, so the tests see every store."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(tk.torch, "empty", empty)


def _close(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.float().abs().amax().clamp_min(1e-6)
    torch.testing.assert_close(got.float() / scale, want.float() / scale, rtol=1e-2, atol=2e-3)


# ------------------------------------------------------------------ grouped GEMM, contiguous

@pytest.mark.parametrize("case", ["aligned", "unsorted", "empty_groups", "all_padding"])
def test_grouped_contiguous_matches_reference(triton_device, seed, case, fp8_path, nan_out):
    dev = triton_device
    G, N, K = 4, 160, 256                                   # N not a multiple of 128: ragged scale block
    if case == "aligned":                                    # DeepGEMM layout: groups padded to 128 rows with -1
        counts = [100, 0, 128, 30]
        m_idx = []
        for g, c in enumerate(counts):
            pad = (-c) % 128
            m_idx += [g] * c + [-1] * pad
        m_idx = torch.tensor(m_idx, dtype=torch.int32, device=dev)
    elif case == "unsorted":                                 # rows of a tile spread over several experts
        m_idx = torch.randint(-1, G + 1, (150,), dtype=torch.int32, device=dev)   # G is out of range -> 0
    elif case == "empty_groups":                             # only expert 2, unaligned length
        m_idx = torch.full((70,), 2, dtype=torch.int32, device=dev)
        m_idx[-5:] = -1
    else:
        m_idx = torch.full((33,), -1, dtype=torch.int32, device=dev)
    M = m_idx.numel()
    a, a_s = _acts((M, K), dev)
    b, b_s = _weights(G, N, K, dev)
    got = ops.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx, backend="triton")
    want = naive.naive_fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx)
    invalid = (m_idx < 0) | (m_idx >= G)
    assert got[invalid].isnan().all()                       # padding rows are not written (no zero-fill)
    if (~invalid).any():
        _close(got[~invalid], want[~invalid])


def test_grouped_contiguous_single_row_fp32_out(triton_device, seed):
    dev = triton_device
    a, a_s = _acts((1, 128), dev)
    b, b_s = _weights(2, 128, 128, dev)
    m_idx = torch.tensor([1], dtype=torch.int32, device=dev)
    got = ops.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx, torch.float32, backend="triton")
    want = naive.naive_fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx, torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_grouped_saturated_inputs(triton_device, seed):
    """Values at the e4m3 limits (+-448, saturated casts) and the smallest subnormals."""
    dev = triton_device
    x = torch.randn(20, 256, device=dev) * 1e4
    x[:, 5] = 1e9                                              # amax group: others saturate at scale boundary
    a = fp8_saturate_cast(x / 64.0)                            # many values clipped to +-448
    a_s = torch.full((20, 2), 0.5, device=dev)
    b, b_s = _weights(1, 128, 256, dev)
    b[0, :, :3] = fp8_saturate_cast(torch.tensor([448.0, -448.0, 2.0 ** -9], device=dev))
    m_idx = torch.zeros(20, dtype=torch.int32, device=dev)
    got = ops.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx, backend="triton")
    want = naive.naive_fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx)
    assert torch.isfinite(got.float()).all()
    _close(got, want)


# ------------------------------------------------------------------ grouped GEMM, masked

@pytest.mark.parametrize("masked", [[0, 17, 40], [40, 0, 1]], ids=["m0-17-40", "m40-0-1"])
def test_grouped_masked_matches_reference(triton_device, seed, masked, fp8_path, nan_out):
    dev = triton_device
    G, M, N, K = 3, 40, 128, 256
    a, a_s = _acts((G, M, K), dev)
    b, b_s = _weights(G, N, K, dev)
    mm = torch.tensor(masked, dtype=torch.int32, device=dev)
    got = ops.fp8_grouped_gemm_nt_masked(a, a_s, b, b_s, mm, backend="triton")
    want = naive.naive_fp8_grouped_gemm_nt_masked(a, a_s, b, b_s, mm)
    for g in range(G):
        assert got[g, masked[g]:].isnan().all()             # rows past masked_m are not written
        if masked[g]:
            _close(got[g, : masked[g]], want[g, : masked[g]])


# ------------------------------------------------------------------ SiLU-and-mul + quant

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_silu_and_mul_fp8_quant(triton_device, seed, dtype, fp8_path):
    dev = triton_device
    M, N = 19, 384
    x = (torch.randn(M, 2 * N, device=dev) * torch.rand(M, 1, device=dev).add(0.1) * 8).to(dtype)
    x[0, :128] = 0.0                       # all-zero group: amax floor
    x[1, N:N + 128] *= 1e-6                # tiny values: subnormal codes
    q, s = ops.silu_and_mul_fp8_quant(x, backend="triton")
    rq, rs = naive.naive_silu_and_mul_fp8_quant(x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (M, N) and s.shape == (M, N // 128)
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    deq, rdeq = naive_fp8_dequant_act(q, s), naive_fp8_dequant_act(rq, rs)
    # silu's exp may differ by an ulp: allow one e4m3 step (1/8 relative) on rare elements
    step = (rdeq.abs() / 8).clamp_min(s.repeat_interleave(128, 1) * 2.0 ** -9)
    assert ((deq - rdeq).abs() <= step + 1e-30).all()
    assert (q.view(torch.uint8) == rq.view(torch.uint8)).float().mean() > 0.99


def test_silu_and_mul_fp8_quant_skips_padding_rows(triton_device, seed, fp8_path, nan_out):
    """With the padded layout's m_indices, rows < 0 are neither read nor written (NaN from nan_out stays, NaN
    input there is never seen); valid rows equal the reference. Rows 16..31 fill one whole 16-row block
    (the program exits), other blocks mix valid and padding rows."""
    dev = triton_device
    M, N = 40, 256
    x = (torch.randn(M, 2 * N, device=dev) * 4).bfloat16()
    rows = torch.tensor([0] * 5 + [-1] * 27 + [3, 3, 3, -1, 7, 7, -1, 7], dtype=torch.int32, device=dev)
    pad = rows < 0
    x[pad] = float("nan")
    q, s = ops.silu_and_mul_fp8_quant(x, rows, backend="triton")
    rq, rs = naive.naive_silu_and_mul_fp8_quant(x[~pad])
    assert s[pad].isnan().all() and q[pad].float().isnan().all()
    torch.testing.assert_close(s[~pad], rs, rtol=0, atol=0)
    assert (q[~pad].view(torch.uint8) == rq.view(torch.uint8)).float().mean() > 0.99
    with pytest.raises(ValueError, match="m_indices"):
        tk.silu_and_mul_fp8_quant(x, rows.long())


# ------------------------------------------------------------------ FP8 byte codecs (sm_80 path)

@triton.jit
def _codec_kernel(x_ptr, code_ptr, dec_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    x = tl.load(x_ptr + o, mask=m, other=0.0)
    code = fu.f32_to_e4m3_bits(x)
    tl.store(code_ptr + o, code.to(tl.uint8), mask=m)
    tl.store(dec_ptr + o, fu.e4m3_bits_to_f16(code.to(tl.uint8)).to(tl.float32) * 256.0, mask=m)


@triton.jit
def _scale_kernel(a_ptr, s_ptr, inv_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    s, inv = fu.ue8m0_scale_bits(tl.load(a_ptr + o, mask=m, other=1.0))
    tl.store(s_ptr + o, s, mask=m)
    tl.store(inv_ptr + o, inv, mask=m)


def test_e4m3_codec_exact(triton_device, seed):
    """Integer encode (RNE, saturating, subnormals) == torch's saturating cast; decode == torch for all codes."""
    dev = triton_device
    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F]                           # skip the two NaN codes
    exact = codes.to(torch.uint8).view(torch.float8_e4m3fn).float()
    mids = (exact[1:] + exact[:-1]) / 2                             # ties -> round to even
    x = torch.cat([exact, mids, torch.randn(2000) * 100, torch.randn(500) * 2.0 ** -8,
                   torch.tensor([448.0, 449.0, 464.0, 480.0, 1e6, -1e6, -464.0, 2.0 ** -10, -2.0 ** -10,
                                 3 * 2.0 ** -11, 0.0, -0.0, 2.0 ** -6 - 2.0 ** -11])]).to(dev)
    code = torch.empty(x.numel(), dtype=torch.uint8, device=dev)
    dec = torch.empty(x.numel(), dtype=torch.float32, device=dev)
    _codec_kernel[(triton.cdiv(x.numel(), 256),)](x, code, dec, x.numel(), BLOCK=256)
    want = fp8_saturate_cast(x)
    assert torch.equal(code, want.view(torch.uint8)), (x[code != want.view(torch.uint8)])[:8]
    torch.testing.assert_close(dec, want.float(), rtol=0, atol=0)


def test_ue8m0_scale_bits_exact(triton_device, seed):
    """scale = 2^ceil(log2(max(amax, 1e-4) / 448)) computed from the bits: the smallest power of two with
    amax / scale <= 448 (checked in float64), equal to the reference away from 1-ulp-above-boundary inputs,
    where the reference's float log2 rounds down (and its cast then saturates)."""
    from deepseek_v32_plugin.ops.fp8_quant.naive import ue8m0_scale
    dev = triton_device
    p2 = 2.0 ** torch.arange(-20, 20).float()
    a = torch.cat([torch.rand(1000) * 1000, torch.rand(100) * 1e-3, p2 * 448, p2 * 448 * (1 - 2.0 ** -24),
                   torch.tensor([0.0, 1e-7, 1e-4, 3e38])]).to(dev)
    above = (p2 * 448 * (1 + 2.0 ** -22)).to(dev)
    x = torch.cat([a, above])
    s = torch.empty_like(x)
    inv = torch.empty_like(x)
    _scale_kernel[(triton.cdiv(x.numel(), 256),)](x, s, inv, x.numel(), BLOCK=256)
    n = a.numel()
    torch.testing.assert_close(s[:n], ue8m0_scale(a), rtol=0, atol=0)
    torch.testing.assert_close(inv, 1.0 / s, rtol=0, atol=0)
    r = x.double().clamp_min(1e-4) / s.double()
    assert (r <= 448).all() and (r * 2 > 448).all()


def test_launcher_errors(triton_device):
    dev = triton_device
    a, a_s = _acts((4, 256), dev)
    b, b_s = _weights(2, 128, 256, dev)
    with pytest.raises(ValueError, match="m_indices"):
        tk.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, torch.zeros(4, dtype=torch.int64, device=dev))
    with pytest.raises(ValueError, match="b_scale"):
        tk.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s[:, :, :1], torch.zeros(4, dtype=torch.int32, device=dev))
    with pytest.raises(TypeError, match="float8"):
        tk.fp8_grouped_gemm_nt_contiguous(a.float(), a_s, b, b_s, torch.zeros(4, dtype=torch.int32, device=dev))
    with pytest.raises(ValueError, match="multiple of 128"):
        tk.silu_and_mul_fp8_quant(torch.randn(2, 200, device=dev))


# ------------------------------------------------------------------ full size (GPU suite only)

@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(7168, 2048), (4096, 7168)], ids=["down", "gate_up"])
def test_grouped_contiguous_full_size(triton_device, seed, n, k, nan_out):
    dev = triton_device
    counts = [512, 0, 300, 128, 1, 700, 256, 64]
    m_idx = torch.cat([torch.cat([torch.full((c,), g, dtype=torch.int32), torch.full(((-c) % 128,), -1, dtype=torch.int32)])
                       for g, c in enumerate(counts)]).to(dev)
    a, a_s = _acts((m_idx.numel(), k), dev)
    b, b_s = _weights(len(counts), n, k, dev)
    got = ops.fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx, backend="triton")
    want = naive.naive_fp8_grouped_gemm_nt_contiguous(a, a_s, b, b_s, m_idx)
    assert got[m_idx < 0].isnan().all()
    _close(got[m_idx >= 0], want[m_idx >= 0])
    # the same rows unaligned (sorted, no padding): tiles span experts -> second pass
    keep = m_idx >= 0
    got2 = ops.fp8_grouped_gemm_nt_contiguous(a[keep], a_s[keep], b, b_s, m_idx[keep], backend="triton")
    _close(got2, want[keep])


@pytest.mark.gpu
def test_grouped_masked_full_size(triton_device, seed, nan_out):
    dev = triton_device
    G, M, N, K = 8, 512, 4096, 7168
    a, a_s = _acts((G, M, K), dev)
    b, b_s = _weights(G, N, K, dev)
    mm = torch.tensor([0, 1, 128, 129, 300, 511, 512, 64], dtype=torch.int32, device=dev)
    got = ops.fp8_grouped_gemm_nt_masked(a, a_s, b, b_s, mm, backend="triton")
    want = naive.naive_fp8_grouped_gemm_nt_masked(a, a_s, b, b_s, mm)
    for g in range(G):
        assert got[g, mm[g]:].isnan().all()
        if mm[g]:
            _close(got[g, : mm[g]], want[g, : mm[g]])


def test_config_override_env(monkeypatch):
    """GPU tuning hook: a JSON env var replaces keys of the shipped launch config; unknown keys are refused."""
    from deepseek_v32_plugin.triton_kernels import sparse_mla as sm
    monkeypatch.setenv("DSV32_MOE_GEMM_CONFIG", '{"BLOCK_M": 64, "num_stages": 5}')
    cfg = tk.gemm_config_for((9, 0))
    assert cfg["BLOCK_M"] == 64 and cfg["num_stages"] == 5 and cfg["BLOCK_N"] == tk.GEMM_CONFIGS["sm90"]["BLOCK_N"]
    monkeypatch.setenv("DSV32_MOE_GEMM_CONFIG", '{"BLOCK_N": 96}')
    with pytest.raises(ValueError, match="divide 128"):
        tk.gemm_config_for((9, 0))
    monkeypatch.setenv("DSV32_MLA_ATTN_CONFIG", '{"BLOCK_X": 1}')
    with pytest.raises(ValueError, match="unknown keys"):
        sm.attn_config((9, 0))


# ------------------------------------------------------------------ routed experts on the padded layout

@pytest.mark.parametrize("t", [1, 5])
def test_moe_experts_padded_layout_matches_reference(triton_device, seed, t, nan_out):
    """ops.fp8_moe_experts with the Triton GEMMs runs on the per-expert padded layout (rows padded to
    MOE_BLOCK_M, -1 padding left unwritten: NaN here) and equals the independent per-expert reference;
    ids outside [0, E) are skipped."""
    e, d, inter, k = 8, 256, 128, 4
    w13, s13 = _weights(e, 2 * inter, d, triton_device)
    w2, s2 = _weights(e, d, inter, triton_device)
    x = torch.randn(t, d, device=triton_device)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).int().to(triton_device)
    ids[0, k - 1] = -1
    wts = torch.rand(t, k, device=triton_device)
    assert ops.moe_align_m(torch.device(triton_device), "triton") == ops.MOE_BLOCK_M
    got = ops.fp8_moe_experts(x, w13, s13, w2, s2, wts, ids, backend="triton")
    want = naive.naive_fp8_moe_experts(x, w13, s13, w2, s2, wts, ids)
    assert got.isfinite().all()
    _close(got, want)

# ====================================================================== CUDA backend
# ops/fp8_moe/cuda.py (csrc/fp8_moe/) vs the naive references, on a GPU only (marked gpu: skipped on CPU); a failed
# JIT build fails these tests, it does not skip them. The cuda_ext fixture (tests/conftest.py) returns
# ops/fp8_moe/cuda.py.
CUDA_FAMILY = "fp8_moe"
DEV = "cuda"


def _cuda_weights(g, n, k):
    w = torch.randn(g, n, k, device=DEV) * 0.05
    qs = [naive_fp8_quant_weight(w[i]) for i in range(g)]
    return torch.stack([a for a, _ in qs]), torch.stack([s for _, s in qs])


@pytest.fixture(params=["auto", "sm80"])
def gemm_path(request, monkeypatch):
    if request.param == "sm80":
        monkeypatch.setenv("DSV32_CUDA_GEMM", "sm80")
    return request.param


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["aligned", "unaligned"])
@pytest.mark.parametrize("g,n,k", [(4, 256, 512), (3, 320, 384), (8, 4096, 7168)], ids=lambda v: str(v))
def test_cuda_grouped_gemm_contiguous(cuda_ext, seed, gemm_path, layout, g, n, k):
    b, b_scale = _cuda_weights(g, n, k)
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
    ref = naive.naive_fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, torch.float32)
    got = cuda_ext.fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, torch.float32)
    ok = m_indices >= 0                       # padding rows are not written (no zero-fill)
    torch.testing.assert_close(got[ok], ref[ok], rtol=1e-4, atol=1e-4)
    got16 = cuda_ext.fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, torch.bfloat16)
    torch.testing.assert_close(got16.float()[ok], ref[ok], rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("g,m,n,k", [(3, 200, 256, 512), (4, 64, 384, 256), (2, 1000, 2048, 7168)],
                         ids=lambda v: str(v))
def test_cuda_grouped_gemm_masked(cuda_ext, seed, gemm_path, g, m, n, k):
    b, b_scale = _cuda_weights(g, n, k)
    a, a_scale = naive_fp8_quant_act(torch.randn(g, m, k, device=DEV))
    masked_m = torch.randint(0, m + 1, (g,), dtype=torch.int32, device=DEV)
    masked_m[0] = 0
    ref = naive.naive_fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, torch.float32)
    got = cuda_ext.fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, torch.float32)
    for gi in range(g):                       # rows past masked_m are not written (no zero-fill)
        torch.testing.assert_close(got[gi, :masked_m[gi]], ref[gi, :masked_m[gi]], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_sm90_gemm_is_used_on_hopper(cuda_ext):
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("Hopper only")
    assert torch.ops.dsv32.has_sm90_gemm(), "built without the sm_90a wgmma GEMM (CuTe headers or 9.0a arch missing)"
    assert torch.ops.dsv32.has_sm90_indexer() and torch.ops.dsv32.has_sm90_mla()


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_cuda_silu_and_mul_fp8_quant(cuda_ext, seed, padded):
    """padded: rows with m_indices < 0 (NaN input) are skipped; the rows compared are the valid ones."""
    x = torch.randn(45, 2 * 384, device=DEV).to(torch.bfloat16)
    rows = torch.where(torch.arange(45, device=DEV) % 3 == 1, -1, 5).int() if padded else None
    if padded:
        x[rows < 0] = float("nan")
    q, s = cuda_ext.silu_and_mul_fp8_quant(x, rows)
    if padded:
        keep = rows >= 0
        x, q, s = x[keep], q[keep], s[keep]
    rq, rs = naive.naive_silu_and_mul_fp8_quant(x)
    assert torch.equal(s, rs)
    # expf vs torch's silu may differ by an ulp: a rare neighbouring fp8 code, never more
    diff = (q.float() - rq.float()).abs() / rq.float().abs().clamp_min(2.0 ** -6)
    assert (q.view(torch.uint8) != rq.view(torch.uint8)).float().mean() < 0.01
    assert diff.max() <= 0.13
