"""The torch backend of sparse MLA: the reference's math (naive._attend) in blocks of query rows.

Each block reads only its rows' entries up to the block's longest topk_length (a row whose context is
shorter than top-k costs its context, not top-k), and its working set stays within BLOCK_BYTES whatever the
number of rows. Rows of one block usually share most keys (a prefill chunk's rows select from the same
context; below top-k they select all of it): the block gathers (and, for fp8_ds_mla, dequantizes) the union of
its keys once and attends with two GEMMs over it, a per-row mask keeping each row to its own selection --
the cost of dense attention over that context. Blocks whose rows share little (decode rows of different
requests) or that select a key twice gather per row instead. Same scores, masking and softmax as the
reference; only the fp32 summation order differs (a few ulps).
The shared-key path is opt-in (DSV32_TORCH_SHARED_KEYS=1): whether a block takes it depends on which rows are
batched together, so an engine (rows of several requests per block) and the reference model (one sequence)
would sum in different orders, and bf16 engines would stop equalling the bf16 reference bit for bit (seed
sweep 2026-12-06: SGLang bf16 logprobs above top-k past their 2e-3 bound at seeds 1 and 2, within it with the
path off). Off, every block gathers per row: memory stays bounded, prefill costs top-k gathers per row.
"""
from __future__ import annotations

import os

import torch

from .naive import HEAD_576, KV_LORA, _attend, naive_mla_cache_gather, valid_entries

BLOCK_BYTES = 64 << 20   # fp32 working set of one block: gathered rows + scores / probabilities
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
            continue
        step = _rows_per_block(max(w, 1), h, per_row_gather=True)
        for r0 in range(lo, hi, step):        # per-row gathers, in sub-blocks that fit BLOCK_BYTES
            r1 = min(hi, r0 + step)
            o, l = _attend(q3[r0:r1], gather(sel[r0 - lo:r1 - lo]), valid[r0 - lo:r1 - lo], sm_scale, d_v)
            out[r0:r1], lse[r0:r1] = o.to(q3.dtype), l
    return out, lse


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    b, s_q, h, _ = q.shape
    lens = None if topk_length is None else topk_length.reshape(b * s_q)
    out, lse = _run(q.reshape(b * s_q, h, HEAD_576), indices.reshape(b * s_q, -1), lens, sm_scale, d_v,
                    lambda idx: naive_mla_cache_gather(kv_cache, idx))
    return out.reshape(b, s_q, h, d_v), lse.reshape(b, s_q, h)


def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    rows = kv.reshape(kv.shape[0], -1)

    def gather(idx):   # as naive_sparse_mla_prefill: fp32 rows of kv [..., 576], zeros where idx is -1
        return rows[idx.long().clamp_min(0)].float() * (idx >= 0)[..., None]
    return _run(q, indices[:, 0, :], topk_length, sm_scale, d_v, gather)
