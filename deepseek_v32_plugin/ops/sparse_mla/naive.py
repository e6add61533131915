"""Plain-PyTorch references for the latent cache and sparse MLA (they define the semantics)."""
from __future__ import annotations

import torch

from .. import PAGE_SIZE
from ..fp8_quant.naive import FP8_DTYPE, fp8_saturate_cast, ue8m0_scale

PAGE = PAGE_SIZE   # the one definition is ops.PAGE_SIZE
KV_LORA = 512
ROPE = 64
HEAD_576 = KV_LORA + ROPE
FP8_BYTES = KV_LORA + 4 * 4 + ROPE * 2  # 656: 512 e4m3 | 4 fp32 scales | 64 bf16 rope


def is_fp8_cache(kv_cache: torch.Tensor) -> bool:
    return kv_cache.dtype == torch.uint8


def naive_mla_cache_write(kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                          slot_mapping: torch.Tensor) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    rows = kv_cache.view(-1, kv_cache.shape[-1])  # [pages*64, 576 or 656]
    c, pe = kv_c[keep].float(), k_pe[keep]
    if not is_fp8_cache(kv_cache):
        rows[slots] = torch.cat([c, pe.float()], dim=-1).to(kv_cache.dtype)
        return
    g = c.reshape(-1, 4, 128)
    scale = ue8m0_scale(g.abs().amax(dim=-1))                        # [T, 4]
    vals = fp8_saturate_cast(g / scale[..., None]).reshape(-1, KV_LORA).view(torch.uint8)
    packed = torch.cat([vals, scale.contiguous().view(torch.uint8).reshape(-1, 16),
                        pe.to(torch.bfloat16).contiguous().view(torch.uint8).reshape(-1, 2 * ROPE)], dim=-1)
    rows[slots] = packed


def naive_mla_cache_gather(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Rows [..., 576] fp32 for slots [...]; slot -1 gives zeros."""
    flat = slots.reshape(-1).long()
    valid = flat >= 0
    rows = kv_cache.view(-1, kv_cache.shape[-1])[flat.clamp_min(0)]
    out = dequant_fp8_rows(rows) if is_fp8_cache(kv_cache) else rows.float()
    out = out * valid[:, None]
    return out.reshape(*slots.shape, HEAD_576)


def dequant_fp8_rows(rows: torch.Tensor) -> torch.Tensor:
    """fp8_ds_mla rows [N, 656] uint8 -> fp32 [N, 576]."""
    vals = rows[:, :KV_LORA].contiguous().view(FP8_DTYPE).float().reshape(-1, 4, 128)
    scale = rows[:, KV_LORA:KV_LORA + 16].contiguous().view(torch.float32)      # [N, 4]
    pe = rows[:, KV_LORA + 16:].contiguous().view(torch.bfloat16).float()      # [N, 64]
    return torch.cat([(vals * scale[..., None]).reshape(-1, KV_LORA), pe], dim=-1)


def _attend(q: torch.Tensor, kv: torch.Tensor, valid: torch.Tensor, sm_scale: float, d_v: int):
    """q [..., h, 576], kv [..., k, 576], valid [..., k] -> out [..., h, d_v] fp32, lse [..., h] fp32."""
    scores = torch.einsum("...hd,...kd->...hk", q.float(), kv) * sm_scale
    scores = scores.masked_fill(~valid[..., None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                                   # -inf where nothing is valid
    p = torch.exp(scores - lse[..., None].clamp_min(-1e30)).nan_to_num(0.0)
    out = torch.einsum("...hk,...kd->...hd", p, kv[..., :d_v])
    return out, lse


def valid_entries(indices: torch.Tensor, topk_length) -> torch.Tensor:
    """indices [..., topk] -> bool [..., topk]: >= 0 and, with topk_length [...], before the row's length."""
    valid = indices >= 0
    if topk_length is not None:
        ar = torch.arange(indices.shape[-1], device=indices.device)
        valid &= ar < topk_length[..., None].long()
    return valid


def naive_sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    valid = valid_entries(indices, topk_length)
    kv = naive_mla_cache_gather(kv_cache, torch.where(valid, indices, -1))  # [b, s_q, topk, 576]
    out, lse = _attend(q, kv, valid, sm_scale, d_v)
    return out.to(q.dtype), lse


def naive_sparse_mla_prefill(q, kv, indices, sm_scale, d_v=KV_LORA, topk_length=None):
    idx = indices[:, 0, :].long()                                           # [s_q, topk]
    valid = valid_entries(idx, topk_length)
    rows = kv.reshape(kv.shape[0], -1).float()[idx.clamp_min(0)] * valid[..., None]
    out, lse = _attend(q, rows, valid, sm_scale, d_v)
    return out.to(q.dtype), lse
