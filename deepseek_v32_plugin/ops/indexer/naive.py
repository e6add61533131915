"""Plain-PyTorch references for the lightning indexer (they define the semantics; see __init__.py)."""
from __future__ import annotations

import functools

import torch

from .. import PAGE_SIZE
from ..fp8_quant.naive import FP8_DTYPE, fp8_saturate_cast, ue8m0_scale

HEAD_DIM = 128
PAGE = PAGE_SIZE   # the one definition is ops.PAGE_SIZE
BLOCK_VALUE_BYTES = PAGE * HEAD_DIM  # 8192: the 64x128 e4m3 values come first in a page ...
BYTES_PER_TOKEN = HEAD_DIM + 4       # ... then 64 fp32 scales: 132 B per token


@functools.lru_cache(maxsize=None)
def hadamard_matrix(n: int = HEAD_DIM, device: str = "cpu") -> torch.Tensor:
    """Sylvester-order Hadamard matrix scaled by n^-0.5 (orthonormal, symmetric), fp32."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h * n ** -0.5).to(device)


def naive_hadamard_rotate(x: torch.Tensor) -> torch.Tensor:
    h = hadamard_matrix(x.shape[-1], str(x.device))
    return (x.float() @ h).to(x.dtype)


def naive_indexer_quant(x: torch.Tensor, rotate: bool = True):
    xf = x.float()
    if rotate:
        xf = xf @ hadamard_matrix(xf.shape[-1], str(x.device))
    scale = ue8m0_scale(xf.abs().amax(dim=-1))
    return fp8_saturate_cast(xf / scale.unsqueeze(-1)), scale


def _flat_pages(kv_cache: torch.Tensor) -> torch.Tensor:
    return kv_cache.view(kv_cache.shape[0], PAGE * BYTES_PER_TOKEN)


def naive_indexer_cache_write(k_fp8: torch.Tensor, k_scale: torch.Tensor, kv_cache: torch.Tensor,
                              slot_mapping: torch.Tensor) -> None:
    pages = _flat_pages(kv_cache)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blk, off = slots // PAGE, slots % PAGE
    vals = k_fp8[keep].view(torch.uint8)                        # [T, 128]
    scales = k_scale[keep].float().contiguous().view(torch.uint8).view(-1, 4)  # [T, 4]
    col = off[:, None] * HEAD_DIM + torch.arange(HEAD_DIM, device=slots.device)
    pages[blk[:, None], col] = vals
    col = BLOCK_VALUE_BYTES + off[:, None] * 4 + torch.arange(4, device=slots.device)
    pages[blk[:, None], col] = scales


def naive_indexer_k_quant_and_cache(k: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    k_fp8, k_scale = naive_indexer_quant(k, rotate=True)
    naive_indexer_cache_write(k_fp8, k_scale, kv_cache, slot_mapping)


def naive_indexer_cache_gather(kv_cache: torch.Tensor, slots: torch.Tensor):
    pages = _flat_pages(kv_cache)
    slots = slots.long()
    blk, off = slots // PAGE, slots % PAGE
    col = off[:, None] * HEAD_DIM + torch.arange(HEAD_DIM, device=slots.device)
    vals = pages[blk[:, None], col].contiguous().view(FP8_DTYPE)
    col = BLOCK_VALUE_BYTES + off[:, None] * 4 + torch.arange(4, device=slots.device)
    scales = pages[blk[:, None], col].contiguous().view(torch.float32).squeeze(-1)
    return vals, scales


def naive_fp8_indexer_logits(q_fp8, k_fp8, k_scale, weights, ks, ke):
    # [S, H, N] = relu(q . k), weighted over heads, times the key's scale
    dots = torch.einsum("shd,nd->shn", q_fp8.float(), k_fp8.float()).relu_()
    logits = torch.einsum("shn,sh->sn", dots, weights.float()) * k_scale.float()[None, :]
    n = torch.arange(k_fp8.shape[0], device=logits.device)
    valid = (n[None, :] >= ks[:, None].long()) & (n[None, :] < ke[:, None].long())
    return logits.masked_fill(~valid, float("-inf"))


def naive_fp8_paged_indexer_logits(q_fp8, kv_cache, weights, context_lens, block_table, max_context_len):
    b, next_n, h, d = q_fp8.shape
    out = torch.full((b * next_n, max_context_len), float("-inf"), device=q_fp8.device)
    for i in range(b):
        ctx = int(context_lens[i])
        if ctx == 0:
            continue
        pos = torch.arange(ctx, device=q_fp8.device)
        slots = block_table[i, pos // PAGE].long() * PAGE + pos % PAGE
        k_fp8, k_scale = naive_indexer_cache_gather(kv_cache, slots)
        rows = slice(i * next_n, (i + 1) * next_n)
        ke = ctx - next_n + 1 + torch.arange(next_n, device=q_fp8.device)
        out[rows, :ctx] = naive_fp8_indexer_logits(q_fp8[i], k_fp8, k_scale, weights[rows],
                                                   torch.zeros_like(ke), ke)
    return out


def naive_indexer_topk(logits, topk, ks, ke):
    r, n = logits.shape
    cols = torch.arange(n, device=logits.device)
    valid = (cols[None, :] >= ks[:, None].long()) & (cols[None, :] < ke[:, None].long())
    masked = logits.float().masked_fill(~valid, float("-inf"))
    k = min(topk, n)
    # descending score; among equal scores (-inf inside the window included) positions inside [ks, ke) first,
    # so a window that must take some of its -inf keys never yields a position outside it
    inside_first = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)
    order = torch.argsort(masked.gather(1, inside_first), dim=-1, descending=True, stable=True)
    idx = inside_first.gather(1, order[:, :k])
    count = (ke.long() - ks.long()).clamp(min=0, max=topk)
    keep = torch.arange(k, device=logits.device)[None, :] < count[:, None]
    idx = torch.where(keep, idx - ks[:, None].long(), torch.full_like(idx, -1)).int()
    if k < topk:
        idx = torch.cat([idx, idx.new_full((r, topk - k), -1)], dim=1)
    return idx


def naive_indices_to_slots(indices, block_table, page_size=PAGE):
    valid = indices >= 0
    pos = indices.clamp_min(0).long()
    pages = torch.gather(block_table.long(), 1, pos // page_size)
    slots = pages * page_size + pos % page_size
    return torch.where(valid, slots, torch.full_like(slots, -1)).int()
