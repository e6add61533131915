"""The lightning indexer's per-token math, shared by the reference model and the engine adapters
(each passes its own wq_b / wk / weights_proj projections to `indexer_inputs`)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import V32Config
from .mla import out
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


def k_layer_norm(k: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The indexer's k_norm (a LayerNorm, eps 1e-6) in fp32, back in k's dtype."""
    return F.layer_norm(k.float(), (k.shape[-1],), weight.float(), bias.float(), eps=1e-6).to(k.dtype)


def indexer_keys(x: torch.Tensor, positions: torch.Tensor, rope: YarnRope, cfg: V32Config, wk, k_norm
                 ) -> torch.Tensor:
    """The keys every step writes: k_norm(wk(x)) with rope -> [T, 128] (wk, k_norm: callables, see
    indexer_inputs)."""
    return indexer_rope_qk(None, k_norm(out(wk(x))), positions, rope, cfg)[1]


def indexer_queries(x: torch.Tensor, qr: torch.Tensor, positions: torch.Tensor, rope: YarnRope, cfg: V32Config,
                    wq_b, weights_proj, quant):
    """What a scored row needs besides the keys: wq_b(qr) with rope, FP8 -> (q_fp8 [T, H, 128] e4m3, weights
    [T, H] fp32 with the q scales folded in)."""
    q = out(wq_b(qr)).view(x.shape[0], cfg.index_n_heads, cfg.index_head_dim)
    q_fp8, q_scale = quant(indexer_rope_qk(q, None, positions, rope, cfg)[0])
    return q_fp8, indexer_head_weights(out(weights_proj(x)), q_scale, cfg)


def indexer_inputs(x: torch.Tensor, qr: torch.Tensor, positions: torch.Tensor, rope: YarnRope, cfg: V32Config,
                   wq_b, wk, k_norm, weights_proj, quant, with_q: bool = True):
    """What the DSA step scores with, from the layer's wq_b / wk -> k_norm / weights_proj (callables: an engine's
    modules or plain weight products; mla.out unwraps engine outputs) and an indexer_quant (the op, or vLLM's
    registered custom op): x [T, D], qr [T, q_lora] -> (k [T, 128] normed and roped, q_fp8 [T, H, 128] e4m3,
    weights [T, H] fp32). with_q=False: (k, None, None), for a batch nothing is scored in
    (dsa.DSAPlan.needs_scores)."""
    k = indexer_keys(x, positions, rope, cfg, wk, k_norm)
    if not with_q:
        return k, None, None
    return (k, *indexer_queries(x, qr, positions, rope, cfg, wq_b, weights_proj, quant))


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
