"""The torch backend of the indexer's hot ops: the reference's math (naive.py) in bounded blocks.

No full-size dequantized copy of a cache and no [S, H, N] intermediate: keys are converted from e4m3 one
block at a time, right before their dot products, and each block's working set stays within BLOCK_BYTES.
The paged logits take every request of the batch at once (no Python loop over requests), one block of
context positions at a time, reading each key's 132 bytes once per step. Block bounds come from host
metadata when the inputs are on the CPU (no device sync); elsewhere they span the whole range.
"""
from __future__ import annotations

import torch

from .naive import BLOCK_VALUE_BYTES, BYTES_PER_TOKEN, FP8_DTYPE, HEAD_DIM, PAGE

BLOCK_BYTES = 64 << 20   # fp32 working set of one block ([rows, heads, keys] dot products)
KEY_BLOCK = 1024         # keys per block of the ragged logits


def _keys(kv_cache: torch.Tensor, blk: torch.Tensor, off: torch.Tensor):
    """e4m3 keys [..., 128] and fp32 scales [...] of the tokens at (page blk, offset off): naive_indexer_cache_gather
    reading each key's 128 + 4 bytes as rows with index_select (a page of 8448 bytes is 66 rows of 128: 64 keys,
    then the 64 scales), not byte by byte."""
    n = kv_cache.shape[0]
    rows_per_page = PAGE * BYTES_PER_TOKEN // HEAD_DIM
    if kv_cache.is_contiguous() and PAGE * BYTES_PER_TOKEN % HEAD_DIM == 0:
        b, o = blk.reshape(-1).long(), off.reshape(-1).long()
        vals = kv_cache.view(n * rows_per_page, HEAD_DIM).index_select(0, b * rows_per_page + o)
        scales = kv_cache.view(n * rows_per_page * HEAD_DIM // 4, 4).index_select(
            0, b * (rows_per_page * HEAD_DIM // 4) + BLOCK_VALUE_BYTES // 4 + o)
        return (vals.view(FP8_DTYPE).view(*blk.shape, HEAD_DIM),
                scales.view(torch.float32).view(blk.shape))
    pages = kv_cache.reshape(n, PAGE * BYTES_PER_TOKEN)
    vals = pages.as_strided((n, PAGE, HEAD_DIM), (pages.stride(0), HEAD_DIM, 1), pages.storage_offset())
    scales = pages.as_strided((n, PAGE, 4), (pages.stride(0), 4, 1), pages.storage_offset() + BLOCK_VALUE_BYTES)
    return vals[blk, off].view(FP8_DTYPE), scales[blk, off].view(torch.float32).squeeze(-1)


_LUT: dict = {}


def _f32(x: torch.Tensor) -> torch.Tensor:
    """e4m3 -> fp32 by a 256-entry table (the same values as x.float(), NaN codes included; ~5x faster on CPU)."""
    if x.device.type != "cpu":
        return x.float()
    lut = _LUT.get("e4m3")
    if lut is None:
        lut = _LUT["e4m3"] = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    return lut.index_select(0, x.reshape(-1).view(torch.uint8).int()).view(x.shape)


def indexer_cache_gather(kv_cache, slots):
    slots = slots.long()
    return _keys(kv_cache, slots // PAGE, slots % PAGE)


def _host_range(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[int, int]:
    if lo.device.type != "cpu" or lo.numel() == 0:
        return 0, n
    return max(0, int(lo.min())), min(n, int(hi.max()))


def fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke):
    s, h, _ = q_fp8.shape
    n = k_fp8.shape[0]
    out = torch.full((s, n), float("-inf"), device=q_fp8.device)
    kb = min(KEY_BLOCK, max(n, 1))
    rows = max(1, BLOCK_BYTES // (4 * h * kb))
    cols = torch.arange(n, device=q_fp8.device)
    for r0 in range(0, s, rows):
        r1 = min(s, r0 + rows)
        qf, w = _f32(q_fp8[r0:r1]), weights[r0:r1].float()
        lo, hi = _host_range(ks[r0:r1], ke[r0:r1], n)
        for c0 in range(lo, hi, kb):
            c1 = min(hi, c0 + kb)
            dots = torch.einsum("shd,nd->shn", qf, _f32(k_fp8[c0:c1])).relu_()
            out[r0:r1, c0:c1] = torch.einsum("shn,sh->sn", dots, w) * k_scale[c0:c1].float()[None, :]
        valid = (cols[None, :] >= ks[r0:r1, None].long()) & (cols[None, :] < ke[r0:r1, None].long())
        out[r0:r1].masked_fill_(~valid, float("-inf"))
    return out


def fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len):
    b, next_n, h, _ = q_fp8.shape
    dev = q_fp8.device
    out = torch.full((b, next_n, max_context_len), float("-inf"), device=dev)
    if b == 0 or max_context_len == 0:
        return out.view(b * next_n, max_context_len)
    qf = _f32(q_fp8)
    w = weights.float().view(b, next_n, h)
    # row (i, j) sees positions < context_lens[i] - next_n + j + 1
    ke = context_lens.long()[:, None] - next_n + 1 + torch.arange(next_n, device=dev)[None, :]   # [b, next_n]
    per_pos = 4 * b * next_n * h + 4 * b * HEAD_DIM               # dots + converted keys per position
    cb = max(PAGE, (BLOCK_BYTES // per_pos) // PAGE * PAGE)
    pages = kv_cache.shape[0]
    for c0 in range(0, max_context_len, cb):
        c1 = min(max_context_len, c0 + cb)
        pos = torch.arange(c0, c1, device=dev)
        blk = block_table[:, pos // PAGE].long().clamp(0, pages - 1)   # [b, C]; pages past a context: masked
        k_fp8, k_scale = _keys(kv_cache, blk, (pos % PAGE)[None, :].expand_as(blk))
        kf = _f32(k_fp8)
        dots = torch.einsum("bjhd,bcd->bjhc", qf, kf).relu_()
        logits = torch.einsum("bjhc,bjh->bjc", dots, w) * k_scale.view(b, 1, c1 - c0)
        out[:, :, c0:c1] = logits.masked_fill(pos[None, None, :] >= ke[:, :, None], float("-inf"))
    return out.view(b * next_n, max_context_len)


def indexer_topk(logits, topk, ks, ke):
    """As naive_indexer_topk (top min(topk, ke-ks) of [ks, ke), relative, descending, -1 padded), with
    torch.topk over bounded row blocks instead of two full argsorts."""
    r, n = logits.shape
    k = min(topk, n)
    out = torch.full((r, topk), -1, dtype=torch.int32, device=logits.device)
    rows = max(1, BLOCK_BYTES // (12 * max(n, 1)))
    cols = torch.arange(n, device=logits.device)
    for r0 in range(0, r, rows):
        r1 = min(r, r0 + rows)
        s, e = ks[r0:r1].long(), ke[r0:r1].long()
        valid = (cols[None, :] >= s[:, None]) & (cols[None, :] < e[:, None])
        # outside the window ranks below every inside score, -inf ones included
        key = torch.where(valid, logits[r0:r1].float(), float("-inf"))
        key = torch.where(valid & (key == float("-inf")), torch.finfo(torch.float32).min, key)
        idx = torch.topk(key, k, dim=-1, sorted=True).indices
        count = (e - s).clamp(min=0, max=topk)
        keep = torch.arange(k, device=logits.device)[None, :] < count[:, None]
        out[r0:r1, :k] = torch.where(keep, idx - s[:, None], -1).int()
    return out
