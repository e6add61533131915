"""The torch backend of sparse MLA: the reference's math (naive._attend) in blocks of query rows.

Each block gathers (and, for fp8_ds_mla, dequantizes) only its rows' entries up to the block's longest
topk_length, so memory is bounded by BLOCK_BYTES whatever the number of rows, and a row whose context is
shorter than top-k costs its context, not top-k. Per row the arithmetic is the reference's (same gather,
same einsums, same masking), so results do not depend on the blocking.
"""
from __future__ import annotations

import torch

from .naive import HEAD_576, KV_LORA, _attend, naive_mla_cache_gather, valid_entries

BLOCK_BYTES = 64 << 20   # fp32 working set of one block: gathered rows + scores / probabilities


def _rows_per_block(width: int, heads: int) -> int:
    per_row = 4 * width * (2 * HEAD_576 + 4 * heads)   # gathered rows (+ masked copy) and ~4 [h, width] buffers
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


def _run(q3, idx2, lens, sm_scale, d_v, gather):
    n, h, _ = q3.shape
    out = torch.empty(n, h, d_v, dtype=q3.dtype, device=q3.device)
    lse = torch.empty(n, h, dtype=torch.float32, device=q3.device)
    for lo, hi, w in _blocks(n, idx2, lens, h):
        idx = idx2[lo:hi, :w]
        valid = valid_entries(idx, None if lens is None else lens[lo:hi])
        o, l = _attend(q3[lo:hi], gather(torch.where(valid, idx, -1)), valid, sm_scale, d_v)
        out[lo:hi], lse[lo:hi] = o.to(q3.dtype), l
    return out, lse


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    b, s_q, h, _ = q.shape
    lens = None if topk_length is None else topk_length.reshape(b * s_q)
    out, lse = _run(q.reshape(b * s_q, h, HEAD_576), indices.reshape(b * s_q, -1), lens, sm_scale, d_v,
                    lambda idx: naive_mla_cache_gather(kv_cache, idx))
    return out.reshape(b, s_q, h, d_v), lse.reshape(b, s_q, h)


def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    rows = kv.reshape(kv.shape[0], -1)

    def gather(idx):   # as naive_sparse_mla_prefill: fp32 rows of kv, zeros where idx is -1
        return rows[idx.long().clamp_min(0)].float() * (idx >= 0)[..., None]
    return _run(q, indices[:, 0, :], topk_length, sm_scale, d_v, gather)
