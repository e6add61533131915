"""Plain-PyTorch references for FP8 e4m3 block quantization (they define the semantics)."""
from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_FLOOR = 1e-4
GROUP = 128


def ue8m0_scale(amax: torch.Tensor) -> torch.Tensor:
    """The smallest power of two s with amax <= 448 * s (= 2^ceil(log2(amax/448)) in exact arithmetic),
    amax floored at 1e-4, fp32. Computed from the exponent bits, not a float log2 (which is off by one
    for amax within an ulp above 448 * 2^k)."""
    amax = amax.float().clamp_min(AMAX_FLOOR)
    mant, exp = torch.frexp(amax / FP8_MAX)                 # amax/448 = mant * 2^exp, mant in [0.5, 1)
    s = torch.ldexp(torch.ones_like(amax), exp - (mant == 0.5).int())
    return torch.where(amax > FP8_MAX * s, s * 2, s)         # the division may have rounded down


def fp8_saturate_cast(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> e4m3 with round-to-nearest-even and saturation at +-448 (torch's cast alone gives NaN)."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def naive_fp8_quant_act(x: torch.Tensor, group: int = GROUP, ue8m0: bool = True):
    xf = x.float()
    k = xf.shape[-1]
    g = xf.reshape(*xf.shape[:-1], k // group, group)
    amax = g.abs().amax(dim=-1)
    scale = ue8m0_scale(amax) if ue8m0 else amax.clamp_min(AMAX_FLOOR) / FP8_MAX
    q = fp8_saturate_cast(g / scale.unsqueeze(-1)).reshape(xf.shape)
    return q, scale.float()


def naive_fp8_dequant_act(x_fp8: torch.Tensor, scale: torch.Tensor, group: int = GROUP,
                          out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    k = x_fp8.shape[-1]
    g = x_fp8.float().reshape(*x_fp8.shape[:-1], k // group, group) * scale.unsqueeze(-1)
    return g.reshape(x_fp8.shape).to(out_dtype)


def _pad_to_blocks(w: torch.Tensor, block: int) -> torch.Tensor:
    n, k = w.shape
    pn, pk = (-n) % block, (-k) % block
    return torch.nn.functional.pad(w, (0, pk, 0, pn)) if (pn or pk) else w


def naive_fp8_quant_weight(w: torch.Tensor, block: int = GROUP, ue8m0: bool = True):
    n, k = w.shape
    wp = _pad_to_blocks(w.float(), block)
    bn, bk = wp.shape[0] // block, wp.shape[1] // block
    tiles = wp.reshape(bn, block, bk, block)
    amax = tiles.abs().amax(dim=(1, 3))
    scale = ue8m0_scale(amax) if ue8m0 else amax.clamp_min(AMAX_FLOOR) / FP8_MAX
    q = fp8_saturate_cast(tiles / scale[:, None, :, None]).reshape(wp.shape)[:n, :k].contiguous()
    return q, scale.float()


def naive_fp8_dequant_weight(w_fp8: torch.Tensor, scale_inv: torch.Tensor, block: int = GROUP,
                             out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n, k = w_fp8.shape
    s = scale_inv.float().repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return (w_fp8.float() * s).to(out_dtype)


def naive_fp8_gemm_nt(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    a_f = naive_fp8_dequant_act(a, a_scale)
    b_f = naive_fp8_dequant_weight(b, b_scale)
    return (a_f @ b_f.t()).to(out_dtype)
