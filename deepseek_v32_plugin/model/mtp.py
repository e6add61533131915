"""The MTP layer's input step, shared by the reference model and both engine adapters' draft models."""
from __future__ import annotations

import torch

from .mla import out


def mtp_input(emb: torch.Tensor, prev_hidden: torch.Tensor, positions: torch.Tensor, enorm, hnorm, eh_proj):
    """emb [T, D] = embed(t[i+1]) (zeroed at position 0, as vLLM and SGLang do), prev_hidden [T, D] = the main
    model's hidden state of t[i] -> eh_proj([enorm(emb) ; hnorm(prev_hidden)]) [T, D], the decoder layer's input.
    enorm / hnorm / eh_proj: callables (the engine's modules, or plain weight products)."""
    emb = torch.where((positions == 0)[:, None], torch.zeros_like(emb), emb)
    return out(eh_proj(torch.cat([enorm(emb), hnorm(prev_hidden.to(emb.dtype))], dim=-1)))
