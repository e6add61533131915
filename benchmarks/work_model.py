"""CPU-side work model of the Triton and CUDA kernels: CTAs launched, MMA tiles / K-loop iterations, bytes moved per
call, against the ideal. No GPU: each function replays its kernel's control flow on the real inputs (routing,
counts, logits), with the launch parameters taken from the launchers themselves (triton_kernels.*:
contiguous_launches / masked_launch / TOPK_CONFIG / logits_config / paged_logits_config / attn_config /
plan_splits; for the CUDA backend the launchers in csrc/, with tile constants read from the sources:
cu_const), for an H100 (sm_90a configs, 132 SMs).

    python benchmarks/work_model.py            # prints the table and writes benchmarks/WORK_MODEL.md

Definitions (per call):
  MoE grouped GEMM  tiles = MMA tiles run (BLOCK_M x BLOCK_N x K K-loops; a tile spanning k experts runs
                    k); ideal = sum_e ceil(n_e / BLOCK_M) * N / BLOCK_N.
                    bytes = unique bytes touched (active experts' weight slices + scales read, activation rows
                    read, output rows written, zero-fill included); ideal = the active experts' weights read
                    once + activations + the valid output rows.  efficiency = ideal / actual.
  Top-k             CTAs sharing each full-row pass (rows x splits: few long rows are split over several
                    CTAs, topk_launches) and full-row passes (a pass reads the whole row [ks, ke) once,
                    whichever CTAs read it); launches = kernel launches per call (split path: 5 chunk steps,
                    steps 4-5 exit at once unless the threshold bin holds > CAP keys, + 1 final per row).
  Indexer logits    K-loop iterations (BN keys each) vs ceil(keys in range / BN) per query block; key bytes
                    read (no L2 reuse) vs each key once.
  Sparse MLA decode CTAs, K-loop iterations (BLOCK_T keys), KV bytes gathered (per head block) vs once per row.
  Sparse MLA prefill  (the CUDA sm80 and sm90 kernels) the same counts for a causal prefill from position 0,
                    32-key (sm80) / 64-key (sm90) chunks, all-invalid chunks skipped; heads per CTA as the
                    launcher picks them on an H100 (sm90: always 64).
The MoE layouts are the ones GPU serving uses with device-side counts (the host does not know n_e, so the
grid is sized for the worst case): `padded` = what ops.fp8_moe_experts builds (ops.fp8_moe.moe_padded_layout:
contiguous rows of each expert padded to BLOCK_M with -1 rows, M = the static worst-case capacity
moe_capacity); `masked` = [E, T, K] with masked_m = n_e; `unaligned` = the previous orchestration (rows
sorted by expert, no padding: tiles spanning several experts run one K loop per expert).
  SiLU-and-mul quant  (between the two GEMMs, on the padded layout) CTAs and unique bytes: valid rows read
                    (2N bf16) and written (N e4m3 + N/128 fp32 scales) + m_indices; padding rows are skipped
                    by their m_indices (`before` = every row of the layout processed).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from deepseek_v32_plugin.ops import fp8_moe
from deepseek_v32_plugin.triton_kernels import fp8_moe as tk_moe
from deepseek_v32_plugin.triton_kernels import indexer as tk_ix
from deepseek_v32_plugin.triton_kernels import sparse_mla as tk_mla

CAP = (9, 0)          # H100 / H200: the sm_90a configs
NUM_SMS = 132         # H100 SXM
E, TOPK_E, HIDDEN, INTER = 256, 8, 7168, 2048     # V3.2 MoE: experts, top-8, hidden, moe_intermediate
MOE_TARGET = 0.90
TOPK_MIN_CTAS, TOPK_MAX_PASSES = 64, 3


# ------------------------------------------------------------------------------------------- MoE

def route(t: int, seed: int = 0) -> torch.Tensor:
    """[t, 8] distinct experts per token (uniform routing, fixed seed)."""
    g = torch.Generator().manual_seed(seed + t)
    return torch.rand(t, E, generator=g).topk(TOPK_E, dim=1).indices


def counts_of(ids: torch.Tensor) -> torch.Tensor:
    return torch.bincount(ids.reshape(-1), minlength=E)


def padded_m_indices(ids: torch.Tensor, block_m: int) -> torch.Tensor:
    """m_indices of the per-expert padded layout ops.fp8_moe_experts builds (ops.fp8_moe.moe_padded_layout:
    rows of each expert padded to block_m with -1, then -1 up to the static worst-case capacity)."""
    return fp8_moe.moe_padded_layout(ids, E, block_m)[0].long()


@dataclass
class MoeWork:
    ctas: int
    tiles: float
    ideal_tiles: int
    bytes: int
    ideal_bytes: int


def _ideal(counts, n, k, block_m, block_n):
    active = counts > 0
    tiles = int(sum(math.ceil(c / block_m) for c in counts.tolist())) * math.ceil(n / block_n)
    rows = int(counts.sum())
    w = int(active.sum()) * (n * k + 4 * math.ceil(n / 128) * (k // 128))
    return tiles, w + rows * (k + 4 * (k // 128)) + rows * n * 2


def moe_contiguous(m_indices: torch.Tensor, n: int, k: int, zero_fill: bool = False, launches=None) -> MoeWork:
    """Replays _grouped_gemm_contiguous_kernel's launches on m_indices (invalid ids = padding): one K loop
    per distinct expert of each tile. zero_fill=True models the kernels before issue 14's fix 2 (padding
    rows stored as zeros). launches: the CUDA kernel's (cuda_moe_launches) instead of the Triton one's."""
    launches = launches or tk_moe.contiguous_launches(m_indices.numel(), n, CAP)
    bm, bn = launches[0]["BLOCK_M"], launches[0]["BLOCK_N"]
    ctas, tiles, w_slices, rows_read, zero_rows = 0, 0.0, set(), 0, 0
    for ln in launches:
        ctas += ln["grid"][0]
        n_tiles = math.ceil(n / ln["BLOCK_N"])
        for m0 in range(0, m_indices.numel(), bm):
            ids = m_indices[m0:m0 + bm]
            experts = sorted({int(e) for e in ids.tolist() if 0 <= e < E})
            tiles += len(experts) * n_tiles * ln["BLOCK_N"] / bn
            for e in experts:
                rows_read += int((ids == e).sum())
                w_slices |= {(e, j) for j in range(math.ceil(n / bn))}
            if zero_fill:
                zero_rows += int(((ids < 0) | (ids >= E)).sum())
    counts = torch.bincount(m_indices[(m_indices >= 0) & (m_indices < E)], minlength=E)
    ideal_tiles, ideal_bytes = _ideal(counts, n, k, bm, bn)
    w_bytes = len(w_slices) * (min(bn, n) * k + 4 * (k // 128))
    out = (int(counts.sum()) + zero_rows) * n * 2
    return MoeWork(ctas, tiles, ideal_tiles, w_bytes + rows_read * (k + 4 * (k // 128)) + out, ideal_bytes)


def moe_masked(counts: torch.Tensor, m_cap: int, n: int, k: int, zero_fill: bool = False, launch=None) -> MoeWork:
    """Replays _grouped_gemm_masked_kernel over [E, m_cap, K] with masked_m = counts (launch: the CUDA one)."""
    ln = launch or tk_moe.masked_launch(E, m_cap, n, CAP)
    bm, bn = ln["BLOCK_M"], ln["BLOCK_N"]
    n_tiles = math.ceil(n / bn)
    tiles, written = 0, 0
    for c in counts.tolist():
        live = min(c, m_cap)
        tiles += math.ceil(live / bm) * n_tiles
        written += (math.ceil(m_cap / bm) * bm if zero_fill else live)  # whole tiles were stored before
    written = min(written, E * m_cap) if zero_fill else written
    ideal_tiles, ideal_bytes = _ideal(counts, n, k, bm, bn)
    active = int((counts > 0).sum())
    w_bytes = active * (n * k + 4 * n_tiles * (k // 128))
    rows = int(counts.sum())
    return MoeWork(ln["grid"][0] * ln["grid"][1], tiles, ideal_tiles,
                   w_bytes + rows * (k + 4 * (k // 128)) + written * n * 2, ideal_bytes)


def silu_rows(ts=(1, 16, 256)) -> list[dict]:
    return [silu_quant(t) for t in ts]


def bm_n(layout: str) -> int:
    return tk_moe.gemm_config_for(CAP)["BLOCK_N"]


def moe_rows(ts=(1, 2, 4, 8, 16, 32, 64, 128, 256)) -> list[dict]:
    bm = tk_moe.gemm_config_for(CAP)["BLOCK_M"]
    out = []
    for t in ts:
        counts = counts_of(route(t))
        ids_sorted = torch.sort(route(t).reshape(-1)).values
        for gemm, (n, k) in (("gate_up", (2 * INTER, HIDDEN)), ("down", (HIDDEN, INTER))):
            cases = {
                "padded": (moe_contiguous(padded_m_indices(route(t), bm), n, k),
                           moe_contiguous(padded_m_indices(route(t), bm), n, k, zero_fill=True)),
                "masked": (moe_masked(counts, t, n, k), moe_masked(counts, t, n, k, zero_fill=True)),
                "unaligned": (moe_contiguous(ids_sorted, n, k), None),
            }
            for layout, (w, before) in cases.items():
                out.append(dict(T=t, gemm=gemm, layout=layout, ctas=w.ctas, tiles=w.tiles, ideal_tiles=w.ideal_tiles,
                                tile_eff=w.ideal_tiles / w.tiles, bytes=w.bytes, ideal_bytes=w.ideal_bytes,
                                byte_eff=w.ideal_bytes / w.bytes,
                                fill=int(counts.sum()) * math.ceil(n / bm_n(layout)) / max(w.tiles * bm, 1),
                                bytes_before=before.bytes if before else None))
    return out


# ------------------------------------------------------------------------------------------- top-k

def normal_logits(rows: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(seed))


def concentrated_logits(rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """'Concentrated' logits: every score within 2^-9 relative of 1.0 (e.g. a saturated indexer): the
    top-k threshold's 16-bit key prefix (sign, exponent, 7 mantissa bits) holds the whole row, so a
    fixed top-bits first histogram (the previous kernel: 5 row passes) cannot split it."""
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.rand(rows, n, generator=g) * 2.0 ** -9


def tied_logits(rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """Heavy ties: 16 distinct values per row (the documented slow path)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 16, (rows, n), generator=g).float()


