"""MLA weight absorption, shared by the reference model and both engine adapters.

DeepSeek's MLA caches one 512-wide latent c (kv_a_layernorm output) plus a 64-wide rope key per token.
kv_b_proj maps c to per-head [k_nope; v]; absorbing its two halves lets attention run on the latent:
  q_nope . (W_uk c) = (q_nope W_uk) . c     -> the query becomes [q_nope W_uk ; q_pe] (576 wide);
  sum_j p_j (W_uv c_j) = W_uv (sum_j p_j c_j) -> the latent output is expanded to v per head afterwards.
"""
from __future__ import annotations

import torch


def split_kv_b(kv_b_weight: torch.Tensor, heads: int, qk_nope_head_dim: int, v_head_dim: int, kv_lora_rank: int):
    """kv_b_proj weight [heads * (nope + v), kv_lora] (this rank's heads) -> (w_uk [heads, nope, kv_lora],
    w_uv [heads, v, kv_lora]), views of the weight (no copy: at full size kv_b is 32 MiB per layer)."""
    want = (heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank)
    if tuple(kv_b_weight.shape) != want:
        raise ValueError(f"kv_b_proj weight has shape {list(kv_b_weight.shape)}, expected {list(want)} "
                         f"({heads} heads x (nope {qk_nope_head_dim} + v {v_head_dim}), kv_lora_rank {kv_lora_rank})")
    w = kv_b_weight.view(heads, qk_nope_head_dim + v_head_dim, kv_lora_rank)
    return w[:, :qk_nope_head_dim], w[:, qk_nope_head_dim:]


def absorb_query(q_nope: torch.Tensor, q_pe: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """q_nope [T, H, nope], q_pe [T, H, rope] (rotated), w_uk [H, nope, kv_lora] -> [T, H, kv_lora + rope]."""
    return torch.cat([torch.einsum("thd,hdc->thc", q_nope, w_uk), q_pe], dim=-1)


def expand_latent_output(out_lat: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """Attention output in latent space [T, H, kv_lora] -> per-head values [T, H, v] (in w_uv's dtype)."""
    return torch.einsum("thc,hvc->thv", out_lat.to(w_uv.dtype), w_uv)
