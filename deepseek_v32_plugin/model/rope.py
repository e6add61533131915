"""YaRN rotary embedding for V3.2: interleaved pairs for MLA, half-split (non-interleaved) for the indexer.

Like vLLM, SGLang and HF we always apply YaRN (DeepSeek's reference only does when the serving length
exceeds original_max_position_embeddings). With mscale == mscale_all_dim (true for V3.2) cos/sin carry
no extra magnitude factor; the attention-side mscale^2 lives in V32Config.softmax_scale.
"""
from __future__ import annotations

import math

import torch

from ..config import V32Config


def _correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    return dim * math.log(max_pos / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(dim: int, base: float, factor: float, orig_max_pos: int, beta_fast: float,
                  beta_slow: float) -> torch.Tensor:
    """[dim/2] fp32 inverse frequencies, blended between interpolated (/factor) and original ones."""
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if factor <= 1:
        return freqs.float()
    low = max(math.floor(_correction_dim(beta_fast, dim, base, orig_max_pos)), 0)
    high = min(math.ceil(_correction_dim(beta_slow, dim, base, orig_max_pos)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep_original = 1 - ramp
    return (freqs / factor * (1 - keep_original) + freqs * keep_original).float()


class YarnRope:
    def __init__(self, cfg: V32Config, dim: int | None = None):
        rs = cfg.rope_scaling
        self.dim = dim or cfg.qk_rope_head_dim
        if rs is None:
            self.inv_freq = yarn_inv_freq(self.dim, cfg.rope_theta, 1.0, 1, 1, 1)
        else:
            self.inv_freq = yarn_inv_freq(self.dim, cfg.rope_theta, rs.factor, rs.original_max_position_embeddings,
                                          rs.beta_fast, rs.beta_slow)

    def cos_sin(self, positions: torch.Tensor):
        """positions [T] -> cos, sin [T, dim/2] fp32."""
        ang = positions.double()[:, None] * self.inv_freq.double().to(positions.device)[None, :]
        return ang.cos().float(), ang.sin().float()

    def apply(self, x: torch.Tensor, positions: torch.Tensor, interleaved: bool) -> torch.Tensor:
        """x [T, ..., dim] rotated by the angles of positions [T]; same dtype back."""
        cos, sin = self.cos_sin(positions)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.dim // 2,)
        cos, sin = cos.reshape(shape), sin.reshape(shape)
        xf = x.float()
        if interleaved:
            x0, x1 = xf[..., 0::2], xf[..., 1::2]
            out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
        else:
            x0, x1 = xf[..., : self.dim // 2], xf[..., self.dim // 2:]
            out = torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
        return out.to(x.dtype)
