"""Plain-PyTorch references for the grouped FP8 expert GEMMs (they define the semantics)."""
from __future__ import annotations

import torch

from ..fp8_quant.naive import naive_fp8_dequant_act, naive_fp8_dequant_weight, naive_fp8_quant_act


def naive_fp8_grouped_gemm_nt_contiguous(a, a_scale, b, b_scale, m_indices, out_dtype=torch.bfloat16):
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    a_f = naive_fp8_dequant_act(a, a_scale)
    for g in range(b.shape[0]):
        rows = (m_indices == g).nonzero().squeeze(-1)
        if rows.numel():
            out[rows] = a_f[rows] @ naive_fp8_dequant_weight(b[g], b_scale[g]).t()
    return out.to(out_dtype)


def naive_fp8_grouped_gemm_nt_masked(a, a_scale, b, b_scale, masked_m, out_dtype=torch.bfloat16):
    g_, m, _ = a.shape
    out = torch.zeros(g_, m, b.shape[1], dtype=torch.float32, device=a.device)
    for g in range(g_):
        mm = int(masked_m[g])
        if mm:
            out[g, :mm] = naive_fp8_dequant_act(a[g, :mm], a_scale[g, :mm]) @ \
                naive_fp8_dequant_weight(b[g], b_scale[g]).t()
    return out.to(out_dtype)


def naive_silu_and_mul_fp8_quant(x, m_indices=None):
    """m_indices (the padded MoE layout's rows, -1 = padding): the kernels skip padding rows; the reference
    computes every row, so it is ignored here."""
    n = x.shape[-1] // 2
    xf = x.float()
    h = torch.nn.functional.silu(xf[..., :n]) * xf[..., n:]
    return naive_fp8_quant_act(h)


def naive_fp8_moe_experts(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids):
    """Independent per-expert formulation of ops.fp8_moe.fp8_moe_experts. Like the GPU kernels, the
    GEMM outputs (gate/up and down) are rounded to bf16 before the next step."""
    t, d = x.shape
    out = torch.zeros(t, d, dtype=torch.float32, device=x.device)
    x_fp8, x_scale = naive_fp8_quant_act(x)
    xq = naive_fp8_dequant_act(x_fp8, x_scale)
    for e in range(w13.shape[0]):
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = (xq[tok] @ naive_fp8_dequant_weight(w13[e], w13_scale[e]).t()).bfloat16()
        h_fp8, h_scale = naive_silu_and_mul_fp8_quant(h)
        y = (naive_fp8_dequant_act(h_fp8, h_scale) @ naive_fp8_dequant_weight(w2[e], w2_scale[e]).t()).bfloat16()
        out.index_add_(0, tok, y.float() * topk_weights[tok, slot, None].float())
    return out.to(x.dtype)
