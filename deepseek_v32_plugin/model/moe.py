"""V3.2 MoE routing (noaux_tc): sigmoid scores, bias for choosing only, group-limited top-k."""
from __future__ import annotations

import torch

from ..config import V32Config


def route(router_logits: torch.Tensor, e_score_correction_bias: torch.Tensor, cfg: V32Config):
    """router_logits [T, E] (x @ gate.weight.T, fp32) -> (topk_weights [T, k] fp32, topk_ids [T, k] int32).

    score = sigmoid(logits); choice uses score + bias: keep the topk_group groups whose top-2 biased scores
    sum highest, then the top-k experts inside them; weights are the *unbiased* scores of the chosen experts,
    renormalised to sum 1 (norm_topk_prob), times routed_scaling_factor.
    """
    t, e = router_logits.shape
    scores = router_logits.float().sigmoid()
    biased = scores + e_score_correction_bias.float()[None, :]
    groups = biased.view(t, cfg.n_group, e // cfg.n_group)
    group_score = groups.topk(2, dim=-1).values.sum(-1)                        # [T, n_group]
    keep_groups = group_score.topk(cfg.topk_group, dim=-1).indices
    group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
    expert_mask = group_mask[:, :, None].expand_as(groups).reshape(t, e)
    ids = biased.masked_fill(~expert_mask, float("-inf")).topk(cfg.num_experts_per_tok, dim=-1).indices
    weights = scores.gather(1, ids)
    if cfg.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights * cfg.routed_scaling_factor, ids.int()