GENERATORS = {"normal": normal_logits, "concentrated": concentrated_logits, "tied": tied_logits}


def _keys(x: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 keys of fp32 (as _f32_sort_key), as int64."""
    b = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(b < 0, b ^ 0x7FFFFFFF, b)


def topk_row_passes(row: torch.Tensor, topk: int) -> int:
    """Full-row passes _topk_kernel makes on one row: the top-byte histogram (+ key range), the
    2^FINE_BITS-bin histogram of key >> shift inside the threshold's byte, then one compaction pass when the
    threshold bin holds <= CAP keys (3 in all); otherwise 1-2 radix passes over the shift bits below the bin
    + 1 compaction (4-5: heavy ties)."""
    n = row.numel()
    if n <= topk:
        return 1
    cfg = tk_ix.TOPK_CONFIG
    key = _keys(row)
    thr = int(torch.topk(key, topk).values[-1])
    prefix = (thr >> 24) << 24
    lo, hi = max(int(key.min()), prefix), min(int(key.max()), prefix | 0xFFFFFF)
    shift = 0
    while (hi >> shift) - (lo >> shift) >= 1 << cfg["FINE_BITS"]:
        shift += 1
    c = int(((key >> shift) == (thr >> shift)).sum())
    return 3 if c <= cfg["CAP"] else 2 + (1 if shift <= 8 else 2) + 1


def topk_row_passes_before(row: torch.Tensor, topk: int) -> int:
    """The previous kernel: fixed 8+8-bit prefix histograms, then compaction (3) or 2 more passes (5)."""
    if row.numel() <= topk:
        return 1
    key = _keys(row)
    thr = int(torch.topk(key, topk).values[-1])
    return 3 if int(((key >> 16) == (thr >> 16)).sum()) <= tk_ix.TOPK_CONFIG["CAP"] else 5


def topk_rows(shapes=((4, 131072), (64, 9295), (1, 131072))) -> list[dict]:
    out = []
    for r, n in shapes:
        for gen, fn in GENERATORS.items():
            x = fn(r, n)
            passes = max(topk_row_passes(x[i], 2048) for i in range(r))
            before = max(topk_row_passes_before(x[i], 2048) for i in range(r))
            launches = tk_ix.topk_launches(r, n, NUM_SMS)          # the launcher's own plan for 132 SMs
            ctas = max(math.prod(grid) for _, grid in launches)     # CTAs sharing each full-row pass
            out.append(dict(rows=r, n=n, gen=gen, ctas=ctas, ctas_before=r, launches=len(launches), passes=passes,
                            before=before, bytes=r * n * 4 * passes, ideal_bytes=r * n * 4))
    return out


# ------------------------------------------------------------------------------- indexer logits

def logits_ragged(s: int, n: int, h: int = 64) -> dict:
    """Causal prefill chunk: query i sees keys [0, n - s + i + 1). Replays the launcher's grid/splits."""
    cfg = tk_ix.logits_config(h, CAP)
    bs, bn = cfg["BS"], cfg["BN"]
    n_sblk = math.ceil(s / bs)
    want = max(1, math.ceil(4 * NUM_SMS / n_sblk))
    kps = math.ceil(math.ceil(n / want) / bn) * bn
    splits = math.ceil(n / kps)
    iters, ideal = 0, 0
    for i in range(n_sblk):
        hi = min(n, n - s + min(s, (i + 1) * bs))      # max ke of the block (lo = 0)
        ideal += math.ceil(hi / bn)
        for sp in range(splits):
            n0, n1 = sp * kps, min(sp * kps + kps, n)
            c1 = min(hi, n1)
            if c1 > n0:
                iters += math.ceil((c1 - n0) / bn)
    return dict(op=f"fp8_indexer_logits S={s} N={n} H={h}", ctas=n_sblk * splits, iters=iters, ideal=ideal,
                bytes=iters * bn * (128 + 4), ideal_bytes=n * (128 + 4))


def logits_paged(b: int, ctx: int, next_n: int = 1, h: int = 64) -> dict:
    cfg = tk_ix.paged_logits_config(h, next_n, CAP)
    bp = cfg["BLOCK_PAGES"]
    n_pages = math.ceil(ctx / 64)
    want = max(1, math.ceil(2 * NUM_SMS / b))
    pps = math.ceil(math.ceil(n_pages / want) / bp) * bp
    splits = math.ceil(n_pages / pps)
    iters = b * sum(math.ceil((min(n_pages, p0 + pps) - p0) / bp) for p0 in range(0, n_pages, pps))
    return dict(op=f"fp8_paged_indexer_logits B={b} ctx={ctx} next_n={next_n}", ctas=b * splits, iters=iters,
                ideal=b * math.ceil(n_pages / bp), bytes=b * n_pages * 64 * 132, ideal_bytes=b * ctx * 132)


# ------------------------------------------------------------------- SiLU-and-mul + FP8 quant

def silu_quant(t: int, n: int = INTER) -> dict:
    """_silu_mul_quant_kernel on the padded layout's [M, 2N] gate_up output for T tokens (static grid over
    the layout's M rows; padding rows cost their m_indices read)."""
    m_indices = padded_m_indices(route(t), tk_moe.gemm_config_for(CAP)["BLOCK_M"])
    m = m_indices.numel()
    valid = int((m_indices >= 0).sum())
    row = 2 * n * 2 + n + 4 * (n // 128)               # gate+up bf16 read, e4m3 + scales written
    ctas = math.ceil(m / tk_moe.SILU_BLOCK_M) * (n // 128)
    return dict(op=f"silu_and_mul_fp8_quant T={t} (M={m} rows, N={n})", ctas=ctas, rows=m, valid=valid,
                bytes=valid * row + 4 * m, ideal_bytes=valid * row, bytes_before=m * row)


# ---------------------------------------------------------------------------- sparse MLA decode

def mla_decode(b: int, s_q: int, h: int = 128, topk: int = 2048, fp8: bool = True) -> dict:
    cfg = tk_mla.attn_config(CAP, fp8, h)
    block_h = cfg["BLOCK_H"]
    n_hb = math.ceil(h / block_h) * cfg["DV_SPLIT"]
    t = b * s_q
    real = tk_mla.num_sms
    tk_mla.num_sms = lambda dev: NUM_SMS   # the launcher's own split planner, for an H100
    try:
        splits = tk_mla.plan_splits(t, n_hb, topk, cfg["BLOCK_T"], torch.device("cpu"))
    finally:
        tk_mla.num_sms = real
    split_len = math.ceil(math.ceil(topk / splits) / cfg["BLOCK_T"]) * cfg["BLOCK_T"]
    splits = math.ceil(topk / split_len)
    row = 656 if fp8 else 1152
    return dict(op=f"sparse_mla_decode b={b} s_q={s_q} h={h} topk={topk} {'fp8' if fp8 else 'bf16'}",
                ctas=t * n_hb * splits, iters=t * n_hb * splits * math.ceil(split_len / cfg["BLOCK_T"]),
                ideal=t * math.ceil(h / block_h) * math.ceil(topk / cfg["BLOCK_T"]),
                bytes=t * n_hb * topk * row, ideal_bytes=t * topk * row)


# ----------------------------------------------------------------- sparse MLA prefill (CUDA sm80)

def _prefill_smem(g: int) -> int:
    """sizeof(PrefillSmem<G>) (sparse_mla_prefill_sm80.cu): q, kv chunk, p (bf16, padded pitches), s, 3 x
    per-head floats, 32 indices."""
    return 16 * g * 584 * 2 + 32 * 584 * 2 + 16 * g * 40 * 2 + 16 * g * 33 * 4 + 3 * 16 * g * 4 + 32 * 4


PREFILL_SMEM = {g: _prefill_smem(g) for g in (1, 2, 4)}
H100_SMEM_OPTIN = 232448


def prefill_heads_per_cta(h: int, smem_optin: int = H100_SMEM_OPTIN) -> int:
    """Mirror of sparse_mla_prefill_heads_per_cta (csrc/sparse_mla/sm80/sparse_mla_prefill_sm80.cu)."""
    if h <= 16:
        return 16
    return 32 if h <= 32 or PREFILL_SMEM[4] > smem_optin else 64


# sm_90a kernel (csrc/sparse_mla/sm90/config.h mla_prefill): 64 heads per CTA (one wgmma M tile per
# warpgroup), 64-key chunks, two KV buffers; sizeof(Smem) = q + 2 kv + p tiles + 2x2x64 + 64 floats + 2x64 idx,
# rounded up to the struct's 1024-byte alignment
SM90_PREFILL = dict(heads=64, keys=64,
                    smem=-(-(64 * 576 * 2 * 3 + 64 * 64 * 2 + 5 * 64 * 4 + 2 * 64 * 4) // 1024) * 1024)


def mla_prefill_cuda(s_q: int, h: int = 128, topk: int = 2048, heads_per_cta: int | None = None,
                     kernel: str = "sm80") -> dict:
    """Causal prefill of s_q tokens from position 0: row i holds min(i + 1, topk) valid indices first (top-k
    output order), -1 after; the kernel skips key chunks (32 keys sm80, 64 sm90) with no valid index. KV bytes
    gathered = chunks x chunk rows x 1152 B per head block; ideal = each valid row once per query row.
    heads_per_cta=16 models the decode kernel's 16-head blocks (what prefill through the decode kernel would
    gather). kernel="sm90": the sm_90a wgmma kernel, 64 heads per CTA whatever h (h < 64 leaves wgmma rows
    idle: mma_rows_used)."""
    if kernel == "sm90":
        hpc, chunk = SM90_PREFILL["heads"], SM90_PREFILL["keys"]
    else:
        hpc, chunk = heads_per_cta or prefill_heads_per_cta(h), 32
    hb = math.ceil(h / hpc)
    chunks = sum(math.ceil(min(i + 1, topk) / chunk) for i in range(s_q))
    valid = sum(min(i + 1, topk) for i in range(s_q))
    return dict(op=f"sparse_mla_prefill (CUDA {kernel}) s_q={s_q} h={h} topk={topk} heads/CTA={hpc}", ctas=s_q * hb,
                iters=chunks * hb, ideal=math.ceil(valid / chunk), bytes=chunks * hb * chunk * 1152,
                ideal_bytes=valid * 1152, mma_rows_used=h / (hb * hpc))


# ------------------------------------------------------------------------- CUDA kernels (csrc/)
# The CUDA backend's kernels as its launchers size them on an H100 (the sm_90a kernels where built). Tile and
# block constants are read from the csrc/ sources, so the rows follow the kernels.

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "csrc")


def cu_const(path: str, name: str) -> int:
    """`constexpr int <name> = <int>` from csrc/<path> (also in a comma-separated declaration)."""
    import re
    with open(os.path.join(CSRC, path)) as f:
        m = re.search(rf"\b{name}\s*=\s*(\d+)\b", f.read())
    if not m:
        raise ValueError(f"{name} not found in csrc/{path}")
    return int(m.group(1))


def cuda_moe_launches(m: int, n: int) -> list[dict]:
    """launch_typed (fp8_moe/sm90/fp8_grouped_gemm_sm90.cu): one CTA per (kBM x kBN) tile, each running
    its main loop once per distinct expert of the tile (moe::collect_groups)."""
    bm, bn = cu_const("fp8_moe/sm90/config.h", "kBM"), cu_const("fp8_moe/sm90/config.h", "kBN")
    return [dict(grid=(math.ceil(m / bm) * math.ceil(n / bn),), BLOCK_M=bm, BLOCK_N=bn)]


def cuda_moe_masked_launch(g: int, m: int, n: int) -> dict:
    bm, bn = cu_const("fp8_moe/sm90/config.h", "kBM"), cu_const("fp8_moe/sm90/config.h", "kBN")
    return dict(grid=(math.ceil(n / bn) * math.ceil(m / bm), g), BLOCK_M=bm, BLOCK_N=bn)


def cuda_moe_rows(ts=(1, 2, 4, 8, 16, 32, 64, 128, 256)) -> list[dict]:
    """The CUDA grouped GEMMs on the padded layout fp8_moe_experts builds (align MOE_BLOCK_M) and masked."""
    out = []
    for t in ts:
        counts = counts_of(route(t))
        m_idx = padded_m_indices(route(t), fp8_moe.MOE_BLOCK_M)
        for gemm, (n, k) in (("gate_up", (2 * INTER, HIDDEN)), ("down", (HIDDEN, INTER))):
            for layout, w in (("padded", moe_contiguous(m_idx, n, k, launches=cuda_moe_launches(m_idx.numel(), n))),
                              ("masked", moe_masked(counts, t, n, k, launch=cuda_moe_masked_launch(E, t, n)))):
                out.append(dict(T=t, gemm=gemm, layout=layout, ctas=w.ctas, tiles=w.tiles, ideal_tiles=w.ideal_tiles,
                                tile_eff=w.ideal_tiles / w.tiles, bytes=w.bytes, ideal_bytes=w.ideal_bytes,
                                byte_eff=w.ideal_bytes / w.bytes))
    return out


def cuda_topk_split_count(rows: int, n: int, num_sms: int = NUM_SMS) -> int:
    """topk::split_count (indexer/common/radix_select.h)."""
    block = cu_const("indexer/common/radix_select.h", "kSplitBlock")
    min_splits = cu_const("indexer/common/radix_select.h", "kMinSplits")
    s = min(math.ceil(n / block), math.ceil(num_sms / rows))
    return s if s >= min_splits else 1


def cuda_topk_row_passes(row: torch.Tensor, topk: int, split: bool) -> int:
    """Full-row passes of launch_indexer_topk (indexer/indexer_topk.cu). Split path (split_kernel steps):
    1 top byte + key range, 2 the 2^kFineBits-bin histogram, 3 compaction when the threshold's fine bin holds
    <= kSplitCap keys (3 in all), else 1-2 radix steps over the bits below the bin + a compaction. One-CTA
    path (topk_kernel): top-byte histogram + split pass (2), the candidate passes re-read the row only when
    more than kCandidates keys share the threshold byte (2 + 3 radix + 1 gather = 6)."""
    n = row.numel()
    if n <= topk:
        return 1
    key = _keys(row)
    thr = int(torch.topk(key, topk).values[-1])
    if not split:
        cand = int(((key >> 24) == (thr >> 24)).sum())
        return 2 if cand <= cu_const("indexer/indexer_topk.cu", "kCandidates") else 6
    fine_bits = cu_const("indexer/common/radix_select.h", "kFineBits")
    prefix = (thr >> 24) << 24
    lo, hi = max(int(key.min()), prefix), min(int(key.max()), prefix | 0xFFFFFF)
    shift = 0
    while (hi >> shift) - (lo >> shift) >= 1 << fine_bits:
        shift += 1
    c = int(((key >> shift) == (thr >> shift)).sum())
    return 3 if c <= cu_const("indexer/common/radix_select.h", "kSplitCap") else 2 + (1 if shift <= 8 else 2) + 1


def cuda_topk_rows(shapes=((4, 131072), (64, 9295), (1, 131072))) -> list[dict]:
    out = []
    for r, n in shapes:
        splits = cuda_topk_split_count(r, n)
        for gen, fn in GENERATORS.items():
            x = fn(r, n)
            passes = max(cuda_topk_row_passes(x[i], 2048, splits > 1) for i in range(r))
            out.append(dict(rows=r, n=n, gen=gen, ctas=r * splits, launches=6 if splits > 1 else 1, passes=passes,
                            bytes=r * n * 4 * passes, ideal_bytes=r * n * 4))
    return out


def cuda_logits_ragged(s: int, n: int, h: int = 64) -> dict:
    """ragged_logits_kernel (indexer/sm90): a CTA per (128-key tile, kRowsPerCta query rows), causal ranges
    [0, n - s + i + 1): the tile is loaded once if any of its rows reaches it, scored per such row."""
    bn, rpc = 128, cu_const("indexer/sm90/config.h", "kRowsPerCta")
    n_tiles = math.ceil(n / bn)
    iters, loads, ideal = 0, 0, 0
    for r0 in range(0, s, rpc):
        his = [n - s + i + 1 for i in range(r0, min(r0 + rpc, s))]
        loads += math.ceil(max(his) / bn)
        iters += sum(math.ceil(hi / bn) for hi in his)
        ideal += sum(math.ceil(hi / bn) for hi in his)
    return dict(op=f"fp8_indexer_logits (CUDA sm90) S={s} N={n} H={h}", ctas=n_tiles * math.ceil(s / rpc),
                iters=iters, ideal=ideal, bytes=loads * bn * (128 + 4), ideal_bytes=n * (128 + 4))


def cuda_logits_paged(b: int, ctx: int, next_n: int = 1, h: int = 64) -> dict:
    """paged_logits_kernel (indexer/sm90): a CTA per (page, request), pages past the context exit at once."""
    page = cu_const("indexer/common/cache_layout.h", "kPage")
    pages = math.ceil(ctx / page)
    return dict(op=f"fp8_paged_indexer_logits (CUDA sm90) B={b} ctx={ctx} next_n={next_n}", ctas=b * pages,
                iters=b * pages, ideal=b * pages, bytes=b * pages * page * 132, ideal_bytes=b * ctx * 132)


def cuda_mla_decode(b: int, s_q: int, h: int = 128, topk: int = 2048) -> dict:
    """sparse_mla_decode_kernel (sparse_mla/sm90): a CTA per (query row, kHeads heads), no top-k split,
    kKeys keys per iteration (fp8 cache rows of 656 B). MMA: S = [kHeads, kKeys] x 576 with MmaS
    (SM90_64x64x16, one warpgroup's tile) in both warpgroups, PV = each warpgroup's 256 columns of d_v."""
    hh, kk = cu_const("sparse_mla/sm90/config.h", "kHeads"), cu_const("sparse_mla/sm90/config.h", "kKeys")
    t = b * s_q
    hb = math.ceil(h / hh)
    mma = (2 * hh * kk * 576 + hh * 512 * kk) / (hh * kk * (576 + 512))
    return dict(op=f"sparse_mla_decode (CUDA sm90) b={b} s_q={s_q} h={h} topk={topk} fp8", ctas=t * hb,
                iters=t * hb * math.ceil(topk / kk), ideal=t * hb * math.ceil(topk / kk),
                bytes=t * hb * topk * 656, ideal_bytes=t * topk * 656, mma_work=mma)


def cuda_quant(op: str, rows: int, k: int, valid: int | None = None) -> dict:
    """fp8_quant.cu: one warp per 128-element group, kThreads per CTA. silu (k = N): valid rows read 2N and
    write N + scales; padding rows (m_indices < 0) cost their m_indices read."""
    threads, group = cu_const("fp8_quant/fp8_quant.cu", "kThreads"), cu_const("fp8_quant/fp8_quant.cu", "kGroup")
    groups = rows * (k // group)
    valid = rows if valid is None else valid
    row = (2 * k * 2 if op == "silu" else k * 2) + k + 4 * (k // group)
    extra = 4 * rows if op == "silu" else 0
    name = (f"silu_and_mul_fp8_quant (CUDA) M={rows} N={k} valid={valid}" if op == "silu"
            else f"fp8_quant_act (CUDA) rows={rows} K={k}")
    return dict(op=name, ctas=math.ceil(groups * 32 / threads), iters=valid * (k // group),
                ideal=valid * (k // group), bytes=valid * row + extra, ideal_bytes=valid * row)


def cuda_misc_rows() -> list[dict]:
    silu1 = padded_m_indices(route(1), fp8_moe.MOE_BLOCK_M)
    silu256 = padded_m_indices(route(256), fp8_moe.MOE_BLOCK_M)
    return [cuda_logits_ragged(4096, 4096), cuda_logits_ragged(2048, 65536), cuda_logits_paged(64, 65536),
            cuda_logits_paged(4, 131072, 2), cuda_mla_decode(64, 1), cuda_mla_decode(1, 2), cuda_mla_decode(128, 2),
            mla_prefill_cuda(4096), cuda_quant("act", 256, HIDDEN),
            cuda_quant("silu", silu1.numel(), INTER, int((silu1 >= 0).sum())),
            cuda_quant("silu", silu256.numel(), INTER, int((silu256 >= 0).sum()))]


# ------------------------------------------------- whole-model cost against context (benchmarks/context_curve)
# Per forward of the whole model (every layer + head), for a V32Config: MACs and bytes of DSA (ours) and of
# the engines' dense MLA on the same weights. Counted, not replayed: each matmul's MACs, and the bytes a step
# must read (weights once, cache rows read, indexer keys read, logits written + read by top-k). Decode is the
# absorbed (MQA) form both engines use; dense prefill is the engines' non-absorbed form (kv_b up-projection of
# the keys, then 192-dim q.k and 128-dim p.v per head). "ours" is what DSA's math costs (each row attends over
# min(context, index_topk) keys; scoring skipped for requests whose context fits in index_topk, as dsa.plan
# does); padded=True counts index_topk rows per query whatever the context (sparse MLA over -1 padding).

@dataclass
class ModelWork:
    macs: float
    bytes: float

    def seconds(self, flops: float, bandwidth: float) -> float:
        """Roofline time on a machine with `flops` FLOP/s (2 per MAC) and `bandwidth` B/s."""
        return max(2 * self.macs / flops, self.bytes / bandwidth)


def _proj_params(cfg, indexer: bool, scored: bool = True) -> tuple:
    """(attention projection params per layer, MLP params run per token per layer (list by layer)).
    indexer: the key projection wk (always written); scored: also wq_b and weights_proj (skipped by the
    adapters for a batch nothing is scored in, dsa.DSAPlan.needs_scores)."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    attn = (d * cfg.q_lora_rank + cfg.q_lora_rank * h * cfg.qk_head_dim + d * cfg.mla_cache_dim
            + cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim) + h * cfg.v_head_dim * d)
    if indexer:
        attn += d * cfg.index_head_dim
        if scored:
            attn += cfg.q_lora_rank * cfg.index_n_heads * cfg.index_head_dim + d * cfg.index_n_heads
    mlp = []
    for i in range(cfg.num_hidden_layers):
        if cfg.is_moe_layer(i):
            mlp.append(3 * d * cfg.moe_intermediate_size * (cfg.num_experts_per_tok + cfg.n_shared_experts)
                       + d * cfg.n_routed_experts)
        else:
            mlp.append(3 * d * cfg.intermediate_size)
    return attn, mlp


def _weight_bytes(cfg, indexer: bool, wbytes: int) -> float:
    d = cfg.hidden_size
    attn, _ = _proj_params(cfg, indexer)
    mlp = sum(3 * d * (cfg.moe_intermediate_size * (cfg.n_routed_experts + cfg.n_shared_experts))
              if cfg.is_moe_layer(i) else 3 * d * cfg.intermediate_size for i in range(cfg.num_hidden_layers))
    return wbytes * (cfg.num_hidden_layers * attn + mlp + d * cfg.vocab_size)


def decode_work(cfg, context: int, variant: str, cache_row_bytes: int = 2 * 576, wbytes: int = 2,
                padded: bool = False) -> ModelWork:
    """One decode step (1 new token, `context` keys including itself) of the whole model. variant: 'ours'
    (DSA) or 'dense' (MLA over every key). Weight bytes count every weight once (routed experts: all of them
    for a decode step of a batch; for one token only the active ones are read, which MoE kernels do)."""
    ours = variant == "ours"
    h, lat = cfg.num_attention_heads, cfg.mla_cache_dim + cfg.kv_lora_rank   # q.k over 576, p.v over 512
    attn_p, mlp = _proj_params(cfg, ours, scored=context > cfg.index_topk)
    keys = (cfg.index_topk if padded else min(context, cfg.index_topk)) if ours else context
    per_layer = attn_p + h * cfg.qk_nope_head_dim * cfg.kv_lora_rank + h * cfg.kv_lora_rank * cfg.v_head_dim
    per_layer += h * lat * keys
    cache = keys * cache_row_bytes
    if ours and context > cfg.index_topk:     # scoring every key + top-k over the logits
        per_layer += cfg.index_n_heads * cfg.index_head_dim * context
        cache += context * (cfg.index_head_dim + 4) + 2 * 4 * context
    layers = cfg.num_hidden_layers
    macs = layers * per_layer + sum(mlp) + cfg.hidden_size * cfg.vocab_size
    return ModelWork(macs, _weight_bytes(cfg, ours, wbytes) + layers * cache)


def prefill_work(cfg, n: int, variant: str, cache_row_bytes: int = 2 * 576, wbytes: int = 2,
                 padded: bool = False) -> ModelWork:
    """Prefill of an n-token prompt from position 0 (chunking does not change the count) of the whole model.
    ours: absorbed sparse MLA, row i over min(i + 1, index_topk) keys (index_topk if padded), indexer scoring
    of the causal keys of rows i >= index_topk only (rows that fit take every key: dsa.plan); dense: the
    engines' non-absorbed MLA prefill."""
    ours = variant == "ours"
    h, t = cfg.num_attention_heads, cfg.index_topk
    attn_p, mlp = _proj_params(cfg, ours, scored=n > t)
    causal = n * (n + 1) // 2
    scored_keys = causal - t * (t + 1) // 2 if n > t else 0     # rows at positions >= t, each over position + 1
    if ours:
        keys = n * t if padded else (causal if n <= t else t * (t + 1) // 2 + (n - t) * t)
        per_layer = n * (attn_p + h * cfg.qk_nope_head_dim * cfg.kv_lora_rank
                         + h * cfg.kv_lora_rank * cfg.v_head_dim) + h * (cfg.mla_cache_dim + cfg.kv_lora_rank) * keys
        cache = keys * cache_row_bytes
        per_layer += cfg.index_n_heads * cfg.index_head_dim * scored_keys
        cache += scored_keys * (cfg.index_head_dim + 4 + 8)
    else:
        per_layer = n * attn_p + h * causal * (cfg.qk_head_dim + cfg.v_head_dim)
        cache = n * cache_row_bytes
    layers = cfg.num_hidden_layers
    macs = layers * per_layer + n * (sum(mlp) + cfg.hidden_size * cfg.vocab_size)
    return ModelWork(macs, _weight_bytes(cfg, ours, wbytes) + layers * cache)


# ------------------------------------------------------------------------------------------ table

def _mb(x):
    return f"{x / 2 ** 20:.2f}"


def markdown() -> str:
    lines = ["# Work model (CPU): Triton and CUDA kernels, H100 sm_90a configs, 132 SMs",
             "", "Written by `python benchmarks/work_model.py` (definitions in its docstring); checked by "
             "`tests/test_work_model.py`.", "",
             f"## MoE grouped GEMM (E={E}, top-{TOPK_E}, gate_up N={2 * INTER} K={HIDDEN}, down N={HIDDEN} K={INTER})",
             f"Target: tiles >= {MOE_TARGET:.0%} of ideal for the padded and masked layouts, T = 1..256.", "",
             "`row fill` = valid rows / rows the MMA tiles compute (BLOCK_M = "
             f"{tk_moe.gemm_config_for(CAP)['BLOCK_M']}): what a smaller BLOCK_M or swap-AB at small T would raise; "
             "`MB before` = the same call with the previous kernels' zero-fill of padding rows.", "",
             "| T | GEMM | layout | CTAs | MMA tiles | ideal | tile eff | row fill | MB moved | ideal MB | byte eff | MB before |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in moe_rows():
        lines.append(f"| {r['T']} | {r['gemm']} | {r['layout']} | {r['ctas']} | {r['tiles']:.0f} | {r['ideal_tiles']} | "
                     f"{r['tile_eff']:.1%} | {r['fill']:.1%} | {_mb(r['bytes'])} | {_mb(r['ideal_bytes'])} | {r['byte_eff']:.1%} | "
                     f"{_mb(r['bytes_before']) if r['bytes_before'] else '-'} |")
    lines += ["", f"## SiLU-and-mul + FP8 quant between the GEMMs (padded layout, N={INTER})", "",
              "`MB before` = every row of the layout read and written (the kernel before it took m_indices).", "",
              "| op | CTAs | valid rows | MB moved | ideal MB | byte eff | MB before |", "|---|---|---|---|---|---|---|"]
    for r in silu_rows():
        lines.append(f"| {r['op']} | {r['ctas']} | {r['valid']} | {_mb(r['bytes'])} | {_mb(r['ideal_bytes'])} | "
                     f"{r['ideal_bytes'] / r['bytes']:.1%} | {_mb(r['bytes_before'])} |")
    lines += ["", f"## Top-k 2048 (targets: >= {TOPK_MIN_CTAS} CTAs at 4 x 128K, <= {TOPK_MAX_PASSES} row passes "
              "on concentrated logits)", "",
              "`CTAs before` = one CTA per row (the previous kernel).", "",
              "| rows x N | logits | CTAs | CTAs before | launches | row passes | passes before | MB read | ideal MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in topk_rows():
        lines.append(f"| {r['rows']} x {r['n']} | {r['gen']} | {r['ctas']} | {r['ctas_before']} | {r['launches']} | "
                     f"{r['passes']} | {r['before']} | "
                     f"{_mb(r['bytes'])} | "
                     f"{_mb(r['ideal_bytes'])} |")
    lines += ["", "## Indexer logits, sparse MLA decode and prefill", "",
              "MB loaded counts every tile load (no L2 reuse: an upper bound on DRAM traffic); ideal = each key / "
              "KV row once.", "",
              "| op | CTAs | K-loop iters | ideal | MB loaded | ideal MB |", "|---|---|---|---|---|---|"]
    for r in (logits_ragged(4096, 4096), logits_ragged(2048, 65536), logits_paged(64, 65536),
              logits_paged(4, 131072, 2), mla_decode(64, 1), mla_decode(1, 2), mla_decode(128, 2),
              mla_prefill_cuda(4096), mla_prefill_cuda(4096, heads_per_cta=16), mla_prefill_cuda(4096, h=16),
              mla_prefill_cuda(4096, kernel="sm90"), mla_prefill_cuda(4096, h=16, kernel="sm90")):
        lines.append(f"| {r['op']} | {r['ctas']} | {r['iters']} | {r['ideal']} | {_mb(r['bytes'])} | "
                     f"{_mb(r['ideal_bytes'])} |")
    lines += ["", "# CUDA backend (csrc/): the kernels as their launchers size them on an H100", "",
              "Tile constants are read from the csrc/ sources (`cu_const`).", "",
              f"## CUDA MoE grouped GEMM (sm_90a, kBM x kBN = {cuda_moe_launches(1, 1)[0]['BLOCK_M']} x "
              f"{cuda_moe_launches(1, 1)[0]['BLOCK_N']}; target: tiles >= {MOE_TARGET:.0%} of ideal)", "",
              "| T | GEMM | layout | CTAs | MMA tiles | ideal | tile eff | MB moved | ideal MB | byte eff |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in cuda_moe_rows():
        lines.append(f"| {r['T']} | {r['gemm']} | {r['layout']} | {r['ctas']} | {r['tiles']:.0f} | "
                     f"{r['ideal_tiles']} | {r['tile_eff']:.1%} | {_mb(r['bytes'])} | {_mb(r['ideal_bytes'])} | "
                     f"{r['byte_eff']:.1%} |")
    lines += ["", f"## CUDA top-k 2048 (targets: >= {TOPK_MIN_CTAS} CTAs at 4 x 128K, <= {TOPK_MAX_PASSES} row "
              "passes on concentrated logits)", "",
              "| rows x N | logits | CTAs | launches | row passes | MB read | ideal MB |",
              "|---|---|---|---|---|---|---|"]
    for r in cuda_topk_rows():
        lines.append(f"| {r['rows']} x {r['n']} | {r['gen']} | {r['ctas']} | {r['launches']} | {r['passes']} | "
                     f"{_mb(r['bytes'])} | {_mb(r['ideal_bytes'])} |")
    lines += ["", "## CUDA indexer logits, sparse MLA, quantization", "",
              "K-loop iters: indexer = (query row, key tile) scores, MLA = key blocks per CTA, quant = 128-groups. "
              "`MMA x ideal` = tensor-core work per key block over the tile's ideal (sparse MLA decode: both "
              "warpgroups compute S).", "",
              "| op | CTAs | K-loop iters | ideal | MB loaded | ideal MB | MMA x ideal |",
              "|---|---|---|---|---|---|---|"]
    for r in cuda_misc_rows():
        mma = f"{r['mma_work']:.2f}" if "mma_work" in r else "-"
        lines.append(f"| {r['op']} | {r['ctas']} | {r['iters']} | {r['ideal']} | {_mb(r['bytes'])} | "
                     f"{_mb(r['ideal_bytes'])} | {mma} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = markdown()
    print(text)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "WORK_MODEL.md"), "w") as f:
        f.write(text)
