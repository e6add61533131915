"""The torch backend of sparse MLA: the reference's math (naive._attend) in blocks of query rows.

Each block reads only its rows' entries up to the block's longest topk_length (a row whose context is
shorter than top-k costs its context, not top-k), and its working set stays within BLOCK_BYTES whatever the
number of rows.
On the CPU each row's GEMMs are KEY_BUCKET-aligned: a row attends over its entries up to its last valid one,
rounded up to a multiple of KEY_BUCKET columns (padding = no key), so the GEMM shapes that decide the fp32
summation order come from the row's own entries, never from which rows are batched beside it. Rows of a
block whose selections agree column by column with the block's longest row (a prefill chunk's rows below
top-k: positions 0..p of one request; MTP-verify rows) gather those keys once and run one GEMM pair over
them -- dense attention's cost; the others gather per row. MKL gives a row the same bits in either form (same
K, same columns; tests/test_blocked_ops.py checks it on the machine it runs on), so an engine (rows of many
requests) and the reference model (one sequence) sum alike and bf16 engines still equal the bf16 reference
bit for bit. Same scores, masking and softmax as the reference; only the fp32 summation order differs from
naive.py (a few ulps). On other devices (no host syncs there) every block gathers per row.
DSV32_TORCH_SHARED_KEYS=1 (opt-in) also lets a block attend over the union of its rows' keys (rows above
top-k of one prefill chunk share most of them): faster, but the union's size depends on which rows are
batched together, so engines and the reference then sum in different orders (seed sweep 2026-12-06: SGLang
bf16 logprobs above top-k past their 2e-3 bound at seeds 1 and 2).
"""
from __future__ import annotations

import os

import torch

from .naive import HEAD_576, KV_LORA, _attend, dequant_fp8_rows, is_fp8_cache, valid_entries

BLOCK_BYTES = 64 << 20   # fp32 working set of one block: gathered rows + scores / probabilities
KEY_BUCKET = 64          # a row's key columns, rounded up to a multiple of this (CPU)
SHARED_MAX = 2 if os.environ.get("DSV32_TORCH_SHARED_KEYS") == "1" else 0   # union <= SHARED_MAX x width


def _rows_per_block(width: int, heads: int, per_row_gather: bool = False) -> int:
    # per row: ~4 fp32 [h, keys] buffers (scores, mask fill, exp, p; keys <= SHARED_MAX x width on the shared
    # path) + int64 index bookkeeping, and with per-row gathers its own [width, 576] fp32 rows (+ masked copy)
    keys = width if per_row_gather or not SHARED_MAX else SHARED_MAX * width
    per_row = 16 * keys * heads + 32 * width + (8 * width * HEAD_576 if per_row_gather else 0)
    return max(1, BLOCK_BYTES // max(per_row, 1))


def _blocks(n: int, idx: torch.Tensor, lens, heads: int):
    """Yield (lo, hi, width): row blocks and the entries they read. The width comes from the host: the block's
    longest topk_length when it is on the CPU (no device sync), else the full top-k."""
    full = idx.shape[-1]
    host_lens = lens is not None and lens.device.type == "cpu"
    width_all = min(full, int(lens.max())) if host_lens and n else full
    step = _rows_per_block(max(width_all, 1), heads)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        width = min(full, int(lens[lo:hi].max())) if host_lens else full
        yield lo, hi, max(width, 0)


def _shared(q, sel, valid, w, sm_scale, d_v, gather):
    """Attention of a block over the union of its keys, or None when the rows share too little / repeat a key.
    CPU only: the union's size is data-dependent (a host sync, and no CUDA-graph capture, on a GPU)."""
    if not SHARED_MAX or sel.device.type != "cpu" or sel.shape[0] == 1:   # off, or one row: nothing to share
        return None
    uniq, inv = torch.unique(sel, return_inverse=True)            # sorted; -1 (if any) first
    if uniq.numel() > SHARED_MAX * max(w, 1) + 1:
        return None
    mask = torch.zeros(sel.shape[0], uniq.numel(), dtype=torch.bool, device=sel.device)
    mask.scatter_(1, inv.view(sel.shape[0], -1), valid)          # invalid entries all map to -1: False
    if not torch.equal(mask.sum(1), valid.sum(1)):                # a key selected twice counts twice
        return None
    return _attend(q, gather(uniq), mask, sm_scale, d_v)          # kv [U, 576] shared by the block's rows


def _attend_common(q, kv, valid, sm_scale, d_v):
    """naive._attend with one key matrix kv [K, 576] for all rows of q [r, h, 576] (valid [r, K])."""
    scores = torch.einsum("rhd,kd->rhk", q.float(), kv) * sm_scale
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - lse[..., None].clamp_min(-1e30)).nan_to_num(0.0)
    return torch.einsum("rhk,kd->rhd", p, kv[:, :d_v]), lse


