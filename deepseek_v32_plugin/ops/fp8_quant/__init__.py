"""FP8 e4m3 block quantization, as in the DeepSeek-V3.2 checkpoint and DeepGEMM.

Scales are fp32 holding powers of two (ue8m0: scale = 2^ceil(log2(amax / 448)), amax floored at 1e-4),
stored as the *dequantization* multiplier: x ~= x_fp8 * scale. Values saturate at +-448.

  activations  x [..., K] (K % 128 == 0)  ->  x_fp8 [..., K] e4m3, scale [..., K/128] fp32 (1x128 groups)
  weights      W [N, K]                   ->  W_fp8 [N, K] e4m3, scale_inv [ceil(N/128), ceil(K/128)] fp32
                                              (128x128 blocks; the checkpoint's `weight_scale_inv`)
Pseudo-code: W[n, k] = W_fp8[n, k] * scale_inv[n // 128, k // 128];  x[m, k] = x_fp8[m, k] * scale[m, k // 128]
fp8_gemm_nt(a, a_scale, b, b_scale) = dequant(a) @ dequant(b).T in fp32, returned as out_dtype.
"""
from __future__ import annotations

import torch

from .._dispatch import check_tensor, register_ops, resolve
from .naive import FP8_DTYPE, FP8_MAX, GROUP, fp8_saturate_cast, ue8m0_scale  # noqa: F401

register_ops("fp8_quant", ["fp8_quant_act", "fp8_gemm_nt"])
_FLOAT = (torch.float32, torch.bfloat16, torch.float16)


def fp8_quant_act(x: torch.Tensor, group: int = GROUP, ue8m0: bool = True, *, backend=None):
    """x [..., K] float (K % group == 0) -> (x_fp8 [..., K] e4m3, scale [..., K/group] fp32)."""
    check_tensor("x", x, dtype=_FLOAT)
    if x.shape[-1] % group:
        raise ValueError(f"x last dim {x.shape[-1]} must be a multiple of the quant group {group}")
    return resolve("fp8_quant_act", x.device, backend)(x, group, ue8m0)


def fp8_quant_weight(w: torch.Tensor, block: int = GROUP, ue8m0: bool = True):
    """W [N, K] float -> (W_fp8 [N, K] e4m3, scale_inv [ceil(N/128), ceil(K/128)] fp32). Load-time only."""
    check_tensor("w", w, dtype=_FLOAT, dims=2)
    from .naive import naive_fp8_quant_weight
    return naive_fp8_quant_weight(w, block, ue8m0)


def fp8_dequant_weight(w_fp8: torch.Tensor, scale_inv: torch.Tensor, out_dtype=torch.float32, name: str = "weight"):
    """(W_fp8 [N, K] e4m3, scale_inv [ceil(N/128), ceil(K/128)] fp32) -> W [N, K] out_dtype."""
    check_tensor(name, w_fp8, dtype=FP8_DTYPE, dims=2)
    n, k = w_fp8.shape
    check_tensor(f"{name}_scale_inv", scale_inv, dtype=torch.float32,
                 shape=(-(-n // GROUP), -(-k // GROUP)))
    from .naive import naive_fp8_dequant_weight
    return naive_fp8_dequant_weight(w_fp8, scale_inv, GROUP, out_dtype)


def fp8_dequant_act(x_fp8, scale, group: int = GROUP, out_dtype=torch.float32):
    from .naive import naive_fp8_dequant_act
    return naive_fp8_dequant_act(x_fp8, scale, group, out_dtype)


def fp8_gemm_nt(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                out_dtype: torch.dtype = torch.bfloat16, *, backend=None) -> torch.Tensor:
    """a [M, K] e4m3, a_scale [M, K/128] fp32, b [N, K] e4m3, b_scale [ceil(N/128), K/128] fp32 -> [M, N]."""
    check_tensor("a", a, dtype=FP8_DTYPE, dims=2)
    check_tensor("b", b, dtype=FP8_DTYPE, dims=2)
    m, k = a.shape
    n = b.shape[0]
    if b.shape[1] != k:
        raise ValueError(f"a is [M={m}, K={k}] but b is {list(b.shape)}: K must match")
    if k % GROUP:
        raise ValueError(f"K={k} must be a multiple of {GROUP}")
    check_tensor("a_scale", a_scale, dtype=torch.float32, shape=(m, k // GROUP))
    check_tensor("b_scale", b_scale, dtype=torch.float32, shape=(-(-n // GROUP), k // GROUP))
    return resolve("fp8_gemm_nt", a.device, backend)(a, a_scale, b, b_scale, out_dtype)
