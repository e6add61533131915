"""The lightning indexer's per-token math, shared by the reference model and the engine adapters
(each engine computes the wq_b / wk / weights_proj projections with its own layers, then calls these)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import V32Config
from .rope import YarnRope


def indexer_rope_qk(q: Optional[torch.Tensor], k: Optional[torch.Tensor], positions: torch.Tensor, rope: YarnRope,
                    cfg: V32Config):
    """q [T, H, 128] = wq_b(qr), k [T, 128] = k_norm(wk(x)) -> both with rope on their first
    qk_rope_head_dim dims, half-split (non-interleaved, unlike MLA's interleaved rope). q or k None: the other only."""
    r = cfg.qk_rope_head_dim
    if q is not None:
        q = torch.cat([rope.apply(q[..., :r], positions, interleaved=False), q[..., r:]], dim=-1)
    if k is not None:
        k = torch.cat([rope.apply(k[:, :r], positions, interleaved=False), k[:, r:]], dim=-1)
    return q, k


def indexer_qk(x: torch.Tensor, qr: torch.Tensor, positions: torch.Tensor, rope: YarnRope, cfg: V32Config,
               wq_b: torch.Tensor, wk: torch.Tensor, k_norm_weight: torch.Tensor, k_norm_bias: torch.Tensor,
               weights_proj: torch.Tensor, with_q: bool = True):
    """The indexer's projections from plain weight tensors (the reference model; the SGLang adapter, whose
    layers hold the same tensors): x [T, D], qr [T, q_lora] -> q [T, H, 128], k [T, 128] (k_norm in fp32,
    both roped), weights_proj(x) [T, H] fp32. with_q=False: (None, k, None), for a batch nothing is scored in
    (dsa.DSAPlan.needs_scores)."""
    q = (qr @ wq_b.t()).view(x.shape[0], cfg.index_n_heads, cfg.index_head_dim) if with_q else None
    k = F.layer_norm((x @ wk.t()).float(), (cfg.index_head_dim,), k_norm_weight.float(), k_norm_bias.float(),
                     eps=1e-6).to(x.dtype)
    q, k = indexer_rope_qk(q, k, positions, rope, cfg)
    return q, k, (x.float() @ weights_proj.float().t() if with_q else None)


def indexer_head_weights(weights_proj_out: torch.Tensor, q_scale: torch.Tensor, cfg: V32Config) -> torch.Tensor:
    """weights_proj(x) [T, H] and the q FP8 scales [T, H] -> the `weights` [T, H] fp32 the logits ops take:
    weights_proj(x) * H^-0.5 * D^-0.5 (softmax scale) * q_scale."""
    head_scale = cfg.index_n_heads ** -0.5 * cfg.index_head_dim ** -0.5
    return (weights_proj_out.float() * head_scale * q_scale.float()).contiguous()


def ascending(pos_idx: torch.Tensor) -> torch.Tensor:
    """Selected positions [T, k] (-1 = none) in one canonical order: ascending, -1 last. Attention over a set
    does not depend on its order mathematically, but its rounding does: with one order for every path (top-k
    of any backend, the identity for rows whose context fits in top-k, the reference) an engine's rows equal
    the reference's bit for bit in the same dtype instead of differing by summation order (measured: bf16
    SGLang vs the bf16 reference, seed 3, max |dlogprob| 2.4e-2 with score vs ascending order, 0 with one)."""
    big = torch.iinfo(pos_idx.dtype).max
    s = torch.where(pos_idx < 0, big, pos_idx).sort(-1).values
    return torch.where(s == big, -1, s).to(pos_idx.dtype)