def _per_row(q, sel, valid, sm_scale, d_v, gather, out, lse):
    """Each row gathers its own keys, in sub-blocks that fit BLOCK_BYTES; writes out [r, h, d_v], lse [r, h]."""
    step = _rows_per_block(max(sel.shape[1], 1), q.shape[1], per_row_gather=True)
    for r0 in range(0, q.shape[0], step):
        r = slice(r0, r0 + step)
        o, l = _attend(q[r], gather(sel[r]), valid[r], sm_scale, d_v)
        out[r], lse[r] = o.to(out.dtype), l


def _cpu_block(q, sel, valid, sm_scale, d_v, gather, out, lse):
    """One block on the CPU (see the module docstring): rows grouped by their KEY_BUCKET-rounded width; in a
    group, rows that agree with the longest row on all their valid entries share one gather and one GEMM pair."""
    w = sel.shape[1]
    last = torch.where(valid, torch.arange(1, w + 1), 0).amax(1) if w else torch.zeros(sel.shape[0], dtype=torch.long)
    cols = (last + KEY_BUCKET - 1) // KEY_BUCKET * KEY_BUCKET
    for k in cols.unique().tolist():
        rows = (cols == k).nonzero().squeeze(1)
        if k == 0:   # nothing valid: what _attend gives
            out[rows], lse[rows] = 0, float("-inf")
            continue
        s, v = sel[rows, :k], valid[rows, :k]
        if k > w:    # pad to the bucket: no key
            s = torch.cat([s, s.new_full((len(rows), k - w), -1)], 1)
            v = torch.cat([v, v.new_zeros(len(rows), k - w)], 1)
        base = s[last[rows].argmax()]
        share = ((s == base) | ~v).all(1)
        if int(share.sum()) > 1:
            o, l = _attend_common(q[rows[share]], gather(base), v[share], sm_scale, d_v)
            out[rows[share]], lse[rows[share]] = o.to(out.dtype), l
            rows, s, v = rows[~share], s[~share], v[~share]
        if len(rows):
            sub_out = torch.empty(len(rows), *out.shape[1:], dtype=out.dtype)
            sub_lse = torch.empty(len(rows), *lse.shape[1:], dtype=lse.dtype)
            _per_row(q[rows], s, v, sm_scale, d_v, gather, sub_out, sub_lse)
            out[rows], lse[rows] = sub_out, sub_lse


def _run(q3, idx2, lens, sm_scale, d_v, gather):
    n, h, _ = q3.shape
    out = torch.empty(n, h, d_v, dtype=q3.dtype, device=q3.device)
    lse = torch.empty(n, h, dtype=torch.float32, device=q3.device)
    for lo, hi, w in _blocks(n, idx2, lens, h):
        idx = idx2[lo:hi, :w]
        valid = valid_entries(idx, None if lens is None else lens[lo:hi])
        sel = torch.where(valid, idx, -1)
        res = _shared(q3[lo:hi], sel, valid, w, sm_scale, d_v, gather)
        if res is not None:
            out[lo:hi], lse[lo:hi] = res[0].to(q3.dtype), res[1]
        elif q3.device.type == "cpu":
            _cpu_block(q3[lo:hi], sel, valid, sm_scale, d_v, gather, out[lo:hi], lse[lo:hi])
        else:
            _per_row(q3[lo:hi], sel, valid, sm_scale, d_v, gather, out[lo:hi], lse[lo:hi])
    return out, lse


def _cache_rows(kv_cache, slots):
    """naive_mla_cache_gather: fp32 rows [..., 576], zeros for slot -1. Rows are gathered with index_select
    (several times faster than advanced indexing on CPU); a bf16 cache zeroes only its -1 rows before the fp32
    conversion (one fp32 pass instead of two); fp8_ds_mla rows are dequantized as naive.py does."""
    flat = slots.reshape(-1).long()
    rows = kv_cache.view(-1, kv_cache.shape[-1]).index_select(0, flat.clamp_min(0))
    if is_fp8_cache(kv_cache):
        return (dequant_fp8_rows(rows) * (flat >= 0)[:, None]).reshape(*slots.shape, HEAD_576)
    rows.index_fill_(0, (flat < 0).nonzero().squeeze(1), 0)
    return rows.float().reshape(*slots.shape, HEAD_576)


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    b, s_q, h, _ = q.shape
    lens = None if topk_length is None else topk_length.reshape(b * s_q)
    out, lse = _run(q.reshape(b * s_q, h, HEAD_576), indices.reshape(b * s_q, -1), lens, sm_scale, d_v,
                    lambda idx: _cache_rows(kv_cache, idx))
    return out.reshape(b, s_q, h, d_v), lse.reshape(b, s_q, h)


def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    rows = kv.reshape(kv.shape[0], -1)

    def gather(idx):   # as naive_sparse_mla_prefill: fp32 rows of kv [..., 576], zeros where idx is -1
        return rows[idx.long().clamp_min(0)].float() * (idx >= 0)[..., None]
    return _run(q, indices[:, 0, :], topk_length, sm_scale, d_v, gather)
