"""MLA's per-token math around the linears, shared by the reference model and both engine adapters: each passes
its own projections (the reference: plain weight products; the engines: their parallel linears and norms) to
`project` and `output`, and runs the DSA step (keys -> top-k -> sparse MLA) in between its own way.

DeepSeek's MLA caches one 512-wide latent c (kv_a_layernorm output) plus a 64-wide rope key per token.
kv_b_proj maps c to per-head [k_nope; v]; absorbing its two halves lets attention run on the latent:
  q_nope . (W_uk c) = (q_nope W_uk) . c     -> the query becomes [q_nope W_uk ; q_pe] (576 wide);
  sum_j p_j (W_uv c_j) = W_uv (sum_j p_j c_j) -> the latent output is expanded to v per head afterwards.
"""
from __future__ import annotations

import torch

from ..config import V32Config
from .rope import YarnRope


def out(y):
    """An engine linear's output: vLLM's and SGLang's linears return (output, bias), plain callables the output."""
    return y[0] if isinstance(y, tuple) else y


def linear_of(w: torch.Tensor):
    """A bias-free linear on a plain weight [out, in] as a callable for the functions here: t -> t @ w.T."""
    return lambda t: t @ w.t()


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


def project(x: torch.Tensor, positions: torch.Tensor, rope: YarnRope, cfg: V32Config, heads: int, q_a, q_a_norm,
            q_b, kv_a, kv_a_norm):
    """x [T, D] (after the input norm) through the layer's q_a_proj -> q_a_layernorm -> q_b_proj (this rank's
    `heads`) and kv_a_proj_with_mqa -> (qr [T, q_lora] (the indexer's query input), q_nope [T, h, nope],
    q_pe [T, h, rope] and k_pe [T, rope] roped (interleaved), kv_c [T, kv_lora] = kv_a_layernorm(latent))."""
    n = x.shape[0]
    qr = q_a_norm(out(q_a(x)))
    q = out(q_b(qr)).view(n, heads, cfg.qk_head_dim)
    q_nope, q_pe = q[..., : cfg.qk_nope_head_dim], q[..., cfg.qk_nope_head_dim:]
    kv = out(kv_a(x))
    kv_c = kv_a_norm(kv[:, : cfg.kv_lora_rank].contiguous())
    k_pe = rope.apply(kv[:, cfg.kv_lora_rank:], positions, interleaved=True)
    q_pe = rope.apply(q_pe, positions, interleaved=True)
    return qr, q_nope, q_pe, kv_c, k_pe


def output(out_lat: torch.Tensor, w_uv: torch.Tensor, o_proj) -> torch.Tensor:
    """Sparse MLA's latent output [T, h, kv_lora] -> o_proj(per-head values [T, h * v]) [T, D]."""
    n, h = out_lat.shape[:2]
    return out(o_proj(expand_latent_output(out_lat, w_uv).reshape(n, h * w_uv.shape[1])))
