"""CPU unit tests of csrc/'s __host__ __device__ headers (fp8 codec, ue8m0, cache layouts, top-k radix
selection, grouped-GEMM tiling), compiled with g++ and with nvcc (host side, __CUDACC__ defined) and
checked against the torch references in deepseek_v32_plugin.ops.*.naive on fresh random inputs."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from csrc_paths import csrc_dir, nvcc

from deepseek_v32_plugin.ops.fp8_quant.naive import FP8_DTYPE, fp8_saturate_cast, ue8m0_scale
from deepseek_v32_plugin.ops.indexer import naive as ix
from deepseek_v32_plugin.ops.sparse_mla import naive as mla

MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "host_headers_main.cpp")
COMPILERS = ["g++", "nvcc"]


@pytest.fixture(scope="module", params=COMPILERS)
def exe(request, tmp_path_factory):
    out = str(tmp_path_factory.mktemp(request.param.replace("+", "p")) / "host_headers")
    inc = ["-I", csrc_dir()]
    if request.param == "g++":
        if not shutil.which("g++"):
            pytest.skip("g++ not found")
        cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Werror", *inc, MAIN, "-o", out]
    else:
        if nvcc() is None:
            pytest.skip("nvcc not found")
        cmd = [nvcc(), "-std=c++17", "-O1", "-x", "cu", "-arch=sm_80", *inc, MAIN, "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    return out


def run(exe, mode, data: bytes = b"", *args) -> bytes:
    r = subprocess.run([exe, mode, *map(str, args)], input=data, capture_output=True)
    assert r.returncode == 0, f"{mode}: rc={r.returncode} {r.stderr[-2000:]}"
    return r.stdout


def test_e4m3_decode_all_bytes(exe):
    got = np.frombuffer(run(exe, "e4m3_decode"), dtype=np.float32)
    ref = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float().numpy()
    np.testing.assert_array_equal(got, ref)  # NaN == NaN for assert_array_equal


def test_e4m3_encode_matches_saturating_cast(exe, seed):
    x = torch.cat([
        torch.randn(20000) * torch.exp2(torch.randint(-14, 10, (20000,)).float()),  # every binade
        torch.tensor([0.0, -0.0, 448.0, -448.0, 449.0, 464.0, 1e9, -1e9, float("inf"), float("-inf"),
                      2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -11, 2.0 ** -6, 0.0029296875, 0.0009765625]),
        # exact midpoints between neighbouring e4m3 values: round-half-even must match
        (lambda v: (v[:-1] + v[1:]) / 2)(torch.arange(0, 127, dtype=torch.uint8).view(FP8_DTYPE).float()),
    ]).float()
    got = np.frombuffer(run(exe, "e4m3_encode", x.numpy().tobytes()), dtype=np.uint8)
    ref = fp8_saturate_cast(x).view(torch.uint8).numpy()
    bad = np.nonzero(got != ref)[0]
    assert bad.size == 0, f"{bad.size} mismatches, e.g. x={x[bad[:5]].tolist()} got={got[bad[:5]]} ref={ref[bad[:5]]}"


def test_ue8m0_scale(exe, seed):
    amax = torch.cat([torch.rand(5000) * torch.exp2(torch.randint(-20, 20, (5000,)).float()),
                      torch.tensor([0.0, 1e-4, 5e-5, 448.0, 896.0, 1.0, 3.5])]).float()
    raw = run(exe, "ue8m0", amax.numpy().tobytes())
    n = amax.numel()
    got = np.frombuffer(raw[:4 * n], dtype=np.float32)
    exps = np.frombuffer(raw[4 * n:], dtype=np.uint8)
    ref = ue8m0_scale(amax).numpy()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(exps.astype(np.int32) - 127, np.log2(ref).astype(np.int32))


def test_e4m3_to_f16_operand_trick(exe, seed):
    words = torch.randint(0, 2 ** 32, (4096,), dtype=torch.int64).to(torch.uint32)
    words[:64] = torch.arange(256, dtype=torch.int64).view(64, 4).mul(torch.tensor([1, 256, 65536, 2 ** 24])).sum(1).to(torch.uint32)
    got = np.frombuffer(run(exe, "f16x2", words.numpy().tobytes()), dtype=np.float32)
    ref = torch.from_numpy(words.numpy().view(np.uint8).copy()).view(FP8_DTYPE).float().numpy()
    nan = np.isnan(ref)  # the e4m3 NaN pattern is documented to decode to +-480
    np.testing.assert_array_equal(got[~nan], ref[~nan])
    np.testing.assert_array_equal(np.abs(got[nan]), 480.0)


def test_bf16_rounding(exe, seed):
    x = (torch.randn(10000) * 1e3).float()
    got = np.frombuffer(run(exe, "bf16", x.numpy().tobytes()), dtype=np.uint16)
    np.testing.assert_array_equal(got, x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("n,k", [(300, 64), (5000, 2048), (1000, 2048), (4096, 100)], ids=lambda v: str(v))
def test_radix_topk_matches_torch(exe, seed, n, k):
    rows = 3
    x = torch.randn(rows, n)
    x[0, : n // 2] = x[0, 0]                       # many ties at the threshold
    x[1] = torch.randint(-3, 3, (n,)).float()       # few distinct values
    x[2, ::7] = float("-inf")
    got = torch.from_numpy(np.frombuffer(run(exe, "topk", x.numpy().tobytes(), rows, n, k), dtype=np.int32).copy())
    got = got.view(rows, k).long()
    kk = min(k, n)
    assert (got[:, kk:] == -1).all()
    sel = got[:, :kk]
    assert all(len(set(r.tolist())) == kk for r in sel), "duplicate indices"
    vals = torch.gather(x, 1, sel)
    ref = x.topk(kk, dim=1).values
    torch.testing.assert_close(vals, ref, rtol=0, atol=0)  # same multiset, same (descending) order



@pytest.mark.parametrize("gen", ["normal", "concentrated", "tied", "tied_narrow", "masked"])
def test_radix_topk_split_model_matches_torch(exe, seed, gen):
    """The CUDA split path's algorithm (serial model over 8 chunks on radix_select.h's helpers): top-byte +
    fitted 2^9-bin fine histogram, compaction + candidate resolution, or (cap 32: heavy ties) 1-2 tie passes."""
    rows, n, k = 2, 6000, 512
    x = {"normal": lambda: torch.randn(rows, n),
         "concentrated": lambda: 1.0 + torch.rand(rows, n) * 2.0 ** -9,
         "tied": lambda: torch.randint(0, 16, (rows, n)).float(),
         "tied_narrow": lambda: 1.0 + torch.randint(0, 16, (rows, n)).float() * 2.0 ** -20,
         "masked": lambda: torch.where(torch.rand(rows, n) < 0.3, float("-inf"), -torch.rand(rows, n))}[gen]()
    cap = 32 if gen.startswith("tied") else 2048
    got = torch.from_numpy(np.frombuffer(run(exe, "topk_split", x.numpy().tobytes(), rows, n, k, 8, cap),
                                         dtype=np.int32).copy()).view(rows, k).long()
    assert all(len(set(r.tolist())) == k for r in got), "duplicate indices"
    torch.testing.assert_close(torch.gather(x, 1, got), x.topk(k, dim=1).values, rtol=0, atol=0)


def test_split_count_matches_triton_plan(exe):
    """CUDA and Triton split the same shapes the same way (topk::split_count == indexer.topk_splits)."""
    tk = pytest.importorskip("deepseek_v32_plugin.triton_kernels.indexer")
    shapes = [(4, 131072, 132), (1, 131072, 132), (64, 9295, 132), (4, 8192, 132), (16, 65536, 132),
              (33, 131072, 132), (2, 163840, 114), (0, 100, 132), (1, 1, 132)]
    got = np.frombuffer(run(exe, "split_count", np.array(shapes, dtype=np.int32).tobytes()), dtype=np.int32)
    assert got.tolist() == [tk.topk_splits(r, n, s) for r, n, s in shapes]

def test_indexer_cache_offsets(exe, seed):
    pages = 5
    cache = torch.zeros(pages, ix.PAGE, ix.BYTES_PER_TOKEN, dtype=torch.uint8)
    t = 100
    slots = torch.randperm(pages * ix.PAGE)[:t]
    k_fp8, k_scale = ix.naive_indexer_quant(torch.randn(t, 128))
    ix.naive_indexer_cache_write(k_fp8, k_scale, cache, slots)
    raw = run(exe, "indexer_offsets", slots.numpy().astype(np.int64).tobytes())
    ko = np.frombuffer(raw[: 8 * t], dtype=np.int64)
    so = np.frombuffer(raw[8 * t:], dtype=np.int64)
    flat = cache.view(-1).numpy()
    keys = np.stack([flat[o: o + 128] for o in ko])
    scales = np.stack([flat[o: o + 4] for o in so]).view(np.float32).reshape(-1)
    np.testing.assert_array_equal(keys, k_fp8.view(torch.uint8).numpy())
    np.testing.assert_array_equal(scales, k_scale.numpy())


def test_paged_slots_and_row_end(exe, seed):
    mp = 9
    table = torch.randperm(50)[:mp].int()
    pos = torch.randint(0, mp * ix.PAGE, (500,), dtype=torch.int32)
    got = np.frombuffer(run(exe, "paged_slots", np.concatenate([table.numpy(), pos.numpy()]).tobytes(), mp),
                        dtype=np.int32)
    ref = ix.naive_indices_to_slots(pos[None], table[None])[0].numpy()
    np.testing.assert_array_equal(got, ref)
    trip = [(c, nn, j) for c in (0, 1, 5, 64, 130) for nn in (1, 2, 4) for j in range(nn)]
    got = np.frombuffer(run(exe, "paged_row_end", np.array(trip, dtype=np.int32).tobytes()), dtype=np.int32)
    # reference: naive_fp8_paged_indexer_logits uses ke = ctx - next_n + 1 + j over [0, ctx)
    ref = [min(max(c - nn + 1 + j, 0), c) for c, nn, j in trip]
    assert got.tolist() == ref


def test_mla_fp8_row_codec(exe, seed):
    t = 40
    kv_c = torch.randn(t, 512) * torch.exp2(torch.randint(-8, 8, (t, 1)).float())
    k_pe = torch.randn(t, 64)
    x = torch.cat([kv_c, k_pe], 1).float()
    raw = run(exe, "mla_encode", x.numpy().tobytes())
    rows = np.frombuffer(raw[: t * 656], dtype=np.uint8).reshape(t, 656)
    dec = np.frombuffer(raw[t * 656:], dtype=np.float32).reshape(t, 576)
    cache = torch.zeros(1, 64, 656, dtype=torch.uint8)
    mla.naive_mla_cache_write(kv_c, k_pe, cache, torch.arange(t))
    np.testing.assert_array_equal(rows, cache[0, :t].numpy())
    np.testing.assert_array_equal(dec, mla.naive_mla_cache_gather(cache, torch.arange(t)).numpy())


def test_collect_groups(exe, seed):
    bm, ng = 64, 8
    ids = torch.randint(-1, ng + 1, (1000,), dtype=torch.int32)   # includes -1 and the out-of-range ng
    ids[:128] = 3                                                  # aligned tiles: one group
    raw = np.frombuffer(run(exe, "collect_groups", ids.numpy().tobytes(), bm, ng), dtype=np.int32)
    raw = raw.reshape(-1, bm + 1)
    for i, rec in enumerate(raw):
        tile = ids[i * bm:(i + 1) * bm].tolist()
        ref = []
        for g in tile:
            if 0 <= g < ng and g not in ref:
                ref.append(g)
        assert rec[0] == len(ref) and rec[1:1 + len(ref)].tolist() == ref, f"tile {i}"
    assert raw[0, 0] == 1 and raw[1, 0] == 1


@pytest.mark.parametrize("mt,nt,band", [(1, 1, 8), (7, 5, 4), (16, 3, 8), (33, 17, 6)])
def test_tile_coords_is_a_bijection(exe, mt, nt, band):
    got = np.frombuffer(run(exe, "tile_coords", b"", mt, nt, band), dtype=np.int32).reshape(-1, 2)
    assert got[:, 0].min() >= 0 and got[:, 0].max() < mt and got[:, 1].min() >= 0 and got[:, 1].max() < nt
    assert len({(a, b) for a, b in got.tolist()}) == mt * nt


def test_masked_rows(exe):
    quads = [(m0, 64, 200, mm) for m0 in (0, 64, 128, 192) for mm in (0, 1, 64, 100, 200, 300)]
    got = np.frombuffer(run(exe, "masked_rows", np.array(quads, dtype=np.int32).tobytes()), dtype=np.int32)
    ref = [max(0, min(bm, min(mm, m) - m0)) for m0, bm, m, mm in quads]
    assert got.tolist() == ref


def test_swizzle_conflict_free(exe):
    off = np.frombuffer(run(exe, "swizzle"), dtype=np.int32).reshape(64, 8)
    # a bijection of each row's 8 chunks, rows at a 128-byte pitch
    for r in range(64):
        assert sorted((off[r] - 128 * r).tolist()) == list(range(0, 128, 16))
    # fragment reads: quarter-warp = rows (r, r+1) x chunks (4h + t, t < 4): 8 distinct 16-B bank groups
    for r in range(0, 64, 2):
        for h in range(2):
            banks = {(int(off[rr, 4 * h + t]) % 128) // 16 for rr in (r, r + 1) for t in range(4)}
            assert len(banks) == 8


def test_sm90_smem_layouts_match_cute(tmp_path):
    """The sm_90a kernels' hand-written smem loaders address exactly what CuTe's wgmma layouts describe."""
    from csrc_paths import cutlass_include
    if nvcc() is None or cutlass_include() is None:
        pytest.skip("needs nvcc and the CuTe headers (nvidia-cutlass)")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cute_layouts_main.cu")
    out = str(tmp_path / "cute_layouts")
    cmd = [nvcc(), "-std=c++17", "--expt-relaxed-constexpr", "-O1", "-I", csrc_dir(), "-I", cutlass_include(),
           src, "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    r = subprocess.run([out], capture_output=True, text=True)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" 0 mismatches") == 10
